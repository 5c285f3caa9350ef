"""Model surgery: converting, folding and recalibrating Batch Normalization layers."""
from .convert import ConvertReport, convert_model
from .fold import FoldReport, fold_batchnorm
from .fuse_act import fuse_bn_act
from .recalibrate import recalibrate

__all__ = ["convert_model", "ConvertReport", "fold_batchnorm", "fuse_bn_act", "FoldReport", "recalibrate"]
