"""Errors a user can cause. Every message names the file, node or table entry."""

from __future__ import annotations


class QatirError(Exception):
    """Base class of every error qatir raises for bad input or an unsupported model."""


class ModelFormatError(QatirError):
    """A model file that cannot be read: truncated, wrong format, inconsistent indices."""


class UnsupportedOpError(QatirError):
    """One or more operators qatir cannot import or export. Lists all of them at once."""

    def __init__(self, source: str, ops: dict[str, int], detail: str = ""):
        self.source = source
        self.ops = dict(ops)
        listing = ", ".join(f"{name} (x{count})" for name, count in sorted(ops.items()))
        msg = f"{source}: unsupported operator(s): {listing}"
        if detail:
            msg += f"; {detail}"
        super().__init__(msg)


class ShapeError(QatirError):
    """A shape that cannot be inferred, or inputs whose shapes do not fit the op."""


class VerifyError(QatirError):
    """The IR breaks an invariant (ownership, order, use lists, arity, shapes, dtypes)."""


class TableError(QatirError):
    """A pattern table that does not validate; the message names the file and entry."""


class PassError(QatirError):
    """A pass failed; the message names the pass and the passes that ran before it."""


class ExportError(QatirError):
    """The graph cannot be written as a TFLite model; the message names the node."""


class NumericsError(QatirError):
    """NaN/Inf or otherwise unusable numbers in weights or data; names the tensor."""


class DataError(QatirError):
    """Data fed to a graph (calibration, training, evaluation, reference feeds) that does not
    fit its inputs: a missing or unknown input, a wrong shape or dtype, an unreadable file."""
