"""Params and Multi-Adds counted from the model equal the paper's (SPEC.md "Complexity")."""
import json

import pytest
import torch.nn as nn

from benchmarks.complexity import complexity_table, count_complexity, main

# SPEC.md: conv MACs + 2 per BatchNorm element, 1280x720 HR output.
EXPECTED = {
    ("EIMN_L", 2): (981_724, 212.72), ("EIMN_L", 3): (990_379, 95.28), ("EIMN_L", 4): (1_002_496, 54.37),
    ("EIMN_A", 2): (860_098, 186.38), ("EIMN_A", 3): (868_753, 83.59), ("EIMN_A", 4): (880_870, 47.79),
}


@pytest.fixture(scope="module")
def rows():
    return complexity_table()


def test_params_and_multi_adds_match_spec(rows):
    got = {(r["model"], r["scale"]): (r["params"], r["multi_adds_G"]) for r in rows}
    assert got == EXPECTED


def test_conv_only_column(rows):
    r = next(r for r in rows if (r["model"], r["scale"]) == ("EIMN_L", 2))
    assert r["conv_macs_G"] == 211.78  # SPEC: 211.78 G of conv MACs + 0.94 G of BatchNorm
    assert r["bn_ops"] == 32 * 64 * 360 * 640 * 2
    assert r["multi_adds"] == r["conv_macs"] + r["bn_ops"]


def test_counter_on_a_known_net():
    """Hand count: 3x3 conv 3->8 (8*3*9 MACs/px), depthwise 5x5 on 8 (8*25), BN on 8 ch (2/elem)."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 5, padding=2, groups=8),
                        nn.Conv2d(8, 4, 1, stride=2))
    c = count_complexity(net, (2, 3, 10, 12))
    px = 2 * 10 * 12
    assert c["conv_macs"] == px * 8 * 3 * 9 + px * 8 * 25 + (2 * 5 * 6) * 4 * 8
    assert c["bn_ops"] == 2 * px * 8
    assert c["params"] == (8 * 27 + 8) + 16 + (8 * 25 + 8) + (4 * 8 + 4)


def test_cli_writes_json(tmp_path, capsys, monkeypatch, rows):
    import benchmarks.complexity as bc
    monkeypatch.setattr(bc, "complexity_table", lambda: rows)  # counted once, in the fixture
    out = tmp_path / "c.json"
    main(["--json", str(out)])
    text = capsys.readouterr().out
    for v in ("212.72", "95.28", "54.37", "186.38", "83.59", "47.79", "981,724", "880,870"):
        assert v in text
    assert len(json.loads(out.read_text())) == 6
