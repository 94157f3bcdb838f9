// CPU emulation of the CUDA execution model for csrc/cuda/sadffm_{gated,dffm}_kernels.cu (3-D grids and blocks, __shfl_down_sync,
// static __shared__ arrays, cudaMemsetAsync). Built on cuda_emu.h: each block runs as blockDim.x*y*z real threads
// sharing one poisoned (0xff bytes: NaN) shared-memory buffer; __syncthreads is a block barrier. The test
// (tests/test_cuda_sadffm_emu.py) rewrites `k<<<g, b, s, st>>>(` into `emu::launch3(k, g, b, s)(` and the extern /
// static __shared__ declarations into per-block buffers before compiling.
#pragma once
#include "cuda_emu.h"

#include <cstring>

struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { std::memset(p, v, n); return cudaSuccess; }

namespace emu {
inline thread_local unsigned int flat_tid = 0;
inline thread_local unsigned char* cur_static = nullptr;
inline unsigned char* block_static_smem() { return cur_static; }
}  // namespace emu

template <typename T> inline T __shfl_down_sync(unsigned int, T v, int o) {
  emu::Warp& w = emu::cur_block->warps[emu::flat_tid / 32];
  const int lane = static_cast<int>(emu::flat_tid % 32);
  w.slot[lane] = static_cast<double>(v);
  w.bar.wait();
  const T r = lane + o < 32 ? static_cast<T>(w.slot[lane + o]) : v;
  w.bar.wait();
  return r;
}

namespace emu {
template <typename K> struct Launcher3 {
  K kernel;
  dim3 grid, block;
  size_t smem;
  template <typename... Args> void operator()(Args... args) const {
    if (smem > static_cast<size_t>(smem_limit)) throw "emu: dynamic shared memory above the limit";
    if (smem > max_smem_used) max_smem_used = smem;
    const unsigned int nt = block.x * block.y * block.z;
    if (nt % 32 != 0 || nt > 1024) throw "emu: block size must be a multiple of 32 and <= 1024";
    if (grid.y > 65535 || grid.z > 65535) throw "emu: grid.y / grid.z above 65535";
    for (unsigned int bz = 0; bz < grid.z; ++bz)
      for (unsigned int by = 0; by < grid.y; ++by)
        for (unsigned int bx = 0; bx < grid.x; ++bx) {
          Block blk(static_cast<int>(nt));
          blk.smem.assign(smem, 0xff);
          std::vector<unsigned char> stat(64 * 1024, 0xff);
          std::vector<std::thread> ts;
          ts.reserve(nt);
          for (unsigned int t = 0; t < nt; ++t) {
            ts.emplace_back([&, t] {
              threadIdx.x = t % block.x; threadIdx.y = (t / block.x) % block.y; threadIdx.z = t / (block.x * block.y);
              blockIdx.x = bx; blockIdx.y = by; blockIdx.z = bz;
              blockDim.x = block.x; blockDim.y = block.y; blockDim.z = block.z;
              gridDim.x = grid.x; gridDim.y = grid.y; gridDim.z = grid.z;
              flat_tid = t;
              cur_block = &blk;
              cur_smem = blk.smem.data();
              cur_static = stat.data();
              kernel(args...);
            });
          }
          for (auto& th : ts) th.join();
        }
  }
};
template <typename K> Launcher3<K> launch3(K k, dim3 grid, dim3 block, size_t smem, cudaStream_t = nullptr) {
  return Launcher3<K>{k, grid, block, smem};
}
}  // namespace emu
