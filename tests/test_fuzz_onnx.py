"""Fuzzing the ONNX frontend: mutated and truncated models end in success or a QatirError.

A seeded RNG mutates valid models both as bytes (flips, cut tails, splices) and as
parsed ModelProto fields (huge declared dims, out-of-range indices and axes,
duplicate names, missing initializers, cycles, swapped ops, wrong attribute
types, tampered dtypes and opsets). ``tools/fuzz_onnx.py`` runs a longer campaign
with the same engine.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from qatir.errors import QatirError

SUPPORTED_OPS = ["Conv", "Relu", "Add", "Mul", "Concat", "Reshape", "Gemm", "MaxPool",
                 "AveragePool", "GlobalAveragePool", "Softmax", "Transpose", "Slice", "Gather",
                 "Squeeze", "Unsqueeze", "Flatten", "Pad", "Resize", "BatchNormalization",
                 "ConvTranspose", "Clip", "Shape", "ConstantOfShape", "Cast", "MatMul",
                 "ReduceMean", "Identity", "HardSigmoid", "Sub", "Div", "Sum", "PRelu"]
BIG = [-(1 << 62), -1000, -5, -1, 0, 1, 2, 3, 7, 1 << 20, 1 << 31, 1 << 40, (1 << 63) - 1]


def seed_models() -> list[onnx.ModelProto]:
    """Small valid models covering the converters (kept small so each case is fast)."""
    from tests.helpers.onnx_models import (
        OnnxBuilder,
        digits_cnn_onnx,
        inception_like,
        mobilenet_like,
        resnet_like,
        single_op_model,
    )

    seeds = [digits_cnn_onnx(), resnet_like(size=16), mobilenet_like(size=16),
             inception_like(size=12)]
    b = OnnxBuilder(13, name="zoo")
    x = b.input("x", ["N", 4, 6, 6])
    y = b.node("Resize", [x, "", b.init(np.asarray([1, 1, 2, 2], np.float32))], mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    y = b.node("Pad", [y, b.ints([0, 0, 1, 1, 0, 0, 1, 1])])
    y = b.node("ConvTranspose", [y, b.init(b.randn(4, 2, 3, 3))], kernel_shape=[3, 3],
               strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    y = b.node("Slice", [y, b.ints([1]), b.ints([-1]), b.ints([3]), b.ints([2])])
    y = b.node("Transpose", [y], perm=[0, 2, 3, 1])
    y = b.node("Softmax", [y], axis=-1)
    y = b.node("ReduceMean", [y], axes=[1], keepdims=0)
    g = b.node("Gather", [y, b.init(np.asarray([0, 2], np.int64))], axis=1)
    b.node("Flatten", [g], out="out")
    b.output("out")
    seeds.append(b.model())
    seeds.append(single_op_model("MatMul", [[2, 3, 4], [2, 4, 5]]))
    seeds.append(single_op_model("Conv", [[1, 4, 9]], [np.ones((4, 2, 3), np.float32)],
                                 kernel_shape=[3], group=2, pads=[1, 1]))
    return seeds


# ------------------------------------------------------------------ mutators
def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))] if len(seq) else None


def _names(m):
    names = [i.name for i in m.graph.input] + [t.name for t in m.graph.initializer]
    return names + [o for n in m.graph.node for o in n.output]


def m_huge_input_dim(rng, m):
    vi = _pick(rng, m.graph.input)
    dims = vi.type.tensor_type.shape.dim if vi is not None else []
    if len(dims):
        _pick(rng, dims).dim_value = int(_pick(rng, BIG))


def m_init_dims(rng, m):
    t = _pick(rng, m.graph.initializer)
    if t is None:
        return
    if len(t.dims) and rng.random() < 0.7:
        t.dims[int(rng.integers(len(t.dims)))] = int(_pick(rng, BIG))
    else:
        t.dims.append(int(rng.integers(1, 4)))


def m_int_attr(rng, m):
    node = _pick(rng, m.graph.node)
    attrs = [a for a in node.attribute if a.type in (onnx.AttributeProto.INT,
                                                     onnx.AttributeProto.INTS)] if node else []
    a = _pick(rng, attrs)
    if a is None:
        return
    if a.type == onnx.AttributeProto.INT:
        a.i = int(_pick(rng, BIG))
    elif len(a.ints) and rng.random() < 0.8:
        a.ints[int(rng.integers(len(a.ints)))] = int(_pick(rng, BIG))
    else:
        a.ints.append(int(_pick(rng, BIG)))


def m_int_const(rng, m):
    ints = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT64]
    t = _pick(rng, ints)
    if t is None:
        return
    arr = onnx.numpy_helper.to_array(t).copy().reshape(-1)
    if arr.size:
        arr[int(rng.integers(arr.size))] = _pick(rng, BIG)
    t.CopyFrom(onnx.numpy_helper.from_array(arr.reshape(tuple(t.dims)), t.name))


def m_duplicate_name(rng, m):
    node = _pick(rng, m.graph.node)
    names = _names(m)
    if node is not None and len(node.output) and names:
        node.output[0] = _pick(rng, names)


def m_missing_init(rng, m):
    if len(m.graph.initializer):
        del m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]


def m_cycle(rng, m):
    nodes = m.graph.node
    if len(nodes) < 2:
        return
    i = int(rng.integers(len(nodes) - 1))
    j = int(rng.integers(i, len(nodes)))
    if len(nodes[i].input) and len(nodes[j].output):
        nodes[i].input[int(rng.integers(len(nodes[i].input)))] = nodes[j].output[0]


def m_op_swap(rng, m):
    node = _pick(rng, m.graph.node)
    if node is not None:
        node.op_type = _pick(rng, SUPPORTED_OPS)


def m_inputs(rng, m):
    node = _pick(rng, m.graph.node)
    if node is None:
        return
    if len(node.input) and rng.random() < 0.5:
        del node.input[int(rng.integers(len(node.input)))]
    else:
        node.input.append(_pick(rng, _names(m) + [""]))


def m_dtype(rng, m):
    t = _pick(rng, m.graph.initializer)
    if t is not None:
        t.data_type = int(rng.integers(0, 17))


def m_opset(rng, m):
    m.opset_import[0].version = int(rng.integers(1, 26))


def m_outputs(rng, m):
    outs = m.graph.output
    r = rng.random()
    if r < 0.3 and len(outs):
        outs[0].name = _pick(rng, _names(m) + ["nowhere"])
    elif r < 0.6:
        outs.add().CopyFrom(outs[0] if len(outs) else onnx.ValueInfoProto(name="x"))
    elif len(outs):
        del outs[0]


def m_attr_type(rng, m):
    node = _pick(rng, m.graph.node)
    a = _pick(rng, node.attribute) if node is not None else None
    if a is not None:
        a.type = int(rng.integers(0, 14))


def m_drop_attr(rng, m):
    node = _pick(rng, m.graph.node)
    if node is not None and len(node.attribute):
        del node.attribute[int(rng.integers(len(node.attribute)))]


def m_float_values(rng, m):
    floats = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    t = _pick(rng, floats)
    if t is None:
        return
    arr = onnx.numpy_helper.to_array(t).copy().reshape(-1)
    if arr.size:
        arr[int(rng.integers(arr.size))] = _pick(rng, [np.nan, np.inf, -np.inf, 1e38, 0.0])
    t.CopyFrom(onnx.numpy_helper.from_array(arr.reshape(tuple(t.dims)), t.name))


PROTO_MUTATORS: list[Callable] = [m_huge_input_dim, m_init_dims, m_int_attr, m_int_const,
                                  m_duplicate_name, m_missing_init, m_cycle, m_op_swap, m_inputs,
                                  m_dtype, m_opset, m_outputs, m_attr_type, m_drop_attr,
                                  m_float_values]


def b_flip(rng, data: bytes) -> bytes:
    arr = bytearray(data)
    for _ in range(int(rng.integers(1, 12))):
        if arr:
            arr[int(rng.integers(len(arr)))] = int(rng.integers(256))
    return bytes(arr)


def b_truncate(rng, data: bytes) -> bytes:
    return data[: int(rng.integers(len(data) + 1))]


def b_splice(rng, data: bytes) -> bytes:
    i = int(rng.integers(len(data) + 1))
    if rng.random() < 0.5:
        return data[:i] + rng.bytes(int(rng.integers(1, 64))) + data[i:]
    j = int(rng.integers(i, len(data) + 1))
    return data[:i] + data[i:j] * 2 + data[j:]


BYTE_MUTATORS: list[Callable] = [b_flip, b_truncate, b_splice]


def mutate(rng: np.random.Generator, seeds: list[onnx.ModelProto]) -> tuple[bytes, str]:
    """One fuzz case: serialized bytes and a short description of the mutations applied."""
    m = onnx.ModelProto()
    m.CopyFrom(_pick(rng, seeds))
    done = []
    for _ in range(int(rng.integers(1, 4))):
        fn = _pick(rng, PROTO_MUTATORS)
        try:
            fn(rng, m)
        except (ValueError, TypeError, IndexError):  # an earlier mutation left nothing to edit
            continue
        done.append(fn.__name__)
    try:
        data = m.SerializeToString()
    except (ValueError, TypeError) as e:  # a mutation protobuf itself refuses
        return b"", f"{'+'.join(done)} (unserializable: {e})"
    if rng.random() < 0.35:
        fn = _pick(rng, BYTE_MUTATORS)
        data = fn(rng, data)
        done.append(fn.__name__)
    return data, "+".join(done)


@dataclass
class Campaign:
    """Outcomes of a fuzz run: counts per class, crashes with tracebacks, the slowest case."""

    outcomes: Counter = field(default_factory=Counter)
    crashes: list[tuple[str, str]] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")
    cases: int = 0


def run_campaign(n: int, seed: int = 0, time_limit: float | None = None) -> Campaign:
    """Import ``n`` mutated models (or until ``time_limit`` seconds pass)."""
    import qatir

    rng = np.random.default_rng(seed)
    seeds = seed_models()
    result = Campaign()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "case.onnx")
        for _ in range(n):
            if time_limit is not None and time.perf_counter() - start > time_limit:
                break
            data, desc = mutate(rng, seeds)
            with open(path, "wb") as f:
                f.write(data)
            t0 = time.perf_counter()
            try:
                qatir.load(path)
                outcome = "ok"
            except QatirError as e:
                outcome = type(e).__name__
            except Exception as e:  # noqa: BLE001 - a crash is what the campaign looks for
                outcome = f"CRASH {type(e).__name__}"
                result.crashes.append((desc, traceback.format_exc()))
            dt = time.perf_counter() - t0
            if dt > result.slowest[0]:
                result.slowest = (dt, desc)
            result.outcomes[outcome] += 1
            result.cases += 1
    return result


def test_fuzzed_onnx_models_fail_cleanly():
    res = run_campaign(2000, seed=20261123)
    assert res.cases == 2000
    crash_report = "\n\n".join(f"{desc}\n{tb}" for desc, tb in res.crashes[:3])
    assert not res.crashes, f"{len(res.crashes)} crashes, e.g.:\n{crash_report}"
    assert res.slowest[0] < 5.0, f"slowest case {res.slowest}"
    assert res.outcomes["ok"] > 0 and len(res.outcomes) > 2, res.outcomes


def test_every_mutator_produces_clean_outcomes():
    import qatir

    seeds = seed_models()
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        for fn in PROTO_MUTATORS:
            for _ in range(5):
                m = onnx.ModelProto()
                m.CopyFrom(_pick(rng, seeds))
                fn(rng, m)
                with open(path, "wb") as f:
                    f.write(m.SerializeToString())
                try:
                    qatir.load(path)
                except QatirError as e:
                    assert "m.onnx" in str(e), f"{fn.__name__}: message lacks the file: {e}"
