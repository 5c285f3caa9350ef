"""Model surgery: converting, folding and recalibrating Batch Normalization layers."""
from .convert import convert_model

__all__ = ["convert_model"]
