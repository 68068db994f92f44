"""Step ``checks``: the int8 region is complete and the quantization spec holds.

``check_int8_region`` (graphs lowered from FAKE_QUANT): every op touching int8 has an
int8 kernel (``int8`` op fact), no fused activation LiteRT ignores, no float tensor
inside the region; float-island nodes (``metadata["float_islands"]``) touch float
tensors only (the island steps put DEQUANTIZE / QUANTIZE at their edges). ``check_spec`` (every lowered graph, imported ones too): quantized
int8 activations, int32 biases, one grid through same-scale ops, the fixed outputs.
"""

from __future__ import annotations

import numpy as np

from qatir.errors import ExportError
from qatir.ir import Graph
from qatir.lowering.common import (
    FIXED_OUTPUT,
    INT8_OPS,
    MULTI_INPUT_SAME,
    SAME_SCALE,
    WEIGHT_OPS,
    close,
)

_AUX_INPUTS = {"GATHER": (1,)}


def _touches_int8(node) -> bool:
    return any(t is not None and t.dtype == np.int8 for t in node.inputs)


def check_int8_region(g: Graph) -> None:
    floats = set(g.metadata.get("float_islands") or ())
    leaky = [f"{n.name!r} ({n.op})" for n in g.nodes if n.name in floats and any(
        t is not None and not t.is_const and t.quant is not None for t in [*n.inputs, *n.outputs])]
    if leaky:
        raise ExportError(f"float node(s) {', '.join(leaky)} read or write a quantized tensor "
                          "(an island edge without DEQUANTIZE/QUANTIZE)")
    no_kernel = [f"{n.name!r} ({n.op})" for n in g.nodes if n.op not in INT8_OPS
                 and _touches_int8(n)]
    if no_kernel:
        raise ExportError("no int8 kernel (qatir writer + integer reference) for node(s) "
                          f"{', '.join(no_kernel)}; keep them out of the quantized region")
    bad_act = [f"{n.name!r} ({n.op}, {n.attrs['fused_activation']})" for n in g.nodes
               if n.attrs.get("fused_activation", "NONE") != "NONE"
               and (n.attrs["fused_activation"] == "TANH" or n.op == "CONCATENATION")
               and _touches_int8(n)]
    if bad_act:
        raise ExportError(f"fused activation without an int8 kernel on {', '.join(bad_act)}; "
                          "use a separate activation op")
    bad: list[str] = []
    for node in g.nodes:
        if node.name in floats:
            continue
        ins = list(node.inputs)
        if node.op == "QUANTIZE" and ins[0].dtype == np.float32:
            ins = []  # an island's exit
        if node.op in WEIGHT_OPS:
            ins = ins[:1]
        skip = _AUX_INPUTS.get(node.op, ())
        tensors = [t for i, t in enumerate(ins) if t is not None and i not in skip]
        if node.op not in ("QUANTIZE", "DEQUANTIZE"):
            tensors += list(node.outputs)
        for t in tensors:
            if t.dtype not in (np.int8, np.int16) or t.quant is None:
                bad.append(f"%{t.name} ({node.op} {node.name!r})")
    if bad:
        raise ExportError("unquantized tensor(s) inside the int8 region (add FAKE_QUANT or "
                          f"quantize the whole graph): {', '.join(dict.fromkeys(bad))}")


def check_spec(g: Graph) -> None:
    """The quantization spec's rules on a lowered graph (its own lowering keeps them; an
    imported int8 model may not)."""
    for node in g.nodes:
        ins = [t for t in node.inputs if t is not None]
        for t in [*ins, *node.outputs]:
            if t.dtype == np.int8 and t.quant is None:
                raise ExportError(f"node {node.name!r} ({node.op}): int8 tensor %{t.name} has no "
                                  "quantization parameters")
        out = node.outputs[0]
        if node.op == "QUANTIZE" and (out.dtype.kind not in "iu" or out.quant is None):
            raise ExportError(f"node {node.name!r} (QUANTIZE): output %{out.name} must be a "
                              f"quantized integer tensor, not {out.dtype}")
        if not any(t.dtype == np.int8 for t in ins):
            continue
        if node.op in WEIGHT_OPS and node.inputs[0].dtype == np.int8:
            w = node.inputs[1]
            if w is None or w.dtype != np.int8 or not w.is_const:
                raise ExportError(f"node {node.name!r} ({node.op}): the weights of an int8 node "
                                  f"must be a quantized int8 constant, not "
                                  f"{'none' if w is None else w.dtype}")
            b = node.inputs[2] if len(node.inputs) > 2 else None
            if b is not None and (b.dtype != np.int32 or b.quant is None):
                raise ExportError(f"node {node.name!r} ({node.op}): the bias %{b.name} of an int8 "
                                  f"node must be quantized int32, not {b.dtype}")
        elif node.op in SAME_SCALE and node.op not in MULTI_INPUT_SAME \
                and out.dtype == np.int8 and not close(node.inputs[0].quant, out.quant):
            raise ExportError(f"node {node.name!r} ({node.op}): input {node.inputs[0].quant} and "
                              f"output {out.quant} quantization differ; the TFLite spec requires "
                              "them equal (XNNPACK refuses the model otherwise)")
        elif node.op in FIXED_OUTPUT and out.dtype == np.int8:
            scale, zp = FIXED_OUTPUT[node.op]
            if out.quant.zero_point != (zp,) or \
                    not np.isclose(out.quant.scale[0], scale, rtol=1e-6, atol=0):
                raise ExportError(f"node {node.name!r} ({node.op}): output quantization "
                                  f"{out.quant}; the TFLite spec fixes it at scale {scale:g}, "
                                  f"zero point {zp}")
