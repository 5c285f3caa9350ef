"""get_norm_layer: every name builds the documented layer; oracles for group/layer norm."""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import bnlab
from bnlab.nn.factory import NORM_LAYERS, default_num_groups


@pytest.mark.parametrize("name,dim,cls", [
    ("batch", 1, bnlab.BatchNorm1d), ("batch", 2, bnlab.BatchNorm2d), ("batch", 3, bnlab.BatchNorm3d),
    ("ghost", 2, bnlab.GhostBatchNorm2d), ("renorm", 1, bnlab.BatchRenorm1d),
    ("frozen", 3, bnlab.FrozenBatchNorm3d), ("sync", 2, bnlab.SyncBatchNorm),
])
def test_batchnorm_family(name, dim, cls):
    layer = bnlab.get_norm_layer(name, dim=dim)(8)
    assert type(layer) is cls and layer.num_features == 8


def test_kwargs_are_forwarded_and_checked_early():
    g = bnlab.get_norm_layer("ghost", virtual_batch_size=4, momentum=0.2)(6)
    assert g.virtual_batch_size == 4 and g.momentum == 0.2
    r = bnlab.get_norm_layer("renorm", r_max=2.0, warmup_steps=10)(6)
    assert r.schedule.r_max == 2.0 and r.schedule.warmup_steps == 10
    with pytest.raises(TypeError):
        bnlab.get_norm_layer("batch", virtual_batch_size=4)
    with pytest.raises(TypeError):
        bnlab.get_norm_layer("layer", num_groups=2)
    with pytest.raises(ValueError):
        bnlab.get_norm_layer("batch", dim=4)
    with pytest.raises(ValueError, match="choose one of"):
        bnlab.get_norm_layer("instance")


@pytest.mark.parametrize("c", list(range(1, 130)) + [192, 256, 1000])
def test_default_num_groups_divides(c):
    g = default_num_groups(c)
    assert c % g == 0 and 1 <= g <= 32
    assert all(c % h for h in range(g + 1, 33))                      # the largest such divisor
    assert bnlab.get_norm_layer("group")(c).num_groups == g


def test_group_norm_explicit_and_oracle():
    layer = bnlab.get_norm_layer("group", num_groups=4)(8)
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 4
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(layer(x), TF.group_norm(x, 4, layer.weight, layer.bias))
    with pytest.raises(ValueError):
        bnlab.get_norm_layer("group", num_groups=3)(8)


@pytest.mark.parametrize("shape", [(4, 6), (4, 6, 5), (2, 6, 3, 3)])
def test_layer_norm_works_for_flat_and_spatial(shape):
    layer = bnlab.get_norm_layer("layer")(6)
    x = torch.randn(shape) * 3 + 2
    # oracle: LayerNorm over every dim but the batch (γ = 1, β = 0 at init)
    torch.testing.assert_close(layer(x), TF.layer_norm(x, shape[1:], eps=layer.eps))


def test_none_is_identity():
    layer = bnlab.get_norm_layer("none")(5)
    x = torch.randn(3, 5)
    assert isinstance(layer, nn.Identity) and layer(x) is x


@pytest.mark.parametrize("name", NORM_LAYERS)
def test_every_name_builds_a_picklable_factory(name):
    factory = bnlab.get_norm_layer(name.upper() if name == "batch" else name)
    again = pickle.loads(pickle.dumps(factory))
    assert type(again(16)) is type(factory(16))
