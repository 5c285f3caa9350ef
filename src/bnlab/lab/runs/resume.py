"""Which experiments of ``bnlab reproduce`` are already done, and which can resume.

A run folder holds ``config.json`` (written first) and ``results.json`` (written last,
atomically). An experiment is *finished* when ``results.json`` exists and the folder's
``config.json`` records the same experiment, preset and resolved config as the one about
to run; ``reproduce`` then reuses its results instead of training again (``--force``
reruns). An unfinished folder with the same config *resumes*: every network continues
from its last checkpoint (``fit(..., resume=True)``), so an interrupted ``reproduce``
repeats at most ``ckpt_every`` steps of one network.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import config_to_dict
from .runfiles import jsonable

__all__ = ["finished_results", "same_config"]


def same_config(run_dir: str | Path, exp_name: str, config: Any, preset: str | None) -> bool:
    """Does ``run_dir/config.json`` describe this experiment, preset and config?"""
    try:
        saved = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (saved.get("experiment") == exp_name and saved.get("preset") == preset
            and saved.get("config") == jsonable(config_to_dict(config)))


def finished_results(run_dir: str | Path, exp_name: str, config: Any, preset: str | None) -> dict | None:
    """The saved results of a finished run with this config, else ``None``."""
    path = Path(run_dir) / "results.json"
    if not path.exists() or not same_config(run_dir, exp_name, config, preset):
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:  # a torn file cannot happen with atomic writes, but be safe
        return None
