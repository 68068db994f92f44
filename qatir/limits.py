"""Memory bounds: refuse work whose constants cannot fit, before any copy is made."""

from __future__ import annotations

import resource

from qatir.errors import QatirError
from qatir.ir import Graph


def _proc_kib(path: str, field: str) -> int | None:
    """A "Field:  N kB" line of a /proc file, in bytes (None where it cannot be read)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> int:
    """Bytes this process may still allocate: free RAM, capped by its address-space limit."""
    avail = _proc_kib("/proc/meminfo", "MemAvailable")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        left = max(soft - (_proc_kib("/proc/self/status", "VmSize") or 0), 0)
        avail = left if avail is None else min(avail, left)
    return avail if avail is not None else 1 << 62


# One folded constant (ConstantOfShape, Expand, Tile, ...) may take this share of the memory
# available when it is made, sized at the widest element folding produces (8 bytes): the
# graph keeps it, the writer copies it once, and a fuzzed file must not drive a huge
# allocation. On a 22 GiB machine that is about 700M elements (VGG's 4096 x 25088 = 103M).
CONST_MEMORY_FRACTION = 0.25
CONST_ITEM_BYTES = 8


def max_const_elements() -> int:
    """The most elements one folded constant may have, from the memory available now."""
    return max(int(available_memory() * CONST_MEMORY_FRACTION) // CONST_ITEM_BYTES, 1)


def constant_bytes(graph: Graph) -> int:
    return sum(t.data.nbytes for t in graph.tensors.values() if t.data is not None)


def check_fits(graph: Graph, copies: int, what: str) -> None:
    """Raise unless ``copies`` copies of the graph's constants fit in available memory."""
    per_copy = constant_bytes(graph)
    need = per_copy * copies
    have = available_memory()
    if need > have:
        raise QatirError(
            f"graph {graph.name!r}: {what} needs about {need / 2**30:.2f} GiB "
            f"({copies} x {per_copy} bytes of constants) but only "
            f"{have / 2**30:.2f} GiB is available; refusing before copying")
