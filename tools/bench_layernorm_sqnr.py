"""SQNR of qatir's int8 LayerNorm chain against float, on three kinds of activations.

The model is one ONNX ``LayerNormalization`` over the last axis (γ ~ 1 + 0.3·N(0, 1),
β ~ 0.5·N(0, 1)), imported by qatir as MEAN, SQUARED_DIFFERENCE, MEAN, ADD ε, RSQRT, SUB,
MUL, MUL γ, ADD β; quantized with the default table, calibrated (min/max) on
``--calib`` batches, exported int8 with float edges and run in LiteRT (BUILTIN_REF;
the integer reference predicts it bit for bit). SQNR = 10·log10(Σ y² / Σ (ŷ - y)²) over
``--eval`` fresh batches of the same distribution, where y is qatir's float output.

Activations, [1, tokens, channels]:
- ``iid``: N(0.5, 2²) for every element;
- ``channel_stats``: each channel its own mean (N(0, 1)) and scale (e^{N(0, 0.5)}), as after
  a convolution (ConvNeXt's LayerNorm input);
- ``outliers``: iid N(0, 1) plus two channels scaled by 20 (the outlier channels of
  trained transformers), which stretch the shared per-tensor grids of the chain.

Also printed: the SQNR of the int8 input itself (what any int8 consumer starts from),
and the "variance path" alone, i.e. the SQNR of the int8 RSQRT output (1/σ per
token) against float. Usage: ``python tools/bench_layernorm_sqnr.py [--calib 16] [--eval 8]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _model(tokens: int, channels: int, seed: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    gamma = (1 + 0.3 * rng.standard_normal(channels)).astype(np.float32)
    beta = (0.5 * rng.standard_normal(channels)).astype(np.float32)
    shape = [1, tokens, channels]
    node = helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1,
                            epsilon=1e-5)
    graph = helper.make_graph([node], "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(gamma, "gamma"),
                               numpy_helper.from_array(beta, "beta")])
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _sampler(kind: str, tokens: int, channels: int, seed: int):
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(channels)
    scale = np.exp(0.5 * rng.standard_normal(channels))
    boost = np.ones(channels)
    boost[rng.choice(channels, 2, replace=False)] = 20.0

    def draw(r: np.random.Generator) -> np.ndarray:
        z = r.standard_normal((1, tokens, channels))
        if kind == "iid":
            x = 0.5 + 2.0 * z
        elif kind == "channel_stats":
            x = mean + scale * z
        else:
            x = z * boost
        return x.astype(np.float32)
    return draw


def _sqnr(want: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want.astype(np.float64) ** 2)
                               / max(np.sum((got.astype(np.float64) - want) ** 2), 1e-30)))


def measure(kind: str, tokens: int, channels: int, calib: int, evals: int
            ) -> tuple[float, float, float]:
    """(SQNR of the int8 input, of the output, of the RSQRT output 1/σ) in dB."""
    import onnx

    import qatir
    from qatir.lower import lower
    from qatir.reference import run_lowered
    from tests.helpers import litert_run

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ln.onnx")
        onnx.save(_model(tokens, channels, seed=channels), path)
        g = qatir.load(path)
    draw = _sampler(kind, tokens, channels, seed=channels + 1)
    r = np.random.default_rng(0)
    q = qatir.quantize(g)
    qatir.calibrate(q, [{"x": draw(r)} for _ in range(calib)], progress=False)
    buf = qatir.to_tflite(q, io="float")
    lg = lower(q, io="int8")
    x_q = lg.inputs[0].quant
    inv = next(n for n in lg.nodes if n.op == "RSQRT").outputs[0]
    wants, gots, inv_w, inv_g, xs, xqs = [], [], [], [], [], []
    for _ in range(evals):
        x = draw(r)
        wants.append(qatir.run(g, {"x": x})["y"])
        (y,) = litert_run(buf, {"x": x}, True)[0].values()
        gots.append(y)
        var = ((x - x.mean(-1, keepdims=True)) ** 2).mean(-1)
        inv_w.append(1.0 / np.sqrt(var + 1e-5))
        xi = np.clip(np.round(x / x_q.scale[0]) + x_q.zero_point[0], -128, 127).astype(np.int8)
        xs.append(x)
        xqs.append((xi.astype(np.float32) - x_q.zero_point[0]) * x_q.scale[0])
        ints = run_lowered(lg, {lg.inputs[0].name: xi}, keep_all=True)
        inv_g.append((ints[inv.name].astype(np.float32) - inv.quant.zero_point[0])
                     * inv.quant.scale[0])
    return (_sqnr(np.concatenate(xs), np.concatenate(xqs)),
            _sqnr(np.concatenate(wants), np.concatenate(gots)),
            _sqnr(np.concatenate(inv_w).ravel(), np.concatenate(inv_g).ravel()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--eval", type=int, default=8)
    args = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}")
    print(f"# calibration {args.calib} batches, evaluation {args.eval} batches")
    print(f"{'activations':<14} {'tokens x ch':>12} {'input dB':>8} {'SQNR dB':>8} "
          f"{'1/sigma dB':>10}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind in ("iid", "channel_stats", "outliers"):
            for tokens, channels in ((16, 64), (49, 192), (196, 384)):
                x_db, out, inv = measure(kind, tokens, channels, args.calib, args.eval)
                print(f"{kind:<14} {f'{tokens}x{channels}':>12} {x_db:8.1f} {out:8.1f} "
                      f"{inv:10.1f}")


if __name__ == "__main__":
    main()
