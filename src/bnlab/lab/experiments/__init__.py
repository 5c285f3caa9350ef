"""The registry of the lab's experiments: an explicit table, in the order ``reproduce`` runs them.

Each entry maps an experiment's name to the module (in this package) that defines
``EXPERIMENT``, an instance of a :class:`~.framework.Experiment` subclass. Modules are
imported when asked for, so one experiment that fails to import does not take the others down.
To add an experiment: write its module, add one line to :data:`REGISTRY`.

:func:`run_experiment` is the one way to run one (it writes every output; see
:mod:`.framework.run`).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .framework import Experiment, run, run_with_control

__all__ = ["REGISTRY", "Experiment", "experiments", "get_experiment", "run_experiment"]

#: experiment name -> module in this package, in ``reproduce`` order
REGISTRY: dict[str, str] = {
    "fig1": "fig1",
    "lr": "lr",
    "landscape": "landscape",
    "ics": "ics",
    "batch-size": "batch_size",
    "inference": "inference",
    "d2l-lenet": "d2l_lenet",
    "scale-shift": "scale_shift",
    "wall-clock": "wall_clock",
    "lr-sweep": "lr_sweep",
}


def get_experiment(name: str) -> Experiment:
    """The registered experiment ``name`` (a one-line error listing the names otherwise)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown experiment {name!r}; choose from {', '.join(REGISTRY)}")
    module = importlib.import_module(f"{__name__}.{REGISTRY[name]}")
    exp = module.EXPERIMENT
    if not isinstance(exp, Experiment) or exp.name != name:
        raise TypeError(f"{module.__name__}.EXPERIMENT is not the Experiment {name!r}")
    return exp


def experiments(skip_missing: bool = True) -> dict[str, Experiment]:
    """Every registered experiment whose module exists, in ``reproduce`` order."""
    out = {}
    for name, module in REGISTRY.items():
        try:
            out[name] = get_experiment(name)
        except ModuleNotFoundError as exc:
            if not skip_missing or exc.name != f"{__name__}.{module}":
                raise
    return out


def run_experiment(exp: Experiment, config: Any, out_dir: str | Path, preset: str | None = None,
                   resume: bool = False, control: bool = False, with_control: bool = True) -> dict[str, Any]:
    """Run ``exp`` into ``out_dir`` and return its ``results.json`` content.

    ``control=True`` runs only the negative control (treatments replaced by the baseline arm);
    otherwise ``with_control`` adds the control in ``out_dir/control`` and links it.
    """
    if control:
        return run(exp, config, out_dir, preset=preset, control=True, resume=resume)[0]
    if with_control:
        return run_with_control(exp, config, out_dir, preset=preset, resume=resume)
    return run(exp, config, out_dir, preset=preset, resume=resume)[0]
