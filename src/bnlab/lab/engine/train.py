"""The training loop every experiment uses: :func:`fit`.

One loop, configured by :class:`LoopConfig`: SGD+momentum or Adam, a step-indexed
learning-rate schedule (:mod:`bnlab.lab.optim`), evaluation on the test set every
``eval_every`` steps, records in ``metrics.jsonl``, a progress bar on a terminal,
atomic checkpoints every ``ckpt_every`` steps and exact resumption.

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

from . import distributed as D
from ..runs.checkpoint import load_checkpoint, save_checkpoint
from ..config import ConfigError, check, config_to_dict
from ..data.batches import BatchLoader
from .metrics import MetricsLog, truncate_after
from .optim import OPTIMIZERS, SCHEDULES, learning_rate, make_optimizer, set_lr
from .progress import progress_bar

__all__ = ["LoopConfig", "fit", "evaluate", "steps_to_reach"]

EvalHook = Callable[[nn.Module, int], dict[str, Any]]


@dataclass(frozen=True)
class LoopConfig:
    """Optimization and loop settings shared by every experiment."""

    optimizer: str = dataclasses.field(default="sgd", metadata={"help": "sgd | adam"})
    lr: float = dataclasses.field(default=0.1, metadata={"help": "base learning rate"})
    momentum: float = dataclasses.field(default=0.9, metadata={"help": "SGD momentum / Adam beta1"})
    weight_decay: float = 0.0
    schedule: str = dataclasses.field(
        default="constant", metadata={"help": "constant | step | exponential"})
    lr_step: int = dataclasses.field(default=1000, metadata={"help": "schedule period s (steps)"})
    lr_gamma: float = dataclasses.field(default=0.1, metadata={"help": "decay factor per period"})
    steps: int = dataclasses.field(default=1000, metadata={"help": "training steps"})
    batch_size: int = dataclasses.field(default=60, metadata={"help": "global minibatch size"})
    eval_every: int = dataclasses.field(default=100, metadata={"help": "evaluate every K steps"})
    ckpt_every: int = dataclasses.field(
        default=1000, metadata={"help": "checkpoint every K steps (0: only at the end)"})
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
    def from_config(cls, config: Any) -> "LoopConfig":
        """The loop fields of any config that has them (e.g. an experiment's)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(config, n) for n in names if hasattr(config, n)})


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


def steps_to_reach(history: list[dict[str, Any]], target: float, key: str = "test_acc") -> int | None:
    """First evaluated step whose ``key`` is >= ``target`` (None if never)."""
    for rec in history:
        v = rec.get(key)
        if v is not None and v >= target:
            return rec["step"]
    return None


def _fingerprint(cfg: LoopConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """What must match for a resume to continue the same run (steps may be extended)."""
    d = config_to_dict(cfg)
    for k in ("steps", "eval_every", "ckpt_every"):
        d.pop(k)
    return {**d, **meta}


def fit(model: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
        cfg: LoopConfig, run_dir: str | Path, *, tag: str | None = None, resume: bool = False,
        on_eval: EvalHook | None = None, on_step: Callable[[int], None] | None = None,
        meta: dict[str, Any] | None = None, desc: str = "train") -> dict[str, Any]:
    """Train ``model`` on ``train`` for ``cfg.steps`` steps; return its results dict.

    ``run_dir`` receives ``metrics.jsonl`` (records tagged ``run=tag``) and
    ``checkpoints/<tag or 'model'>.pt``. ``on_eval(model, step)`` adds entries to each
    evaluation record (e.g. fig1's sigmoid-input percentiles); ``on_step(step)`` is called
    after every completed step (tests inject interruptions there). Under torchrun the
    model is wrapped in DDP; rank 0 alone evaluates and writes files.
    """
    run_dir = Path(run_dir)
    rank, size = D.world()
    main = rank == 0
    meta = dict(meta or {})
    if cfg.batch_size % size:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {size} processes")
    x_train, y_train = train
    x_test, y_test = test
    opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    ckpt_path = run_dir / "checkpoints" / f"{tag or 'model'}.pt"
    metrics_path = run_dir / "metrics.jsonl"
    fingerprint = _fingerprint(cfg, meta)

    start, history, elapsed, window = 0, [], 0.0, (0.0, 0, 0)
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if state["fingerprint"] != fingerprint:
            diff = sorted(k for k in fingerprint if state["fingerprint"].get(k) != fingerprint[k])
            raise ConfigError(f"cannot resume {ckpt_path}: settings differ in {diff}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history, elapsed = state["step"], list(state["history"]), state["elapsed"]
        window = tuple(state["window"])
        torch.set_rng_state(state["torch_rng"])
    if main:  # drop records a killed run wrote after its last checkpoint (or an old run's)
        truncate_after(metrics_path, start if resume else -1, run=tag)
    D.barrier()

    net = nn.parallel.DistributedDataParallel(model) if size > 1 else model
    if cfg.batch_size > len(x_train):
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(x_train)} training examples")
    batches = BatchLoader(x_train, y_train, batch_size=cfg.batch_size, seed=cfg.seed,
                          rank=rank, world_size=size)
    log = MetricsLog(metrics_path, run=tag, enabled=main)
    bar = progress_bar(cfg.steps, initial=start, desc=desc, enabled=None if main else False)
    status, diverged_at = "completed", None
    win_loss, win_correct, win_n = window  # train loss/accuracy since the last evaluation
    t0 = time.perf_counter()

    def checkpoint(step: int) -> None:
        if main:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "history": history, "elapsed": elapsed + time.perf_counter() - t0,
                "torch_rng": torch.get_rng_state(), "fingerprint": fingerprint,
                "window": [win_loss, win_correct, win_n],
            })
        D.barrier()

    model.train()
    for step in range(start, cfg.steps):
        xb, yb = batches.batch(step)  # this rank's contiguous slice of global batch `step`
        lr = learning_rate(cfg.lr, cfg.schedule, step, cfg.lr_step, cfg.lr_gamma)
        set_lr(opt, lr)
        logits = net(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        loss_all = D.all_mean(loss.detach())
        if not torch.isfinite(loss_all):
            status, diverged_at = "diverged", step + 1
            log.log(step + 1, event="diverged", train_loss=float("nan"), lr=lr)
            break
        opt.step()
        s = step + 1
        win_loss += loss_all.item() * len(yb)
        win_correct += (logits.detach().argmax(1) == yb).sum().item()
        win_n += len(yb)
        if s % cfg.eval_every == 0 or s == cfg.steps:
            if main:
                test_loss, test_acc = evaluate(model, x_test, y_test)
                rec = {"step": s, "lr": lr, "train_loss": win_loss / win_n,
                       "train_acc": win_correct / win_n, "test_loss": test_loss, "test_acc": test_acc}
                if on_eval is not None:
                    rec.update(on_eval(model, s))
                history.append(rec)
                log.log(**rec)
                bar.set_postfix(loss=f"{rec['train_loss']:.3f}", test_acc=f"{test_acc:.3f}")
            win_loss, win_correct, win_n = 0.0, 0, 0
        bar.update(1)
        if cfg.ckpt_every and s % cfg.ckpt_every == 0 and s < cfg.steps:
            checkpoint(s)
        if on_step is not None:
            on_step(s)
    else:
        checkpoint(cfg.steps)
    bar.close()
    log.close()
    return _results(history, status, diverged_at, cfg.steps, elapsed + time.perf_counter() - t0)


def _results(history, status, diverged_at, steps, seconds) -> dict[str, Any]:
    best = max(history, key=lambda r: r["test_acc"], default=None)
    last = history[-1] if history and status == "completed" else None
    return {
        "status": status,
        "diverged_at_step": diverged_at,
        "steps": steps if status == "completed" else diverged_at,
        "final_test_acc": last["test_acc"] if last else None,
        "final_test_loss": last["test_loss"] if last else None,
        "best_test_acc": best["test_acc"] if best else None,
        "best_step": best["step"] if best else None,
        "seconds": seconds,
        "history": history,
    }
