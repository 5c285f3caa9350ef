"""ONNX translation of bnlab's inference operator for the TorchScript-based exporter.

``torch.onnx.export(model, x, dynamo=False)`` traces the model with ``torch.jit.trace``;
an eval-mode bnlab layer shows up as one ``bnlab::bn_eval`` node, which this symbolic
writes as ONNX's standard ``BatchNormalization`` (inference mode), followed by the
fused activation if there is one. Registered when ``bnlab`` is imported; it costs one
dictionary entry in ``torch.onnx``'s registry. (``dynamo=True`` needs no symbolic: see
:func:`bnlab.functional.batch_norm_eval`.)

A training-mode bnlab layer is not translated: the export stops with
``UnsupportedOperatorError`` naming ``bnlab::bn_train`` (export in eval mode).
"""
from __future__ import annotations

import torch

__all__ = ["register"]

OPSET = 9                                   # BatchNormalization with 5 inputs and no 'spatial': opset 9+
_registered = False


def _ones_like(g, t):
    return g.op("Add", g.op("Mul", t, g.op("Constant", value_t=torch.tensor(0.0))),
                g.op("Constant", value_t=torch.tensor(1.0)))


def _zeros_like(g, t):
    return g.op("Mul", t, g.op("Constant", value_t=torch.tensor(0.0)))


def _bn_eval_symbolic(g, input, running_mean, running_var, weight, bias, eps, act, act_param):
    from torch.onnx import symbolic_helper as sh

    # Alg. 2: y = γ·(x − E[x])/sqrt(Var[x] + ε) + β  →  BatchNormalization(X, scale, B, mean, var)
    scale = _ones_like(g, running_var) if sh._is_none(weight) else weight
    shift = _zeros_like(g, running_mean) if sh._is_none(bias) else bias
    eps_value = sh._maybe_get_const(eps, "f")
    y = g.op("BatchNormalization", input, scale, shift, running_mean, running_var, epsilon_f=float(eps_value))
    act_name = sh._maybe_get_const(act, "s")
    if act_name == "identity":
        return y
    if act_name == "relu":
        return g.op("Relu", y)
    if act_name == "leaky_relu":
        return g.op("LeakyRelu", y, alpha_f=float(sh._maybe_get_const(act_param, "f")))
    if act_name == "silu":
        return g.op("Mul", y, g.op("Sigmoid", y))
    raise torch.onnx.errors.SymbolicValueError(f"bnlab::bn_eval: unknown activation {act_name!r}", input)


def register() -> None:
    """Register the ``bnlab::bn_eval`` symbolic with ``torch.onnx`` (once; idempotent)."""
    global _registered
    if _registered:
        return
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic("bnlab::bn_eval", _bn_eval_symbolic, OPSET)
    _registered = True
