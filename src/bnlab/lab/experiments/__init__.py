"""Registry of the lab's experiments: one module per experiment in this package.

An experiment module defines ``EXPERIMENT = Experiment(...)``: its name, the claim it
tests, a frozen config dataclass, named presets (at least ``"quick"`` and ``"paper"``),
``run(config, out_dir, resume=False) -> results`` and ``summarize(results, run_dir) -> str``
(a Markdown section for ``results.md``). Adding an experiment = adding a module here;
:func:`experiments` discovers them and orders them by ``order`` then name.

:func:`run_experiment` is the one way to run one: it writes ``config.json`` (resolved
config + preset + versions), calls ``run`` and writes ``results.json``.
"""
from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..config import config_to_dict
from ..runs.runfiles import run_metadata, write_json

__all__ = ["Experiment", "experiments", "get_experiment", "run_experiment"]


@dataclass(frozen=True)
class Experiment:
    name: str
    claim: str                                   # the paper's claim, one sentence
    config_cls: type
    presets: Mapping[str, Any]                   # preset name -> config instance
    run: Callable[..., dict[str, Any]]           # run(config, out_dir, resume=False)
    summarize: Callable[[dict[str, Any], Path], str]
    order: int = 100                             # position in `bnlab list` / `reproduce`
    figures: tuple[str, ...] = field(default=())  # PNG file names it writes


def experiments() -> dict[str, Experiment]:
    """All experiments in this package, in ``order``."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        exp = getattr(module, "EXPERIMENT", None)
        if isinstance(exp, Experiment):
            found.append(exp)
    found.sort(key=lambda e: (e.order, e.name))
    return {e.name: e for e in found}


def get_experiment(name: str) -> Experiment:
    registry = experiments()
    if name not in registry:
        raise KeyError(f"unknown experiment {name!r}; choose from {sorted(registry)}")
    return registry[name]


def run_experiment(exp: Experiment, config: Any, out_dir: str | Path, preset: str | None = None,
                   resume: bool = False) -> dict[str, Any]:
    """Write ``config.json``, run ``exp``, write ``results.json``; return the results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", {
        "experiment": exp.name, "claim": exp.claim, "preset": preset,
        "config": config_to_dict(config), "meta": run_metadata(),
    })
    t0 = time.perf_counter()
    results = exp.run(config, out_dir, resume=resume)
    results = {"experiment": exp.name, "claim": exp.claim, "preset": preset,
               "seconds": time.perf_counter() - t0, **results}
    write_json(out_dir / "results.json", results)
    return results
