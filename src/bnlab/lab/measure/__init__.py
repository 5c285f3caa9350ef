"""Measurements the lab takes on a network during training.

Pure functions over a ``loss_at(params) -> loss`` closure, so that each one can be
checked on a model whose answer is known in closed form (a quadratic, a deep linear net):

- :mod:`.landscape`: loss landscape, gradient predictiveness and effective β-smoothness
  along the gradient direction (Santurkar et al., 2018, Section 3.1 and Figure 4).
- :mod:`.ics`: internal covariate shift of each layer as the change of its gradient
  when the layers before it take their update (Santurkar et al., 2018, Definition 2.1).
- :mod:`.running_stats`: moving averages of BN's batch statistics at several momenta,
  raw (PyTorch's ``running_mean``/``running_var``) and bias-corrected.
- :mod:`.distribution`: how far the distributions of layer inputs move between two moments
  (per-channel mean and standard deviation on a probe batch).
- :mod:`.functional`: the closures themselves, built from a module with
  ``torch.func.functional_call`` so that measuring never mutates the model.
"""
from .distribution import distribution_shift, layer_input_stats
from .functional import flat_norm, loss_closure, named_params
from .ics import IcsPoint, internal_covariate_shift
from .landscape import LandscapeProbe, probe_along_gradient
from .running_stats import MovingAverages, batch_statistics, bn_layers

__all__ = [
    "IcsPoint",
    "LandscapeProbe",
    "MovingAverages",
    "batch_statistics",
    "distribution_shift",
    "layer_input_stats",
    "bn_layers",
    "flat_norm",
    "internal_covariate_shift",
    "loss_closure",
    "named_params",
    "probe_along_gradient",
]
