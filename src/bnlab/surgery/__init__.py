"""Model surgery: converting, folding and recalibrating Batch Normalization layers."""
from .convert import convert_model
from .fold import FoldReport, fold_batchnorm
from .recalibrate import recalibrate

__all__ = ["convert_model", "fold_batchnorm", "FoldReport", "recalibrate"]
