"""A progress bar with ETA on a terminal; silence in CI and in logs.

The bar (tqdm, on stderr) is shown only when standard output is a terminal and the
environment variable ``CI`` is unset; ``BNLAB_PROGRESS=1`` / ``0`` forces it on / off.
"""
from __future__ import annotations

import os
import sys

__all__ = ["progress_enabled", "progress_bar"]


def progress_enabled() -> bool:
    forced = os.environ.get("BNLAB_PROGRESS")
    if forced is not None:
        return forced not in ("", "0", "false", "no")
    if os.environ.get("CI"):
        return False
    return sys.stdout.isatty()


class _Silent:
    """Stand-in with tqdm's methods the trainer uses."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int = 0, desc: str = "", enabled: bool | None = None):
    if enabled is None:
        enabled = progress_enabled()
    if not enabled:
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                file=sys.stderr, leave=False)
