"""Op definitions. Importing this package registers every built-in op."""

from qatir.ops import defs as _defs  # noqa: F401  (registers the built-in ops)
from qatir.ops.registry import (
    QUANT_ROLES,
    OpDef,
    all_ops,
    fact_map,
    get_op,
    has_op,
    ops_where,
    register_op,
)

__all__ = ["QUANT_ROLES", "OpDef", "all_ops", "fact_map", "get_op", "has_op", "ops_where",
           "register_op"]
