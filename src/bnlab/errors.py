"""Exception classes of bnlab: each is PyTorch's exception type *and* the natural Python one.

``torch.nn.BatchNorm*d`` raises ``RuntimeError`` for a running-statistics size mismatch,
``RuntimeError`` for mixed dtypes and ``NotImplementedError`` for integer input, where a
Python library would raise ``ValueError`` or ``TypeError``. bnlab raises classes that
inherit from both, so code written against either convention keeps catching them::

    try:
        bn(x)
    except RuntimeError:      # as with torch.nn.BatchNorm2d
        ...
    except ValueError:        # as with a plain Python argument check
        ...
"""
from __future__ import annotations

__all__ = ["BatchNormShapeError", "BatchNormDTypeError", "BatchNormUnsupportedDTypeError",
           "BatchNormStateError", "BatchNormRankError", "BatchNormInputTypeError"]


class BatchNormShapeError(RuntimeError, ValueError):
    """A parameter or buffer whose size does not match the input's channels (torch: ``RuntimeError``)."""


class BatchNormDTypeError(RuntimeError, TypeError):
    """Input and parameters/statistics of dtypes that cannot be mixed (torch: ``RuntimeError``)."""


class BatchNormUnsupportedDTypeError(NotImplementedError, TypeError):
    """An input dtype that cannot be normalized: integer, bool, complex (torch: ``NotImplementedError``)."""


class BatchNormStateError(RuntimeError, ValueError):
    """Statistics missing where they are needed, e.g. in evaluation mode (torch: ``RuntimeError``)."""


class BatchNormRankError(IndexError, ValueError):
    """An input with fewer than two dimensions given to the functional form (torch: ``IndexError``)."""


class BatchNormInputTypeError(TypeError, AttributeError):
    """Something other than a tensor passed as the input (torch: ``AttributeError``)."""
