"""tests/peer: every test runs on torch, on bnlab through torch's names, and on bnlab's reference backend (peer_binding.py)."""
from __future__ import annotations

import pytest
import torch

import bnlab

from peer_binding import BINDINGS, RefuseTorchBatchNormKernels, bnlab_targets


# bnlab failures of tests that pass on torch, each with the open request that tracks it (strict: a fix
# makes the entry fail as XPASS, so it gets removed). Keys: (binding, test file, test name, words of its pytest id).
KNOWN_BNLAB_FAILURES = {
    ("bnlab", "test_modules_batchnorm.py", "test_memory_format", ("f32", "train", "BatchNorm2d")):
        "compiled kernels: channels-last training gradients differ from the contiguous ones by up to 1.6e-5 "
        "(float32 tolerance 1e-5; torch and bnlab's reference backend stay within it)",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        binding = callspec.params.get("binding") if callspec is not None else None
        if binding is None or binding == "torch":
            continue
        words = set(callspec.id.split("-"))
        for (where, file, test, id_words), reason in KNOWN_BNLAB_FAILURES.items():
            if where == binding and item.path.name == file and item.originalname == test and set(id_words) <= words:
                item.add_marker(pytest.mark.xfail(reason=f"bnlab bug, open: {reason}", strict=True))


def pytest_generate_tests(metafunc):
    if "binding" in metafunc.fixturenames:
        metafunc.parametrize("binding", BINDINGS, indirect=True)


@pytest.fixture(autouse=True)
def binding(request, monkeypatch):
    """Bind torch's batch-norm names to the implementation under test (restored afterwards)."""
    name = getattr(request, "param", "torch")
    torch.manual_seed(0)
    # these tensors are tiny: one thread is faster than a team that waits on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    if name == "torch":
        yield name
        return
    if name == "bnlab_ref":  # bnlab's pure-torch reference kernels instead of the compiled ones
        previous = bnlab.get_backend()
        bnlab.set_backend("reference")
        request.addfinalizer(lambda: bnlab.set_backend(previous))
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
