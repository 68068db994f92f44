"""Compatibility module: lowering lives in the :mod:`qatir.lowering` package (named steps).

``from qatir.lower import lower, is_lowered, apply_io, ...`` keeps working.
"""

from qatir.lowering import *  # noqa: F403
from qatir.lowering import __all__  # noqa: F401
