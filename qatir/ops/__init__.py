"""Op definitions. Importing this package registers every built-in op."""

from qatir.ops import defs as _defs  # noqa: F401  (registers the built-in ops)
from qatir.ops.registry import OpDef, all_ops, get_op, has_op, register_op

__all__ = ["OpDef", "all_ops", "get_op", "has_op", "register_op"]
