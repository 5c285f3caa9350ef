"""The training loop every experiment uses: :func:`fit`.

One loop, configured by :class:`LoopConfig`: SGD+momentum or Adam, a step-indexed
learning-rate schedule (:mod:`bnlab.lab.engine.optim`), evaluation every ``eval_every``
steps on a validation split and on the test set, records in ``metrics.jsonl``, a progress
bar on a terminal, atomic checkpoints every ``ckpt_every`` steps and exact resumption.

Model selection: the *validation* split picks the step (highest ``val_acc``, the earliest
on ties); the test numbers are those measured at that step. The test set never selects
anything. Without a validation split the last evaluated step is the selected one.

Repeatability: minibatches are a pure function of (seed, step) (:class:`BatchLoader`),
the schedule a pure function of the step, and the model's initial weights come from the
caller's seeded build; a CPU run therefore repeats bit for bit, and a run resumed from a
checkpoint (weights, optimizer state, step, history) reaches the same numbers as one
that was never interrupted. A non-finite training loss stops the run with status
``"diverged"`` (the parameters are not updated with the non-finite gradient).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import ConfigError, check, config_to_dict, option
from ..data.batches import BatchLoader
from ..runs.checkpoint import load_checkpoint, save_checkpoint
from ..runs.resume import check_resume
from . import distributed as D
from .metrics import MetricsLog, truncate_after
from .optim import OPTIMIZERS, SCHEDULES, learning_rate, make_optimizer, set_lr
from .progress import progress_bar

__all__ = ["LoopConfig", "fit", "evaluate", "steps_to_reach", "select_step"]

EvalHook = Callable[[nn.Module, int], dict[str, Any]]
Split = tuple[Tensor, Tensor]



@dataclass(frozen=True)
class LoopConfig:
    """Optimization and loop settings shared by every experiment."""

    optimizer: str = option("sgd", "sgd | adam")
    lr: float = option(0.1, "base learning rate")
    momentum: float = option(0.9, "SGD momentum / Adam beta1")
    weight_decay: float = 0.0
    schedule: str = option("constant", "constant | step | exponential")
    lr_step: int = option(1000, "schedule period s (steps)")
    lr_gamma: float = option(0.1, "decay factor per period")
    steps: int = option(1000, "training steps")
    batch_size: int = option(60, "global minibatch size")
    eval_every: int = option(100, "evaluate every K steps")
    ckpt_every: int = option(1000, "checkpoint every K steps (0: only at the end)")
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        check(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        check(self.lr > 0 and math.isfinite(self.lr), f"lr must be positive, got {self.lr}")
        check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        check(self.ckpt_every >= 0, f"ckpt_every must be >= 0, got {self.ckpt_every}")
        check(self.lr_step >= 1, f"lr_step must be >= 1, got {self.lr_step}")
        check(self.lr_gamma > 0, f"lr_gamma must be positive, got {self.lr_gamma}")

    @classmethod
    def from_config(cls, config: Any, **changes: Any) -> "LoopConfig":
        """The loop fields of any config that has them (e.g. an experiment's), then ``changes``."""
        names = [f.name for f in dataclasses.fields(cls)]
        values = {n: getattr(config, n) for n in names if hasattr(config, n)}
        return cls(**{**values, **changes})


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode (Alg. 2: population statistics)."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        logits = model(x[i:i + chunk])
        loss_sum += F.cross_entropy(logits, y[i:i + chunk], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + chunk]).sum().item()
    model.train(was_training)
    return loss_sum / len(x), correct / len(x)


def steps_to_reach(history: list[dict[str, Any]], target: float, key: str = "val_acc") -> int | None:
    """First evaluated step whose ``key`` is >= ``target`` (None if never)."""
    for rec in history:
        v = rec.get(key)
        if v is not None and v >= target:
            return rec["step"]
    return None


def select_step(history: list[dict[str, Any]], key: str = "val_acc") -> dict[str, Any] | None:
    """The evaluation record with the highest ``key`` (earliest on ties); the last if none has it."""
    scored = [r for r in history if r.get(key) is not None and math.isfinite(r[key])]
    if not scored:
        return history[-1] if history else None
    return max(scored, key=lambda r: (r[key], -r["step"]))


def _fingerprint(cfg: LoopConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """What must match for a resume to continue the same run (steps may be extended)."""
    d = config_to_dict(cfg)
    for k in ("steps", "eval_every", "ckpt_every"):
        d.pop(k)
    return {**d, **meta}


@dataclass
class _State:
    """What a checkpoint carries besides the weights: the position in the run."""

    step: int = 0
    history: list = dataclasses.field(default_factory=list)
    elapsed: float = 0.0
    win_loss: float = 0.0      # train loss/accuracy summed since the last evaluation
    win_correct: int = 0
    win_n: int = 0


def _restore(path: Path, model: nn.Module, opt, fingerprint: dict[str, Any], steps: int) -> _State:
    state = load_checkpoint(path)                    # SHA-256 sidecar and structure verified
    check_resume(state, fingerprint, steps, path)    # same settings, not more steps than asked
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    loss, correct, n = state["window"]
    return _State(state["step"], list(state["history"]), state["elapsed"], loss, correct, n)


def _save(path: Path, model: nn.Module, opt, st: _State, fingerprint: dict[str, Any]) -> None:
    if D.world()[0] == 0:
        save_checkpoint(path, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "step": st.step,
            "history": st.history, "elapsed": st.elapsed, "torch_rng": torch.get_rng_state(),
            "fingerprint": fingerprint, "window": [st.win_loss, st.win_correct, st.win_n],
        })
    D.barrier()


def _eval_record(model: nn.Module, st: _State, lr: float, val: Split | None, test: Split | None,
                 on_eval: EvalHook | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"step": st.step, "lr": lr, "train_loss": st.win_loss / st.win_n,
                           "train_acc": st.win_correct / st.win_n}
    for name, split in (("val", val), ("test", test)):
        if split is not None:
            rec[f"{name}_loss"], rec[f"{name}_acc"] = evaluate(model, *split)
    if on_eval is not None:
        rec.update(on_eval(model, st.step))
    return rec


def _check_args(cfg: LoopConfig, n_train: int, size: int) -> None:
    if cfg.batch_size % size:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {size} processes")
    if cfg.batch_size > n_train:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {n_train} training examples")


def fit(model: nn.Module, train: Split, test: Split | None, cfg: LoopConfig, run_dir: str | Path, *,
        val: Split | None = None, tag: str | None = None, resume: bool = False,
        on_eval: EvalHook | None = None, on_step: Callable[[int], None] | None = None,
        meta: dict[str, Any] | None = None, desc: str = "train") -> dict[str, Any]:
    """Train ``model`` on ``train`` for ``cfg.steps`` steps; return its results dict.

    ``run_dir`` receives ``metrics.jsonl`` (records tagged ``run=tag``) and
    ``checkpoints/<tag or 'model'>.pt``. Every evaluation record has the train loss and
    accuracy since the previous one and ``val_*``/``test_*`` for the splits given;
    ``on_eval(model, step)`` adds entries to it (e.g. fig1's sigmoid-input percentiles);
    ``on_step(step)`` is called after every completed step (tests inject interruptions
    there). Under torchrun the model is wrapped in DDP; rank 0 alone evaluates and writes.
    """
    run_dir = Path(run_dir)
    rank, size = D.world()
    _check_args(cfg, len(train[0]), size)
    opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    ckpt = run_dir / "checkpoints" / f"{tag or 'model'}.pt"
    fingerprint = _fingerprint(cfg, dict(meta or {}))
    st = _restore(ckpt, model, opt, fingerprint, cfg.steps) if resume and ckpt.exists() else _State()
    if rank == 0:  # drop records a killed run wrote after its last checkpoint (or an old run's)
        truncate_after(run_dir / "metrics.jsonl", st.step if resume else -1, run=tag)
    D.barrier()
    net = nn.parallel.DistributedDataParallel(model) if size > 1 else model
    batches = BatchLoader(*train, batch_size=cfg.batch_size, seed=cfg.seed, rank=rank, world_size=size)
    log = MetricsLog(run_dir / "metrics.jsonl", run=tag, enabled=rank == 0)
    bar = progress_bar(cfg.steps, initial=st.step, desc=desc, enabled=None if rank == 0 else False)
    t0, elapsed0, diverged_at = time.perf_counter(), st.elapsed, None
    model.train()
    while st.step < cfg.steps:
        lr = learning_rate(cfg.lr, cfg.schedule, st.step, cfg.lr_step, cfg.lr_gamma)
        if not _train_step(net, opt, batches.batch(st.step), lr, st):
            diverged_at = st.step + 1
            log.log(diverged_at, event="diverged", train_loss=float("nan"), lr=lr)
            break
        st.elapsed = elapsed0 + time.perf_counter() - t0   # training time so far (evaluations excluded)
        if st.step % cfg.eval_every == 0 or st.step == cfg.steps:
            if rank == 0:
                t_eval = time.perf_counter()
                rec = _eval_record(model, st, lr, val, test, on_eval)
                st.history.append(rec)
                log.log(**rec)
                bar.set_postfix(loss=f"{rec['train_loss']:.3f}")
                t0 += time.perf_counter() - t_eval              # evaluation time is not training time
            st.win_loss, st.win_correct, st.win_n = 0.0, 0, 0
        bar.update(1)
        if st.step == cfg.steps or (cfg.ckpt_every and st.step % cfg.ckpt_every == 0):
            _save(ckpt, model, opt, st, fingerprint)
        if on_step is not None:
            on_step(st.step)
    bar.close()
    log.close()
    return _results(st, diverged_at, cfg.steps)


def _train_step(net: nn.Module, opt, batch: Split, lr: float, st: _State) -> bool:
    """One SGD/Adam step on ``batch``; False (and no update) if the loss is not finite."""
    xb, yb = batch  # this rank's contiguous slice of global batch `st.step`
    set_lr(opt, lr)
    logits = net(xb)
    loss = F.cross_entropy(logits, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    loss_all = D.all_mean(loss.detach())
    if not torch.isfinite(loss_all):
        return False
    opt.step()
    st.step += 1
    st.win_loss += loss_all.item() * len(yb)
    st.win_correct += (logits.detach().argmax(1) == yb).sum().item()
    st.win_n += len(yb)
    return True


def _results(st: _State, diverged_at: int | None, steps: int) -> dict[str, Any]:
    status = "completed" if diverged_at is None else "diverged"
    sel = select_step(st.history) if status == "completed" else None
    last = st.history[-1] if st.history and status == "completed" else None
    return {
        "status": status,
        "diverged_at_step": diverged_at,
        "steps": steps if status == "completed" else diverged_at,
        "selected_step": sel["step"] if sel else None,
        "selected": sel,                      # the record at the step the validation split picked
        "final": last,
        "seconds": st.elapsed,
        "history": st.history,
    }
