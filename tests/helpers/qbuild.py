"""Hand-built quantized graphs for the lowering/writer/reference tests.

Follows the FAKE_QUANT conventions of ``qatir/quant.py``: activations get an
asymmetric per-tensor FAKE_QUANT, weights a symmetric narrow-range one
(per-channel on the axis TFLite wants), biases stay float.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from qatir.ir import Graph, Tensor  # noqa: E402
from qatir.lowering import WEIGHT_OPS as WEIGHT_AXIS  # noqa: E402  (op -> TFLite weight axis)
from qatir.ops import get_op  # noqa: E402


class QB:
    """A tiny builder: ``x = qb.input(...); y = qb.op("ADD", [x, z], rng=(-2, 2))``."""

    def __init__(self, seed: int = 0, name: str = "main"):
        self.g = Graph(name)
        self.rng = np.random.default_rng(seed)

    def fq(self, t: Tensor, lo: Any, hi: Any, *, bits: int = 8, narrow: bool = False,
           axis: int | None = None, kind: str = "activation",
           shared: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if shared is None:
            mn = self.g.const(np.asarray(lo, np.float32), name=f"{t.name}_min")
            mx = self.g.const(np.asarray(hi, np.float32), name=f"{t.name}_max")
        else:
            mn, mx = shared
        attrs = {"bits": bits, "narrow_range": narrow, "axis": axis, "kind": kind,
                 "symmetric": kind == "weight"}
        return self.g.add_node("FAKE_QUANT", [t, mn, mx], attrs, name=f"{t.name}_fq",
                               outputs=[f"{t.name}_q"]).output

    def input(self, name: str, shape: Sequence[int | None], lo: float, hi: float) -> Tensor:
        return self.fq(self.g.add_input(name, shape), lo, hi)

    def weight(self, data: np.ndarray, axis: int | None, name: str = "w", bits: int = 8) -> Tensor:
        w = self.g.const(data.astype(np.float32), name=name)
        if axis is None:
            m = np.float32(np.max(np.abs(data)))
        else:
            red = tuple(i for i in range(data.ndim) if i != axis)
            m = np.max(np.abs(data), axis=red).astype(np.float32)
        return self.fq(w, -m, m, bits=bits, narrow=True, axis=axis, kind="weight")

    def op(self, op: str, inputs: Sequence[Tensor | None], attrs: dict | None = None,
           rng: tuple[float, float] | None = None, name: str | None = None) -> Tensor:
        y = self.g.add_node(op, inputs, attrs, name=name).output
        return y if rng is None else self.fq(y, *rng)

    def conv(self, op: str, x: Tensor, w_shape: Sequence[int], attrs: dict | None,
             rng: tuple[float, float], bias: bool = True, wscale: float = 0.3,
             per_channel: bool = True) -> Tensor:
        """A weight op on ``x``; weights per-channel on TFLite's axis, or per-tensor."""
        w = self.rng.normal(0, wscale, size=w_shape).astype(np.float32)
        out_ch = w_shape[get_op(op).channel_axis]
        wq = self.weight(w, WEIGHT_AXIS[op] if per_channel else None, name=f"{op.lower()}_w")
        ins = [x, wq]
        if bias:
            ins.append(self.g.const(self.rng.normal(0, 0.5, out_ch).astype(np.float32),
                                    name=f"{op.lower()}_b"))
        return self.op(op, ins, attrs, rng)

    def output(self, *ts: Tensor) -> Graph:
        self.g.outputs = list(ts)
        self.g.verify()
        return self.g


def int8_feed(g: Graph, seed: int = 1) -> dict[str, np.ndarray]:
    """Random int8 inputs for every graph input (shapes with None -> 1)."""
    rng = np.random.default_rng(seed)
    return {t.name: rng.integers(-128, 128, size=[d or 1 for d in t.shape]).astype(np.int8)
            for t in g.inputs}


def litert_run(buf: bytes, feeds: dict[str, np.ndarray], ref: bool,
               preserve: bool = False) -> tuple[dict[str, np.ndarray], Any]:
    """Run a flatbuffer in LiteRT (BUILTIN_REF or the default XNNPACK resolver), 1 thread."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = OpResolverType.BUILTIN_REF if ref else OpResolverType.AUTO
    it = Interpreter(model_content=buf, experimental_op_resolver_type=kind, num_threads=1,
                     experimental_preserve_all_tensors=preserve)
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], feeds[d["name"]])
    it.invoke()
    return {d["name"]: it.get_tensor(d["index"]) for d in it.get_output_details()}, it


def worst_lsb(buf: bytes, feeds: Sequence[dict[str, np.ndarray]], want) -> dict[str, float]:
    """Max |LiteRT - ``want(feed, mode)``| per mode ("reference": BUILTIN_REF, "xnnpack":
    the default resolver) over ``feeds``, output by output (0 means bit exact)."""
    worst = {"reference": 0, "xnnpack": 0}
    for feed in feeds:
        for mode, ref in (("reference", True), ("xnnpack", False)):
            got, _ = litert_run(buf, feed, ref)
            for name, arr in want(feed, mode).items():
                d = np.abs(got[name].astype(np.float64) - arr.astype(np.float64)).max()
                worst[mode] = max(worst[mode], float(d))
    return worst


def compare_all(g: Graph, seeds: Sequence[int] = (1, 2, 3)) -> dict[str, int]:
    """Max |LiteRT - reference| per mode over a few random feeds (0 means bit exact)."""
    from qatir.reference import run_reference
    from qatir.tflite_writer import to_tflite

    worst = worst_lsb(to_tflite(g, io="int8"), [int8_feed(g, seed) for seed in seeds],
                      lambda feed, mode: run_reference(g, feed, kernels=mode))
    return {mode: int(d) for mode, d in worst.items()}


def file_ops(buf: bytes, inputs_only: bool = False
             ) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """A flatbuffer's operators as (name, version) in order, and its tensors' types by
    name (only the subgraph's inputs with ``inputs_only``)."""
    from ai_edge_litert import schema_py_generated as S

    m = S.ModelT.InitFromPackedBuf(buf, 0)
    names = {v: k for k, v in vars(S.BuiltinOperator).items() if not k.startswith("_")}
    codes = [(names[max(c.builtinCode, c.deprecatedBuiltinCode)], c.version)
             for c in m.operatorCodes]
    types = {v: k for k, v in vars(S.TensorType).items() if not k.startswith("_")}
    sg = m.subgraphs[0]
    which = sg.inputs if inputs_only else range(len(sg.tensors))
    return ([codes[op.opcodeIndex] for op in sg.operators],
            {sg.tensors[i].name.decode(): types[sg.tensors[i].type] for i in which})


def assert_int8_file_matches_reference(path, g: Graph, rng: np.random.Generator,
                                       shape: Sequence[int], draws: int = 2) -> None:
    """An int8 TFLite file (one int8 input ``x``, one output) that qatir imported as ``g``:
    LiteRT's output equals ``run_reference(g)`` bit for bit on both resolvers, for
    ``draws`` random int8 inputs of ``shape``."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from qatir.reference import run_reference

    for _ in range(draws):
        x8 = rng.integers(-128, 128, tuple(shape)).astype(np.int8)
        for mode, kind in (("reference", OpResolverType.BUILTIN_REF),
                           ("xnnpack", OpResolverType.AUTO)):
            it = Interpreter(model_path=str(path), experimental_op_resolver_type=kind,
                             num_threads=1)
            (got,) = it.get_signature_runner()(x=x8).values()
            (want,) = run_reference(g, {g.inputs[0].name: x8}, kernels=mode).values()
            np.testing.assert_array_equal(got, want, err_msg=mode)
