# Quick CPU timing of the MOLRCM ops: eager eimn.model.MOLRCM (and per-op eager compositions) vs the
# fused cpu backend, 2 threads, interleaved rounds (robust on a shared machine): min and median.
# Usage: python benchmarks/quick_molrcm_cpu.py [rounds] [comma-separated subset of mol,mol_bw,pqv,...]
import sys, time, statistics, torch
import torch.nn.functional as F
import eimn_kernels as ek
from eimn.model import MOLRCM
torch.set_num_threads(2)
torch.manual_seed(0)
R = int(sys.argv[1]) if len(sys.argv) > 1 else 5
def run(fns):
    ts = {k: [] for k in fns}
    for k, f in fns.items(): f()  # warm-up
    for _ in range(R):
        for k, f in fns.items():
            t = time.perf_counter(); f(); ts[k].append(time.perf_counter() - t)
    return {k: (min(v), statistics.median(v)) for k, v in ts.items()}
def show(title, ts, a, b):
    (ma, da), (mb, db) = ts[a], ts[b]
    print(f"{title:22s} eager min {ma*1e3:7.1f} med {da*1e3:7.1f} | fused min {mb*1e3:6.1f} med {db*1e3:6.1f} | ratio min {ma/mb:5.2f} med {da/db:5.2f}", flush=True)
for shape in [(1,64,180,320),(4,64,64,64)]:
    m = MOLRCM(64); f = ek.MOLRCM.from_module(m, backend='cpu')
    x = torch.randn(shape); g = torch.randn(shape); xg = x.clone().requires_grad_()
    c1, c2, _ = m.split
    pq, pv = m.proj_query[0], m.proj_value[0]
    with torch.no_grad():
        q = F.gelu(pq(x)); v = pv(x); r = m.region(q)
        y = torch.cat([m.spatial_1(r[:, :c1]), r[:, c1:c1+c2], m.spatial_2(r[:, c1+c2:])], 1)
    qg, yg, vg = q.clone().requires_grad_(), y.clone().requires_grad_(), v.clone().requires_grad_()
    def ng(fn):
        def w():
            with torch.no_grad(): fn()
        return w
    E = {
      'mol': lambda: m(x), 'mol_bw': lambda: m(xg).backward(g),
      'pqv': lambda: (F.gelu(pq(x)), pv(x)),
      'pqv_bw': lambda: ((F.gelu(pq(xg)) * g).sum() + (pv(xg) * g).sum()).backward(),
      'dw': lambda: (lambda r: torch.cat([m.spatial_1(r[:, :c1]), r[:, c1:c1+c2], m.spatial_2(r[:, c1+c2:])], 1))(m.region(q)),
      'dw_bw': lambda: ((lambda r: torch.cat([m.spatial_1(r[:, :c1]), r[:, c1:c1+c2], m.spatial_2(r[:, c1+c2:])], 1))(m.region(qg)) * g).sum().backward(),
      'go': lambda: m.out(F.silu(m.fusion(y)) * v),
      'go_bw': lambda: (m.out(F.silu(m.fusion(yg)) * vg) * g).sum().backward(),
    }
    K = {
      'mol': lambda: f(x), 'mol_bw': lambda: f(xg).backward(g),
      'pqv': lambda: ek.proj_qv(x, pq.weight, pq.bias, pv.weight, pv.bias, backend='cpu'),
      'pqv_bw': lambda: (lambda o: ((o[0] * g).sum() + (o[1] * g).sum()).backward())(ek.proj_qv(xg, pq.weight, pq.bias, pv.weight, pv.bias, backend='cpu')),
      'dw': lambda: ek.dw_mix(q, m.region.weight, m.region.bias, m.spatial_1.weight, m.spatial_1.bias, m.spatial_2.weight, m.spatial_2.bias, c1, c2, 1, 2, 3, backend='cpu'),
      'dw_bw': lambda: (ek.dw_mix(qg, m.region.weight, m.region.bias, m.spatial_1.weight, m.spatial_1.bias, m.spatial_2.weight, m.spatial_2.bias, c1, c2, 1, 2, 3, backend='cpu') * g).sum().backward(),
      'go': lambda: ek.gate_out(y, v, m.fusion.weight, m.fusion.bias, m.out.weight, m.out.bias, backend='cpu'),
      'go_bw': lambda: (ek.gate_out(yg, vg, m.fusion.weight, m.fusion.bias, m.out.weight, m.out.bias, backend='cpu') * g).sum().backward(),
    }
    sel = sys.argv[2].split(',') if len(sys.argv) > 2 else list(E)
    print(shape)
    for k in sel:
        fw = not k.endswith('_bw')
        ts = run({'e': ng(E[k]) if fw else E[k], 'k': ng(K[k]) if fw else K[k]})
        show(k, ts, 'e', 'k')
