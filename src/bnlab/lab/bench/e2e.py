"""End to end: batch-1 inference latency and a ResNet-18-style SGD step, torch vs bnlab.

Variants of one network with identical weights: ``torch`` (``nn.BatchNorm2d``),
``bnlab`` (:func:`bnlab.convert_model`), ``bnlab_act`` (converted, then every BN → ReLU
pair fused into ``BatchNormAct2d``) and, for the SGD step, ``no_bn`` (every BN replaced
by ``nn.Identity``): the step time if BN cost nothing, hence the ceiling
``torch / no_bn`` on what any BN kernel can gain end to end.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

import bnlab

from ...surgery.fuse_act import fuse_bn_act
from .models import count_batchnorms, resnet18_style
from .timing import Clock, interleaved, ratio_summary, summary

__all__ = ["variants", "bench_batch1", "bench_sgd_step"]


def _strip_bn(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, nn.Identity())
        else:
            _strip_bn(child)
    return model


def variants(width: int, with_no_bn: bool) -> dict[str, nn.Module]:
    """The network with torch BN, bnlab BN, fused bnlab BN+ReLU (and no BN), same weights."""
    torch.manual_seed(0)
    base = resnet18_style(width)
    out = {"torch": base, "bnlab": bnlab.convert_model(copy.deepcopy(base), to="bnlab")}
    out["bnlab_act"] = fuse_bn_act(out["bnlab"])                     # a fused copy
    if with_no_bn:
        out["no_bn"] = _strip_bn(copy.deepcopy(base))
    return out


def _report(secs: dict, baseline: str = "torch") -> dict:
    """Per-peer summaries and ratios to ``baseline``; the ``no_bn`` peer's ratio is the ceiling."""
    res = {"peers": {n: summary(s) for n, s in secs.items()}, "speedup": {}}
    for n in secs:
        if n != baseline:
            res["speedup"][n] = ratio_summary(secs[baseline], secs[n])
    if "no_bn" in res["speedup"]:
        res["ceiling"] = res["speedup"].pop("no_bn")                  # torch / no_bn: BN at zero cost
        res["bn_share_of_torch_step"] = 1.0 - 1.0 / res["ceiling"]["median"]
    return res


def bench_batch1(cfg) -> dict:
    """Eval-mode latency of one image (ms per call), torch vs bnlab vs bnlab fused, and the
    net without BN: torch / no_bn is the ceiling on what any BN kernel can gain there."""
    models = variants(cfg.resnet_width, with_no_bn=True)
    x = torch.randn(1, 3, cfg.resnet_size, cfg.resnet_size)
    clock = Clock()

    def step(model):
        model.eval()

        def run():
            with torch.no_grad():
                clock.start()
                model(x)
                return clock.stop()
        return run

    secs, _ = interleaved({n: step(m) for n, m in models.items()}, cfg.e2e_reps * 2, cfg.warmup + 1)
    out = _report(secs)
    out["batchnorm_layers"] = count_batchnorms(models["torch"])
    out["input"] = list(x.shape)
    return out


def bench_sgd_step(cfg) -> dict:
    """One SGD step (forward, cross-entropy, backward, update), ms; ratios per round."""
    models = variants(cfg.resnet_width, with_no_bn=True)
    x = torch.randn(cfg.resnet_batch, 3, cfg.resnet_size, cfg.resnet_size)
    target = torch.randint(0, 10, (cfg.resnet_batch,))
    clock = Clock()

    def step(model):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def run():
            clock.start()
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), target).backward()
            opt.step()
            return clock.stop()
        return run

    secs, _ = interleaved({n: step(m) for n, m in models.items()}, cfg.e2e_reps, 1)
    out = _report(secs)
    out["batchnorm_layers"] = count_batchnorms(models["torch"])
    out["input"] = list(x.shape)
    return out
