"""The Markdown report of ``bnlab bench``: one table per section, units in every header."""
from __future__ import annotations

__all__ = ["format_report"]


def _x(v) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _ms(s: dict, unit: str = "ms") -> str:
    return f"{s[f'median_{unit}']:.3f} ({s[f'p25_{unit}']:.3f}–{s[f'p75_{unit}']:.3f})"


def _ratio(r: dict) -> str:
    return f"{r['median']:.2f}× ({r['p25']:.2f}–{r['p75']:.2f})"


def _rmin(r: dict) -> str:
    return f"{r['of_minima']:.2f}×"


def _layer_table(rows: list[dict], a: str, b: str, title: str) -> list[str]:
    lines = [f"### {title}", "",
             f"Median (25th–75th percentile) of interleaved rounds, ms; ratio = {b} / {a} per round "
             f"(> 1: {a} faster); min = ratio of the best rounds; eff. = bytes a pass must move / best time / "
             "best copy bandwidth of the same run; bound = the baseline's best time / the time its bytes take at "
             "that bandwidth (the most any kernel could gain).", "",
             f"| shape | MB | train {a} ms | train {b} ms | train ratio | min | eval {a} ms | eval {b} ms | eval ratio "
             f"| min | copy GB/s | {a} train eff. | {a} eval eff. | bound train / eval | faults/step {a} / {b} (train) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tr, ev = r["train"], r["eval"]
        lines.append(
            f"| {r['label']} | {r['bytes'] / 1e6:.1f} | {_ms(tr['peers'][a])} | {_ms(tr['peers'][b])} | "
            f"{_ratio(tr['speedup'])} | {_rmin(tr['speedup'])} | {_ms(ev['peers'][a])} | {_ms(ev['peers'][b])} | "
            f"{_ratio(ev['speedup'])} | {_rmin(ev['speedup'])} | {tr['best_copy_gbps']:.1f} | {tr['peers'][a]['efficiency']:.0%} | {ev['peers'][a]['efficiency']:.0%} | "
            f"{tr['bound_speedup']:.2f}× / {ev['bound_speedup']:.2f}× | {tr['peers'][a]['faults_per_step']} / {tr['peers'][b]['faults_per_step']} |")
    return lines + [""]


def _machine(m: dict, smoke: bool, preset: str) -> list[str]:
    lines = []
    if smoke:
        lines += [f"**SMOKE RUN (preset {preset}): small shapes and few rounds — checks that the tool works; "
                  "not numbers to cite.**", ""]
    lines += [f"Machine: {m['cpu_count']} CPUs, torch {m['torch']} on {m['threads']} threads, bnlab kernels: "
              f"{m['kernels']}. Load average (1 min): {m['load_before']:.2f} before, {m['load_after']:.2f} after.", ""]
    if m["busy"]:
        lines += ["**The machine was too busy to trust these numbers:** " + "; ".join(m["busy_reasons"]) + ".", ""]
    return lines


def _targets(targets: list[dict]) -> list[str]:
    lines = ["### Targets", "", "| target | goal | measured | met | note |", "|---|---|---|---|---|"]
    for t in targets:
        v = t["measured"]
        shown = "—" if v is None else (f"{v:.0%}" if "bandwidth" in t["goal"] else f"{v:.3g}")
        met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
        lines.append(f"| {t['target']} | {t['goal']} | {shown} | {met} | {t['detail']} |")
    return lines + [""]


def format_report(res: dict) -> str:
    """The whole report as Markdown."""
    s = res["sections"]
    lines = ["## bnlab bench", ""] + _machine(res["machine"], res["smoke"], res["preset"])
    lines += ["Units: times in ms (per-call in µs), bandwidth in GB/s (10⁹ bytes/s), memory in MB (10⁶ bytes).", ""]
    if "layers" in s:
        lines += _layer_table(s["layers"]["rows"], "bnlab", "torch",
                              "BatchNorm layers, default allocator: bnlab.BatchNorm*d vs torch.nn.BatchNorm*d")
        fc = s["layers"].get("fault_cost")
        if fc and fc.get("us_per_fault"):
            lines += [f"One minor page fault costs {fc['us_per_fault']:.2f} µs here (fresh 64 MiB fill "
                      f"{fc['fresh_ms']:.1f} ms vs refill {fc['refill_ms']:.1f} ms).", ""]
    fm = s.get("fixed_malloc")
    if fm and "rows" in fm:
        lines += _layer_table(fm["rows"], "bnlab", "torch",
                              f"Same, child process with MALLOC_MMAP_THRESHOLD_={fm['env']['MALLOC_MMAP_THRESHOLD_']} "
                              f"(glibc's cap) and MALLOC_TRIM_THRESHOLD_={fm['env']['MALLOC_TRIM_THRESHOLD_']}")
        if fm.get("kernels") != res["machine"]["kernels"]:
            lines += [f"**The child process ran other kernels ({fm.get('kernels')}) than the parent: "
                      "the two tables are not comparable.**", ""]
    elif fm:
        lines += [f"Fixed-allocator run: not available ({fm.get('skipped')}).", ""]
    th = s.get("thp_alloc")
    if th and "rows" in th:
        lines += _layer_table(th["rows"], "bnlab", "torch",
                              "Same, child process with THP_MEM_ALLOC_ENABLE=1 (torch's CPU allocator on "
                              f"transparent huge pages, kernel mode '{th['env']['thp_mode']}'; bnlab's own outputs "
                              ">= 24 MiB are there in every run)")
        if th.get("kernels") != res["machine"]["kernels"]:
            lines += [f"**The child process ran other kernels ({th.get('kernels')}) than the parent: "
                      "the two tables are not comparable.**", ""]
    elif th:
        lines += [f"Huge-page allocator run: not available ({th.get('skipped')}).", ""]
    pc = s.get("per_call")
    if pc:
        lines += ["### Per call on a tiny (4,16,4,4) input", "", "| mode | bnlab µs | torch µs | ratio torch/bnlab |",
                  "|---|---|---|---|"]
        for mode in ("train", "eval"):
            lines.append(f"| {mode} | {_ms(pc[mode]['peers']['bnlab'], 'us')} | {_ms(pc[mode]['peers']['torch'], 'us')} "
                         f"| {_ratio(pc[mode]['speedup'])} |")
        lines.append("")
    fu = s.get("fused")
    if fu:
        lines += _layer_table(fu["rows"], "bnlab_act", "torch_bn_relu",
                              "Fused BN+ReLU: BatchNormAct(act='relu') vs torch BN → ReLU(inplace=True)")
        lines += _layer_table([dict(r["inplace"], label=r["label"]) for r in fu["rows"]], "bnlab_inplace",
                              "torch_bn_leaky",
                              "In-Place ABN: BatchNormAct(act='leaky_relu', inplace=True) vs torch BN → LeakyReLU(inplace=True)")
    mem = s.get("memory")
    if mem:
        lines += [f"### Activation memory saved for backward, shape {tuple(mem['shape'])} "
                  f"(one activation = {mem['activation_bytes'] / 1e6:.2f} MB)", "",
                  "| variant | layer alone MB | conv → layer → conv MB |", "|---|---|---|"]
        for n in mem["alone"]:
            lines.append(f"| {n} | {mem['alone'][n] / 1e6:.2f} | {mem['chain'][n] / 1e6:.2f} |")
        lines += ["", f"In-place / torch BN→LeakyReLU: {mem['inplace_vs_torch_chain']:.2f}× in the chain, "
                  f"{mem['inplace_vs_torch_alone']:.2f}× alone; fused (not in-place) / torch BN→ReLU alone: "
                  f"{mem['fused_vs_torch_alone']:.2f}×.", ""]
    for key, title in (("batch1", "Batch-1 inference latency"), ("end_to_end", "ResNet-18-style SGD step")):
        e = s.get(key)
        if not e:
            continue
        lines += [f"### {title}: input {tuple(e['input'])}, {e['batchnorm_layers']} BN layers", "",
                  "| variant | ms | ratio torch/variant |", "|---|---|---|"]
        for n, p in e["peers"].items():
            ratio = e["speedup"].get(n)
            if n == "no_bn":
                ratio = e["ceiling"]
            lines.append(f"| {n} | {_ms(p)} | {'1 (baseline)' if n == 'torch' else _ratio(ratio)} |")
        if "ceiling" in e:
            what = "call" if key == "batch1" else "step"
            lines += ["", f"BN's share of torch's {what}: {e['bn_share_of_torch_step']:.1%}; the `no_bn` ratio is the "
                      "ceiling on what any BN kernel can gain end to end (BN at zero cost)."]
        lines.append("")
    lines += _targets(res["targets"])
    lines.append(f"Total time {res['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"
