"""torch.jit.script / torch.jit.trace of models with bnlab layers, and save/load in a fresh process.

Oracle: the eager model on the same input (outputs and, in training mode, the running
statistics each updates), and torch.nn.BatchNorm2d's twin in eval mode.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import bnlab
from toolchain_models import every_layer_model, make_layer, randomize, torch_twin


def _conv_bn(kind: str) -> nn.Module:
    torch.manual_seed(1)
    return randomize(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), make_layer(kind, 4), nn.ReLU()))


def _buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("how", ["script", "trace"])
def test_eval_model_with_every_layer(how):
    model = every_layer_model().eval()
    x = torch.randn(4, 3, 6, 6)
    compiled = torch.jit.script(model) if how == "script" else torch.jit.trace(model, (x,))
    x2 = torch.randn(6, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x2), model(x2), rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(model(x2), torch_twin(model)(x2), rtol=1e-5, atol=1e-5)
    # scripting leaves the Python model as it was (no layer swapped behind the user's back)
    assert all(type(a) is type(b) for a, b in zip(model.modules(), every_layer_model().modules()))


@pytest.mark.parametrize("kind", ["bn", "ghost"])
@pytest.mark.parametrize("how", ["script", "trace"])
def test_training_mode_updates_running_statistics(kind, how):
    """A compiled training step normalizes with batch statistics and folds them in, as eager does."""
    eager, other = _conv_bn(kind).train(), _conv_bn(kind).train()
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    if how == "script":
        compiled = torch.jit.script(other)
    else:
        compiled = torch.jit.trace(other, (x,), check_trace=False)
        other.load_state_dict(_conv_bn(kind).state_dict())          # tracing ran one step: start again
    for step in range(2):
        xs = x + step
        y_eager = eager(xs)
        y_comp = compiled(xs)
        torch.testing.assert_close(y_comp, y_eager, rtol=1e-6, atol=1e-6)
    for k, v in _buffers(eager).items():
        torch.testing.assert_close(other.state_dict()[k], v, rtol=1e-6, atol=1e-6)
    steps_per_call = 8 // 2 if kind == "ghost" else 1                 # four ghost batches of 2
    assert int(other[1].num_batches_tracked) == int(eager[1].num_batches_tracked) == 3 + 2 * steps_per_call


@pytest.mark.parametrize("kind", ["renorm", "sync"])
def test_scripted_training_of_variants_without_script_form_says_so(kind):
    compiled = torch.jit.script(_conv_bn(kind).train())
    with pytest.raises(Exception, match="eval mode only"):
        compiled(torch.randn(4, 3, 5, 5))
    compiled.eval()
    model = _conv_bn(kind).eval()
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-5)


def test_save_load_in_a_fresh_process(tmp_path):
    """A scripted and a traced model saved here load and run in a new interpreter that imports bnlab."""
    model = every_layer_model().eval()
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        expect = model(x)
    torch.jit.save(torch.jit.script(model), str(tmp_path / "scripted.pt"))
    torch.jit.save(torch.jit.trace(model, (x,)), str(tmp_path / "traced.pt"))
    torch.save({"x": x, "y": expect}, str(tmp_path / "io.pt"))
    code = textwrap.dedent(f"""
        import torch, bnlab
        io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        for name in ("scripted", "traced"):
            m = torch.jit.load({str(tmp_path)!r} + "/" + name + ".pt")
            with torch.no_grad():
                torch.testing.assert_close(m(io["x"]), io["y"], rtol=1e-6, atol=1e-5)
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
