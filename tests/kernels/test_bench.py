"""``bnlab bench``: the quick preset runs end to end and writes a consistent report."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bnlab.lab import bench


def test_quick_bench_writes_results(tmp_path):
    cfg = dataclasses.replace(bench.PRESETS["quick"], shapes="4x3x5x5,4x3x5x5cl,16x6",
                              reps=2, warmup=1, e2e_batch=2, e2e_size=4)
    rc = bench.main(["--preset", "quick", "--out", str(tmp_path), "--shapes", cfg.shapes, "--reps", "2",
                     "--warmup", "1", "--e2e-batch", "2", "--e2e-size", "4"])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert json.loads((tmp_path / "config.json").read_text())["shapes"] == cfg.shapes
    assert (tmp_path / "speedup.png").stat().st_size > 1000
    assert "| shape | mode |" in (tmp_path / "table.md").read_text()
    assert [s["shape"] for s in res["shapes"]] == [[4, 3, 5, 5], [4, 3, 5, 5], [16, 6]]
    for s in res["shapes"]:
        assert set(s["modes"]) == set(bench.MODES)
        for mode, peers in s["modes"].items():
            assert set(peers) == set(cfg.peers)
            assert peers["aten"]["speedup_vs_aten"] == pytest.approx(1.0)
            for r in peers.values():
                assert r["n"] == 2 and 0 < r["p25_ms"] <= r["median_ms"] <= r["p75_ms"]
        # identity: bnlab keeps the input + O(C) vectors; the naive module keeps more
        nbytes = s["bytes"]
        assert nbytes == torch.Size(s["shape"]).numel() * 4
        assert nbytes <= s["saved_bytes"]["bnlab"] <= nbytes + 64 * s["shape"][1]
        assert s["saved_bytes"]["naive"] > nbytes
    assert set(res["end_to_end"]) == {"Net", "ResNet"}
    assert res["targets"]["saved_bytes_within_input_plus_O(C)"] is True
    assert "fwdbwd_geomean_speedup" in res["targets"]


def test_naive_module_is_batch_norm():
    """Oracle: the naive baseline computes the same function as torch's layer."""
    x = torch.randn(6, 4, 3, 5, dtype=torch.float64)
    naive = bench.NaiveBatchNorm(4).double()
    torch.testing.assert_close(naive(x), torch.nn.functional.batch_norm(x, None, None, training=True))
    torch.testing.assert_close(naive.moving_mean, 0.1 * x.mean(dim=(0, 2, 3)))


def test_shapes_parse_and_validate():
    assert bench.parse_shapes("2x3x4x5cl, 7x8") == [((2, 3, 4, 5), True), ((7, 8), False)]
    with pytest.raises(ValueError):
        bench.parse_shapes("7x8cl")
    with pytest.raises(ValueError):
        bench.BenchConfig(peers=("bnlab", "tensorflow"))


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    assert "--preset" in capsys.readouterr().out
