"""bnlab: Batch Normalization (Ioffe & Szegedy, 2015) from scratch on PyTorch.

The library: drop-in ``BatchNorm1d/2d/3d`` layers (Algorithm 1 for training,
Algorithm 2 for inference, the closed-form backward of Section 3), their variants,
model-surgery tools and fast CPU kernels. The lab (``bnlab`` command,
``bnlab.lab``) is imported only on demand.
"""
from . import functional
from .kernels import available_backends, get_backend, set_backend
from .nn import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .nn import SyncBatchNorm, convert_sync_batchnorm
from .nn import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, RenormSchedule
from .nn import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d
from .nn import FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d, freeze_batchnorm
from .nn import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from .nn import get_norm_layer
from .surgery import ConvertReport, FoldReport, convert_model, fold_batchnorm, fuse_bn_act, recalibrate

from . import _onnx as _onnx_registration
from . import errors

_onnx_registration.register()          # torch.onnx.export(..., dynamo=False) translates bnlab::bn_eval

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "RenormSchedule",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "freeze_batchnorm",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
    "get_norm_layer",
    "fold_batchnorm",
    "fuse_bn_act",
    "FoldReport",
    "recalibrate",
    "functional",
    "errors",
    "convert_model",
    "ConvertReport",
    "set_backend",
    "get_backend",
    "available_backends",
    "__version__",
]
