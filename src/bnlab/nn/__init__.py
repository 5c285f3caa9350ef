"""Modules of bnlab: Batch Normalization layers and their variants."""
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]
