"""ONNX export of eval-mode models with every bnlab layer, both exporters, checked with onnxruntime.

Oracle: the eager model (and torch.nn.BatchNorm2d's twin) on a batch size other than the
one exported with, so the dynamic batch axis is exercised. The graph must hold the
standard ``BatchNormalization`` node (or BN folded into the Conv) and no bnlab operator.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import bnlab
from toolchain_models import every_layer_model, make_layer, randomize, torch_twin

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _export(model, x, dynamo: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            prog = torch.onnx.export(model, (x,), dynamo=True, verbose=False,
                                     dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
            return prog.model_proto
        f = io.BytesIO()
        torch.onnx.export(model, (x,), f, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
        return onnx.load_from_string(f.getvalue())


def _run(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_every_layer_exports_to_standard_batchnorm(dynamo):
    model = every_layer_model().eval()
    proto = _export(model, torch.randn(2, 3, 6, 6), dynamo)
    ops = [n.op_type for n in proto.graph.node]
    domains = {n.domain for n in proto.graph.node}
    assert not any("bnlab" in d for d in domains) and not any("bnlab" in op for op in ops), ops
    # three layers follow a ReLU (cannot fold) + the one on the input: BatchNormalization nodes
    assert ops.count("BatchNormalization") >= 3, ops
    x = torch.randn(7, 3, 6, 6)                                      # another batch size than exported
    out = _run(proto, x)
    with torch.no_grad():
        eager, oracle = model(x), torch_twin(model)(x)
    torch.testing.assert_close(eager, oracle, rtol=1e-5, atol=1e-5)
    assert np.abs(out - eager.numpy()).max() <= 1e-5


@pytest.mark.parametrize("kind", ["bn", "ghost", "renorm", "sync", "frozen"])
def test_conv_bn_exports_and_matches(kind, dynamo=False):
    """Conv → layer → ReLU: folded or not, onnxruntime equals eager within 1e-5 (float32)."""
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), make_layer(kind, 4), nn.ReLU())).eval()
    proto = _export(model, torch.randn(2, 3, 5, 5), dynamo)
    assert not any("bnlab" in n.domain or "bnlab" in n.op_type for n in proto.graph.node)
    x = torch.randn(5, 3, 5, 5)
    with torch.no_grad():
        assert np.abs(_run(proto, x) - model(x).numpy()).max() <= 1e-5


def test_training_mode_export_is_refused_not_silently_wrong():
    """Exported as a training graph, a bnlab layer has no ONNX translation: the exporter says so."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), bnlab.BatchNorm2d(4)).train()
    with warnings.catch_warnings(), pytest.raises(Exception, match="bn_train"):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 4, 4),), io.BytesIO(), dynamo=False,
                          training=torch.onnx.TrainingMode.TRAINING)
