"""Model surgery: converting, folding and recalibrating Batch Normalization layers."""
from .convert import ConvertReport, convert_model
from .fold import FoldReport, fold_batchnorm
from .recalibrate import recalibrate

__all__ = ["convert_model", "ConvertReport", "fold_batchnorm", "FoldReport", "recalibrate"]
