"""Fuzz the TFLite frontend with seeded mutations of valid converter-made models.

Every case must end in success or a ``QatirError`` within a time bound; any
other exception is a crash, running past the bound is a hang. Mutations are
byte flips, truncated tails, 32-bit words overwritten with hostile values
(huge or negative sizes and offsets), and structural edits through the LiteRT
schema's object API (huge or negative dims, out-of-range tensor, buffer and
opcode indices, wrong types, broken quantization and sparsity parameters,
options with zero strides, operators reading their own outputs, unknown
operator codes).

    python tools/fuzz_tflite.py --cases 20000 --seed 1

prints the cases tried, outcomes by class, crashes (with seed and case number
to replay) and the slowest case. tests/test_fuzz_tflite.py runs a short
campaign of the same engine in CI.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import struct
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HOSTILE_WORDS = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                 0xFFFFFFFF, 0xFFFFFFFE, 0x40000000, 0x00100000)
HOSTILE_INTS = (-(2**31), -(2**20), -7, -2, -1, 0, 1, 2, 3, 255, 2**16, 2**20, 2**24, 2**31 - 1)


# ------------------------------------------------------------------ seeds
def seed_models() -> dict[str, bytes]:
    """Small converter-made models: float, fp16 weights, full int8 and sparse weights."""
    import tensorflow as tf

    layers = tf.keras.layers
    tf.keras.utils.set_random_seed(0)  # same seed models every run: cases can be replayed
    inp = tf.keras.Input((8, 8, 3), batch_size=1, name="image")
    x = layers.ZeroPadding2D(1)(inp)
    x = layers.Conv2D(8, 3, strides=2, activation="relu6")(x)
    h = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.Add()([x, h])
    a = layers.UpSampling2D(2, interpolation="bilinear")(x)
    x = layers.Concatenate()([a, layers.Conv2DTranspose(8, 3, strides=2, padding="same")(x)])
    x = layers.MaxPooling2D(2)(x)
    s = layers.Lambda(lambda t: tf.transpose(t[:, 1:, :, :], [0, 2, 1, 3]))(x)
    g = layers.Dense(4)(layers.GlobalAveragePooling2D()(x))
    f = layers.Dense(4, activation="sigmoid")(layers.Flatten()(s))
    model = tf.keras.Model(inp, layers.Softmax()(layers.Add()([f, g])))

    def convert(model: Any, mode: str) -> bytes:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if mode == "fp16":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.target_spec.supported_types = [tf.float16]
        elif mode == "int8":
            rng = np.random.default_rng(0)
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: (
                [rng.uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)] for _ in range(4))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        elif mode == "sparse":
            conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return conv.convert()

    seeds = {mode: convert(model, mode) for mode in ("float", "fp16", "int8")}
    sp_in = tf.keras.Input((4, 4, 8), batch_size=1, name="x")
    sp_model = tf.keras.Model(sp_in, layers.Dense(32)(layers.Flatten()(
        layers.Conv2D(16, 3, padding="same")(sp_in))))
    rng = np.random.default_rng(1)
    for layer in sp_model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([ws[0] * (rng.random(ws[0].shape) < 0.1)] + ws[1:])
    seeds["sparse"] = convert(sp_model, "sparse")
    return seeds


# -------------------------------------------------------------- mutations
def flip_bytes(buf: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(buf)
    n = rng.choice((1, 1, 2, 4, 8, 32))
    for _ in range(n):
        b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b), f"flip {n} bytes"


def truncate(buf: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.choice((rng.randrange(len(buf)), rng.randrange(min(64, len(buf))),
                      len(buf) - rng.randrange(1, 64)))
    cut = max(0, min(cut, len(buf) - 1))
    return buf[:cut], f"truncate to {cut}"


def hostile_word(buf: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(buf)
    pos = rng.randrange(0, max(len(b) - 4, 1)) & ~3
    word = rng.choice(HOSTILE_WORDS + (len(buf), len(buf) - pos, rng.getrandbits(32)))
    struct.pack_into("<I", b, pos, word)
    return bytes(b), f"word@{pos}={word:#x}"


def structural(buf: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Edit one field through the object API and re-serialize."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT.InitFromPackedBuf(buf, 0)
    sub = m.subgraphs[0]
    what = rng.choice(_EDITS)
    desc = what(m, sub, rng, s)
    b = flatbuffers.Builder(len(buf) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output()), f"structural: {desc}"


def _pick(rng: random.Random, seq: Any) -> Any:
    return seq[rng.randrange(len(seq))] if seq is not None and len(seq) else None


def _edit_shape(m, sub, rng, s) -> str:
    t = _pick(rng, sub.tensors)
    shape = list(t.shape if t.shape is not None else [])
    choice = rng.randrange(3)
    if choice == 0 and shape:
        shape[rng.randrange(len(shape))] = rng.choice(HOSTILE_INTS)
    elif choice == 1:
        shape.append(rng.choice((1, 2, 2**30)))
    else:
        shape = shape[:-1]
    t.shape = np.array(shape, np.int32) if shape else []
    return f"tensor shape -> {shape}"


def _edit_shape_empty_huge(m, sub, rng, s) -> str:
    """An empty tensor with a huge declared dim: sizes must not be taken from the shape."""
    t = _pick(rng, sub.tensors)
    rank = max(len(t.shape) if t.shape is not None else 0, 2)
    shape = [rng.choice((2**31 - 1, 2**24))] + [0] + [rng.choice((1, 3, 2**20))] * (rank - 2)
    rng.shuffle(shape)
    t.shape = np.array(shape, np.int32)
    return f"tensor shape -> {shape}"


def _edit_index(m, sub, rng, s) -> str:
    op = _pick(rng, sub.operators)
    field_name = rng.choice(("inputs", "outputs"))
    idx = list(getattr(op, field_name) if getattr(op, field_name) is not None else [])
    val = rng.choice((-5, -1, len(sub.tensors), len(sub.tensors) + 7, 2**31 - 1,
                      rng.randrange(len(sub.tensors))))
    if idx and rng.random() < 0.8:
        idx[rng.randrange(len(idx))] = val
    else:
        idx.append(val)
    setattr(op, field_name, idx)
    return f"op {field_name} -> {idx}"


def _edit_buffer(m, sub, rng, s) -> str:
    t = _pick(rng, sub.tensors)
    t.buffer = rng.choice((0, len(m.buffers), len(m.buffers) + 100, 2**31 - 1,
                           rng.randrange(len(m.buffers))))
    return f"tensor buffer -> {t.buffer}"


def _edit_buffer_data(m, sub, rng, s) -> str:
    with_data = [b for b in m.buffers if b.data is not None and len(b.data)]
    b = _pick(rng, with_data)
    if b is None:
        return "no data"
    data = np.asarray(b.data, np.uint8)
    b.data = data[: rng.randrange(len(data))] if rng.random() < 0.6 else np.concatenate(
        [data, np.zeros(rng.randrange(1, 9), np.uint8)])
    return f"buffer data length -> {len(b.data)}"


def _edit_type(m, sub, rng, s) -> str:
    t = _pick(rng, sub.tensors)
    t.type = rng.randrange(0, 21)
    return f"tensor type -> {t.type}"


def _edit_opcode(m, sub, rng, s) -> str:
    if rng.random() < 0.5:
        op = _pick(rng, sub.operators)
        op.opcodeIndex = rng.choice((len(m.operatorCodes), 2**31 - 1, 0))
        return f"opcode index -> {op.opcodeIndex}"
    oc = _pick(rng, m.operatorCodes)
    code = rng.randrange(0, 220)
    oc.builtinCode, oc.deprecatedBuiltinCode = code, min(code, 127)
    return f"builtin code -> {code}"


def _edit_quant(m, sub, rng, s) -> str:
    quantized = [t for t in sub.tensors if t.quantization is not None and t.quantization.scale is not None]
    t = _pick(rng, quantized)
    if t is None:
        return "no quant"
    q = t.quantization
    choice = rng.randrange(4)
    if choice == 0:
        q.scale = list(q.scale) + [0.5]
    elif choice == 1:
        q.quantizedDimension = rng.choice((-1, 5, 2**20))
    elif choice == 2:
        q.scale = [float("nan")] * len(q.scale)
    else:
        q.zeroPoint = [rng.choice((-(2**40), 300, -129))] * len(q.scale)
    return f"quant edit {choice}"


def _edit_options(m, sub, rng, s) -> str:
    op = _pick(rng, sub.operators)
    o = op.builtinOptions
    if o is None or rng.random() < 0.2:
        op.builtinOptionsType = rng.randrange(0, 130)
        return f"options type -> {op.builtinOptionsType}"
    ints = [k for k, v in vars(o).items() if isinstance(v, (int, bool))]
    if not ints:
        return "no int options"
    k = rng.choice(ints)
    setattr(o, k, rng.choice((0, -1, 2**20, 2**31 - 1, 7)))
    return f"options {k} -> {getattr(o, k)}"


def _edit_graph_io(m, sub, rng, s) -> str:
    field_name = rng.choice(("inputs", "outputs"))
    setattr(sub, field_name, [rng.choice((-1, len(sub.tensors), rng.randrange(len(sub.tensors))))])
    return f"subgraph {field_name} -> {getattr(sub, field_name)}"


def _edit_op_order(m, sub, rng, s) -> str:
    ops = list(sub.operators)
    if rng.random() < 0.5 and len(ops) > 1:
        i, j = rng.randrange(len(ops)), rng.randrange(len(ops))
        ops[i], ops[j] = ops[j], ops[i]
        sub.operators = ops
        return f"swap ops {i} {j}"
    op = _pick(rng, ops)
    if op.outputs is not None and len(op.outputs) and op.inputs is not None and len(op.inputs):
        op.inputs = [int(op.outputs[0])] + list(op.inputs)[1:]  # reads its own output: a cycle
    return "op reads its own output"


def _edit_sparsity(m, sub, rng, s) -> str:
    sparse = [t for t in sub.tensors if t.sparsity is not None]
    t = _pick(rng, sparse)
    if t is None:
        return _edit_shape(m, sub, rng, s)
    sp = t.sparsity
    dm = _pick(rng, sp.dimMetadata)
    choice = rng.randrange(4)
    if choice == 0:
        dm.denseSize = rng.choice((0, -1, 2**20, 2**31 - 1))
    elif choice == 1 and dm.arraySegments is not None:
        vals = list(dm.arraySegments.values)
        if vals:
            vals[rng.randrange(len(vals))] = rng.choice((-1, 2**16 - 1, 2**31 - 1, 10**6))
        dm.arraySegments.values = vals
    elif choice == 2 and dm.arrayIndices is not None:
        vals = list(dm.arrayIndices.values)
        if vals:
            vals[rng.randrange(len(vals))] = rng.choice((-1, 255, 2**16 - 1, 10**6))
        dm.arrayIndices.values = vals
    else:
        sp.traversalOrder = list(reversed(list(sp.traversalOrder))) + [rng.randrange(5)]
    return f"sparsity edit {choice}"


_EDITS: list[Callable[..., str]] = [
    _edit_shape, _edit_shape, _edit_shape_empty_huge, _edit_index, _edit_index, _edit_buffer, _edit_buffer_data,
    _edit_type, _edit_opcode, _edit_quant, _edit_options, _edit_options, _edit_graph_io,
    _edit_op_order, _edit_sparsity, _edit_sparsity,
]
MUTATORS = [(flip_bytes, 0.35), (truncate, 0.1), (hostile_word, 0.2), (structural, 0.35)]


def mutate(buf: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One to three mutations; a structural edit that cannot be packed falls back to a flip."""
    out, descs = buf, []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        r = rng.random()
        for fn, p in MUTATORS:
            if r < p or fn is MUTATORS[-1][0]:
                break
            r -= p
        try:
            out, d = fn(out, rng)
        except Exception:  # noqa: BLE001 - the mutator's own failure, not the frontend's
            out, d = flip_bytes(out, rng)
        descs.append(d)
        if len(out) == 0:
            break
    return out, "; ".join(descs)


# --------------------------------------------------------------- running
class _Timeout(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


@dataclass
class Outcome:
    kind: str          # "ok", a QatirError subclass name, "CRASH <type>" or "HANG"
    seconds: float
    message: str = ""


def run_case(buf: bytes, name: str, time_limit: float) -> Outcome:
    """Import ``buf``; classify the result."""
    from qatir.errors import QatirError
    from qatir.frontends.tflite import load_tflite_bytes

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = load_tflite_bytes(buf, name)
            str(g)
        kind, msg = "ok", ""
    except _Timeout:
        kind, msg = "HANG", f"ran past {time_limit} s"
    except QatirError as e:
        kind, msg = type(e).__name__, str(e)
    except Exception as e:  # noqa: BLE001 - a crash is exactly what we look for
        kind, msg = f"CRASH {type(e).__name__}", traceback.format_exc(limit=-4)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return Outcome(kind, time.perf_counter() - t0, msg)


@dataclass
class Report:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    failures: list[tuple[int, str, str, Outcome]] = field(default_factory=list)
    slowest: tuple[float, int, str] = (0.0, -1, "")
    seconds: float = 0.0


def campaign(seeds: dict[str, bytes], cases: int, seed: int, time_limit: float = 5.0,
             budget_s: float | None = None) -> Report:
    """Run ``cases`` mutated imports (fewer if ``budget_s`` runs out); deterministic per seed."""
    rep = Report()
    names = sorted(seeds)
    t0 = time.perf_counter()
    for i in range(cases):
        rng = random.Random(seed * 1_000_003 + i)
        base = names[i % len(names)]
        buf, desc = mutate(seeds[base], rng)
        out = run_case(buf, f"fuzz-{seed}-{i}.tflite", time_limit)
        rep.cases += 1
        rep.outcomes[out.kind] += 1
        if out.kind.startswith(("CRASH", "HANG")):
            rep.failures.append((i, base, desc, out))
        if out.seconds > rep.slowest[0]:
            rep.slowest = (out.seconds, i, f"{base}: {desc}")
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
    rep.seconds = time.perf_counter() - t0
    return rep


def print_report(rep: Report) -> None:
    print(f"cases tried: {rep.cases} in {rep.seconds:.1f} s")
    print("outcomes by class:")
    for kind, n in rep.outcomes.most_common():
        print(f"  {kind:28s} {n}")
    s, i, desc = rep.slowest
    print(f"slowest case: #{i} {s * 1000:.1f} ms ({desc})")
    print(f"peak resident memory of the process: {_peak_rss_mib():.0f} MiB")
    print(f"crashes/hangs: {len(rep.failures)}")
    for i, base, desc, out in rep.failures[:20]:
        print(f"--- case #{i} seed model {base}: {desc}\n{out.kind}: {out.message}")


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=5.0, help="seconds allowed per case")
    args = ap.parse_args(argv)
    seeds = seed_models()
    print("seed models: " + ", ".join(f"{k} ({len(v)} bytes)" for k, v in sorted(seeds.items())))
    for name, buf in sorted(seeds.items()):
        out = run_case(buf, name, args.time_limit)
        if out.kind != "ok":
            print(f"seed {name} does not import: {out.kind}: {out.message}")
            return 1
    rep = campaign(seeds, args.cases, args.seed, args.time_limit)
    print_report(rep)
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
