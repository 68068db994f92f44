"""eliminate_dead_code: drop nodes that feed no graph output, then unused constants."""

from __future__ import annotations

from qatir.ir import Graph
from qatir.pipeline import PassContext, register_pass


@register_pass("eliminate_dead_code")
def eliminate_dead_code(graph: Graph, ctx: PassContext) -> bool:
    """Remove nodes not reachable backwards from the outputs, and orphan tensors."""
    return graph.eliminate_dead_code()
