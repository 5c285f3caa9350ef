"""``bnlab bench``: the tiny preset runs every section and writes a consistent report.

No test here asserts a speed: timings on a shared machine are not facts a test can
check. What must hold: every section ran and is in results.json, table.md and the
figure; summaries are ordered (p25 <= median <= p75); byte counts and saved-memory
counts equal what the shapes imply; bad arguments are refused with one line.
"""
from __future__ import annotations

import json

import pytest
import torch

from bnlab.lab import bench
from bnlab.lab.bench import alloc, cli
from bnlab.lab.bench.config import SECTIONS, shape_label

TINY = ["--preset", "tiny", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        rc = bench.main(TINY + ["--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return out, json.loads((out / "results.json").read_text())


def _check_summary(s, unit="ms"):
    assert s["n"] >= 2
    assert 0 < s[f"p25_{unit}"] <= s[f"median_{unit}"] <= s[f"p75_{unit}"]


def test_writes_every_file_and_section(tiny_run):
    out, res = tiny_run
    assert res["schema"] == "bnlab-bench/1" and res["preset"] == "tiny" and res["smoke"] is True
    assert set(res["sections"]) == set(SECTIONS)
    assert json.loads((out / "config.json").read_text())["shapes"] == bench.PRESETS["tiny"].shapes
    assert (out / "speedup.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    assert "SMOKE RUN" in table
    for heading in ("default allocator", "MALLOC_MMAP_THRESHOLD_", "Per call", "Fused BN+ReLU", "In-Place ABN",
                    "Activation memory", "Batch-1 inference", "ResNet-18-style SGD step", "Targets", "Load average"):
        assert heading in table, heading
    for unit in ("ms", "µs", "GB/s"):
        assert unit in table


def test_layer_rows_are_consistent(tiny_run):
    _, res = tiny_run
    shapes = bench.parse_shapes(bench.PRESETS["tiny"].shapes)
    for key in ("layers", "fixed_malloc", "thp_alloc"):
        rows = res["sections"][key]["rows"]
        assert [r["label"] for r in rows] == [shape_label(s, cl) for s, cl in shapes]
        for r, (shape, _) in zip(rows, shapes):
            assert r["bytes"] == torch.Size(shape).numel() * 4      # float32 input
            for mode in ("train", "eval"):
                assert set(r[mode]["peers"]) == {"bnlab", "torch"}
                for p in r[mode]["peers"].values():
                    _check_summary(p)
                    assert p["faults_per_step"] >= 0 and p["efficiency"] > 0
                sp = r[mode]["speedup"]
                assert sp["p25"] <= sp["median"] <= sp["p75"]
                assert r[mode]["copy_gbps"] > 0
    assert res["sections"]["fixed_malloc"]["env"]["MALLOC_MMAP_THRESHOLD_"] == bench.PRESETS["tiny"].mmap_threshold
    assert res["sections"]["thp_alloc"]["env"]["THP_MEM_ALLOC_ENABLE"] == 1


def test_other_sections(tiny_run):
    _, res = tiny_run
    s = res["sections"]
    for mode in ("train", "eval"):
        for p in s["per_call"][mode]["peers"].values():
            _check_summary(p, "us")
    for r in s["fused"]["rows"]:
        assert set(r["train"]["peers"]) == {"bnlab_act", "torch_bn_relu"}
        assert set(r["inplace"]["train"]["peers"]) == {"bnlab_inplace", "torch_bn_leaky"}
    # memory oracle: torch's BN → act keeps two activations, In-Place ABN one, in the conv chain
    mem = s["memory"]
    act = mem["activation_bytes"]
    assert mem["chain"]["torch_bn_relu"] == 2 * act and mem["chain"]["bnlab_inplace"] == act
    assert mem["alone"]["bnlab_act"] == act and mem["inplace_vs_torch_chain"] == 0.5
    for key in ("batch1", "end_to_end"):
        assert s[key]["batchnorm_layers"] == 20
        for p in s[key]["peers"].values():
            _check_summary(p)
    for key in ("batch1", "end_to_end"):
        e = s[key]
        assert set(e["peers"]) == {"torch", "bnlab", "bnlab_act", "no_bn"}
        assert set(e["speedup"]) == {"bnlab", "bnlab_act"}             # the ceiling is not a peer's speedup
        assert e["bn_share_of_torch_step"] == pytest.approx(1 - 1 / e["ceiling"]["median"])


def test_targets_and_machine(tiny_run):
    _, res = tiny_run
    names = [t["target"] for t in res["targets"]]
    assert len(names) == len(set(names)) >= 12
    for t in res["targets"]:
        assert set(t) == {"target", "goal", "measured", "met", "detail"}
        assert t["met"] in (True, False, None)
    m = res["machine"]
    assert m["threads"] == 1 and isinstance(m["busy"], bool) and m["busy"] == bool(m["busy_reasons"])


def test_busy_verdict_names_its_reason():
    calm = cli.machine_state(0.0, 1.0, 1, {})
    assert calm["busy"] is False and calm["busy_reasons"] == []
    busy = cli.machine_state(50.0, 1.0, 1, {})
    assert busy["busy"] is True and "before the run" in busy["busy_reasons"][0]


def test_child_env_fixes_the_allocator():
    env = alloc.child_env(1 << 20)
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(1 << 20) and int(env["MALLOC_TRIM_THRESHOLD_"]) > 1 << 30
    assert alloc.thp_env()["THP_MEM_ALLOC_ENABLE"] == "1"
    assert alloc.thp_mode() in ("always", "madvise", "never", "unknown")


@pytest.mark.parametrize("argv,message", [
    (["--reps", "1"], "reps and e2e_reps must be >= 2"),
    (["--shapes", "7x8cl"], "channels_last"),
    (["--shapes", "axb"], "bad shape"),
    (["--sections", "layers,gpu"], "unknown section"),
    (["--preset", "huge"], "invalid choice"),
    (["--threads", "two"], "invalid int value"),
])
def test_bad_arguments_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--preset" in out and "smoke" in out and "against PyTorch" in out


def test_shapes_parse():
    assert bench.parse_shapes("2x3x4x5cl, 7x8") == [((2, 3, 4, 5), True), ((7, 8), False)]


@pytest.mark.parametrize("peers", [2, 3])
def test_interleaving_gives_each_peer_every_predecessor_equally_often(peers):
    """With a lead step (the copy probe) opening each round, over whole cycles of orders each peer
    follows the lead and each other peer equally often (the step before leaves the caches and the
    heap to the next); every step is timed once per timed round."""
    from collections import Counter

    from bnlab.lab.bench.timing import interleaved

    log = []

    def step(name):
        def run():
            log.append(name)
            return 0.001, 0
        return run

    names = [f"p{i}" for i in range(peers)] + ["copy"]
    reps = 2 * (2 if peers == 2 else 6)                              # whole cycles of peers! orders
    secs, faults = interleaved({n: step(n) for n in names}, reps, warmup=0, lead="copy")
    assert all(len(secs[n]) == reps and len(faults[n]) == reps for n in names)
    before = Counter(zip(log, log[1:]))                               # (predecessor, step) pairs
    for p in names[:-1]:
        counts = {q: before[(q, p)] for q in names if q != p}
        assert len(set(counts.values())) == 1, counts
