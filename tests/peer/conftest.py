"""tests/peer: every test runs under both bindings of torch's batch-norm names (see peer_binding.py)."""
from __future__ import annotations

import pytest
import torch

from peer_binding import BINDINGS, RefuseTorchBatchNormKernels, bnlab_targets


def pytest_generate_tests(metafunc):
    if "binding" in metafunc.fixturenames:
        metafunc.parametrize("binding", BINDINGS, indirect=True)


@pytest.fixture(autouse=True)
def binding(request, monkeypatch):
    """Bind torch's batch-norm names to the implementation under test (restored afterwards)."""
    name = getattr(request, "param", "torch")
    torch.manual_seed(0)
    if name == "torch":
        yield name
        return
    for owner, attr, value in bnlab_targets():
        monkeypatch.setattr(owner, attr, value)
    if request.node.get_closest_marker("allow_torch_kernels") is not None:
        yield name
        return
    with RefuseTorchBatchNormKernels():
        yield name


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "allow_torch_kernels(reason): the test itself calls a torch op below the rebound names "
        "(e.g. torch.native_batch_norm as its oracle); the bnlab binding then runs without the kernel guard",
    )
