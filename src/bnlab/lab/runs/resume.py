"""May a run folder's files stand for this run, or be continued by it?

A run folder holds ``config.json`` (written first) and ``results.json`` (written last,
atomically), each stamped with the run's identity (:func:`~bnlab.lab.runs.identity.run_identity`:
experiment, preset, whole resolved config, code version).

- **Reuse** (:func:`finished_results`): ``results.json`` counts as this run's result
  only when *its own* identity matches; a results file from another preset, another
  config, other code, a run killed before it finished, or a malformed file is never
  reported (the run is redone).
- **Resume** (:func:`check_config_change`): ``--resume`` continues the run recorded in
  ``config.json`` only with the same config; the one change allowed, with ``--extend``,
  is more ``steps``, and extension trains exactly the steps added.
- **Checkpoints** (:func:`check_resume`): a checkpoint is continued only by the same
  settings and never by a run with fewer steps than it already holds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..config import ConfigError
from .atomic import jsonable
from .identity import RUNTIME_ONLY, identity_matches
from .runfiles import RunFileError, read_json

__all__ = ["finished_results", "saved_config", "same_config", "check_config_change", "check_resume",
           "RESULTS", "CONFIG"]

RESULTS, CONFIG = "results.json", "config.json"
EXTENDABLE = ("steps",)


def saved_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The folder's ``config.json`` as a dict, ``None`` if missing or malformed."""
    try:
        return read_json(Path(run_dir) / CONFIG)
    except RunFileError:
        return None


def same_config(run_dir: str | Path, identity: Mapping[str, str]) -> bool:
    """Was the folder's ``config.json`` written by a run with this identity?"""
    saved = saved_config(run_dir)
    return saved is not None and identity_matches(saved.get("identity"), identity)


def finished_results(run_dir: str | Path, identity: Mapping[str, str]) -> dict | None:
    """The folder's results if ``results.json`` itself carries this identity, else ``None``."""
    try:
        results = read_json(Path(run_dir) / RESULTS)
    except RunFileError:
        return None
    return results if identity_matches(results.get("identity"), identity) else None


def _fmt(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def check_config_change(run_dir: str | Path, config: Mapping[str, Any], *, extend: bool,
                        preset: str | None = None) -> str:
    """Validate ``--resume`` of ``run_dir`` with ``config``; ``"resume"`` or ``"extend"``.

    Raises :class:`ConfigError` (one line: what differs and what to do) when the folder has
    no readable ``config.json``, when any field other than ``steps`` differs, when
    ``steps`` differs without ``extend``, or when ``extend`` would not add steps.
    """
    run_dir = Path(run_dir)
    try:
        saved = read_json(run_dir / CONFIG)
    except RunFileError as exc:
        raise ConfigError(f"--resume: cannot continue {run_dir}: {exc}") from None
    old, new = saved.get("config"), jsonable(dict(config))
    if not isinstance(old, dict):
        raise ConfigError(f"--resume: {run_dir / CONFIG} has no 'config' object; rerun without --resume")
    changes = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and k not in RUNTIME_ONLY}
    if preset is not None and saved.get("preset") not in (None, preset):
        changes["preset"] = (saved.get("preset"), preset)
    if not changes:
        return "resume"
    listed = ", ".join(f"{k} {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in changes.items())
    others = [k for k in changes if k not in EXTENDABLE]
    if others or not extend:
        hint = (" (to train a run for more steps, add --extend)" if not others else "")
        raise ConfigError(f"--resume: {run_dir} was run with other settings ({listed}); resume with the "
                          f"same settings, or start a new run with another --out{hint}")
    old_steps, new_steps = changes["steps"]
    if not (isinstance(old_steps, int) and isinstance(new_steps, int) and new_steps > old_steps):
        raise ConfigError(f"--extend: --steps must exceed the {old_steps} steps {run_dir} was run for "
                          f"(got {new_steps})")
    return "extend"


def check_resume(state: Mapping[str, Any], fingerprint: Mapping[str, Any], steps: int, path: Path) -> None:
    """May checkpoint ``state`` (at ``path``) continue a run of ``steps`` with ``fingerprint``?"""
    saved = state.get("fingerprint")
    if not isinstance(saved, dict) or saved != dict(fingerprint):
        diff = sorted(k for k in fingerprint if not isinstance(saved, dict) or saved.get(k) != fingerprint[k])
        raise ConfigError(f"cannot resume {path}: it was trained with other settings ({diff}); "
                          "rerun without --resume or into another --out")
    done = state.get("step")
    if not isinstance(done, int) or done < 0:
        raise RunFileError(f"{path} has no valid step count; delete it or rerun without --resume")
    if done > steps:
        raise ConfigError(f"cannot resume {path}: it already holds {done} steps, more than --steps {steps}; "
                          "a run cannot be shortened (rerun without --resume)")
