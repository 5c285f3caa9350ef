"""The ``bnlab`` operators: every schema, defined once.

All entry points (eager, TorchScript, ``torch.jit.trace``, ``torch.export``,
``torch.compile``, ONNX) reach Batch Normalization through these operators; the
C++ extension (``csrc/``) only *implements* them (``TORCH_LIBRARY_IMPL``), the
pure-torch reference implements them on every device (:mod:`.reference`), and
:mod:`.fake` gives their output shapes for meta/fake tensors.

Conventions shared by all ops (``C`` channels, ``m`` values per channel):

* ``input`` is ``(N, C, *)``; outputs keep its memory format (contiguous or
  channels-last) and dtype.
* Statistics (``mean``, ``var``, ``invstd``) are ``(C,)`` in the *statistics
  dtype*: float64 for float64 input, float32 otherwise. ``var`` is biased.
* ``act`` is the activation fused into the elementwise pass, applied to
  ``z = γ·x̂ + β``: ``"identity"``, ``"relu"``, ``"leaky_relu"`` (slope
  ``act_param``) or ``"silu"``.
* Gradients not asked for in ``output_mask`` come back as empty ``(0,)`` tensors.
"""
from __future__ import annotations

import torch

NAMESPACE = "bnlab"

SCHEMAS: dict[str, str] = {
    # Alg. 1 + running statistics: (y, μ_B, σ²_B, ok). The buffers and the count are
    # updated in place unless the batch statistics are non-finite and guard is set.
    "bn_train": (
        "(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
        "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, float? momentum, "
        "float eps, bool guard, str act, float act_param) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
    # Section 3's closed-form gradient of bn_train (σ⁻¹ = 1/sqrt(var + eps)): (dx, dγ, dβ)
    "bn_backward": (
        "(Tensor grad_out, Tensor input, Tensor? weight, Tensor? bias, Tensor mean, "
        "Tensor var, float eps, str act, float act_param, bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
    ),
    # Alg. 2: y = act(γ·(x − E[x])/sqrt(Var[x] + ε) + β) with fixed statistics
    "bn_eval": (
        "(Tensor input, Tensor running_mean, Tensor running_var, Tensor? weight, "
        "Tensor? bias, float eps, str act, float act_param) -> Tensor"
    ),
    # per-channel (μ_B, σ²_B), biased; not differentiable
    "bn_stats": "(Tensor input) -> (Tensor, Tensor)",
    # elementwise pass with given constant statistics: y = act(γ·(x − mean)·invstd + β)
    "bn_apply": (
        "(Tensor input, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, "
        "str act, float act_param) -> Tensor"
    ),
    # gradient of bn_apply (statistics constant): dx = γ·invstd·dz, dγ = Σ dz·x̂, dβ = Σ dz
    "bn_apply_backward": (
        "(Tensor grad_out, Tensor input, Tensor mean, Tensor invstd, Tensor? weight, "
        "Tensor? bias, str act, float act_param, bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
    ),
    # the two halves of bn_backward, for statistics reduced across processes (SyncBN):
    # (Σ dz, Σ dz·x̂) with dz = dy·act'(z), in float64 ...
    "bn_backward_reduce": (
        "(Tensor grad_out, Tensor input, Tensor mean, Tensor invstd, Tensor? weight, "
        "Tensor? bias, str act, float act_param) -> (Tensor, Tensor)"
    ),
    # ... and dx = γ·invstd·(dz − Σdz/m − x̂·Σdz·x̂/m) given those sums over m values
    "bn_backward_elemt": (
        "(Tensor grad_out, Tensor input, Tensor mean, Tensor invstd, Tensor? weight, "
        "Tensor? bias, Tensor sum_dz, Tensor sum_dz_xhat, int count, str act, "
        "float act_param) -> Tensor"
    ),
    # In-Place ABN: bn_train writing y over input; returns (μ_B, σ²_B, ok)
    "bn_train_": (
        "(Tensor(a!) input, Tensor? weight, Tensor? bias, Tensor(b!)? running_mean, "
        "Tensor(c!)? running_var, Tensor(d!)? num_batches_tracked, float? momentum, "
        "float eps, bool guard, str act, float act_param) -> (Tensor, Tensor, Tensor)"
    ),
    # its gradient from the output alone: x̂ = (act⁻¹(y) − β)/γ (identity or leaky_relu)
    "bn_backward_from_output": (
        "(Tensor grad_out, Tensor output, Tensor? weight, Tensor? bias, Tensor var, float eps, "
        "str act, float act_param, bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
    ),
    # differentiable renderings of the two backwards (double backward: create_graph=True)
    "bn_backward_graph": (
        "(Tensor grad_out, Tensor input, Tensor? weight, Tensor? bias, float eps, str act, "
        "float act_param, bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
    ),
    "bn_apply_backward_graph": (
        "(Tensor grad_out, Tensor input, Tensor mean, Tensor invstd, Tensor? weight, "
        "Tensor? bias, str act, float act_param, bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
    ),
}

ACTIVATIONS = ("identity", "relu", "leaky_relu", "silu")
# activations whose inverse the in-place backward needs
INVERTIBLE = ("identity", "leaky_relu")

_LIB = torch.library.Library(NAMESPACE, "DEF")
for _name, _schema in SCHEMAS.items():
    _LIB.define(_name + _schema)

OPS = torch.ops.bnlab
