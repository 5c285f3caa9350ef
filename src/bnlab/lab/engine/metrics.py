"""Metrics log: one JSON object per line in ``metrics.jsonl`` (+ TensorBoard if installed).

Each record has ``step`` and, when several networks share a run folder, ``run`` (e.g.
``"bn"`` / ``"plain"`` in fig1). Lines are flushed as written, so a killed run keeps
everything up to its last record; on ``--resume`` the records past the checkpoint's
step are dropped first (:func:`truncate_after`) so the log equals an uninterrupted one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..runs.runfiles import atomic_write, jsonable, read_jsonl

__all__ = ["MetricsLog", "read_metrics", "truncate_after"]


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All object records of a ``metrics.jsonl`` (torn, ``null``, non-object lines skipped)."""
    return read_jsonl(path)


def truncate_after(path: str | os.PathLike, step: int, run: str | None = None) -> None:
    """Drop the records of ``run`` with ``step > step`` (atomically)."""
    p = Path(path)
    if not p.exists():
        return
    keep = [r for r in read_metrics(p) if r.get("run") != run or r.get("step", 0) <= step]
    text = "".join(json.dumps(r) + "\n" for r in keep)
    atomic_write(p, lambda f: f.write(text))


class MetricsLog:
    """Append-only JSONL writer; ``enabled=False`` (non-zero DDP ranks) writes nothing."""

    def __init__(self, path: str | os.PathLike, run: str | None = None, enabled: bool = True,
                 tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.run = run
        self.enabled = enabled
        self._file = None
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")
            if tensorboard:
                self._tb = _tensorboard_writer(self.path.parent / "tb" / (run or "run"))

    def log(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        if self.run is not None:
            record["run"] = self.run
        record.update(jsonable(values))
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tensorboard_writer(logdir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: JSONL only
        return None
    return SummaryWriter(log_dir=str(logdir))


def iter_run(records: list[dict[str, Any]], run: str | None) -> Iterator[dict[str, Any]]:
    return (r for r in records if r.get("run") == run)
