"""Modules of bnlab: Batch Normalization layers and their variants."""
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .sync import SyncBatchNorm, convert_sync_batchnorm
from .renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, RenormSchedule
from .ghost import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d
from .frozen import FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d, freeze_batchnorm
from .act import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from .factory import get_norm_layer

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "convert_sync_batchnorm",
           "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "RenormSchedule",
           "GhostBatchNorm1d", "GhostBatchNorm2d", "GhostBatchNorm3d",
           "FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d", "freeze_batchnorm",
           "BatchNormAct1d", "BatchNormAct2d", "BatchNormAct3d", "get_norm_layer"]
