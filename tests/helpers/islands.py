"""Float-island checks shared by the tests: export an int8 graph that keeps some nodes
float and compare LiteRT (both resolvers) with ``run_reference`` on every tensor both
have: int8 tensors bit for bit, float tensors within ``reference_float.close``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

import qatir
from qatir.ir import Graph
from qatir.reference import run_reference
from qatir.reference_float import close
from qatir.tflite_writer import FloatIslandWarning
from tests.helpers.qbuild import int8_feed, litert_run


def export_quiet(q: Graph, **kw) -> bytes:
    """``qatir.to_tflite`` without the float-island warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FloatIslandWarning)
        return qatir.to_tflite(q, **kw)


def compare_islands(q: Graph, seeds: Sequence[int] = (1, 2, 3)) -> dict[str, int]:
    """LiteRT vs reference on every tensor both have; returns counts of compared tensors
    (``{"int8": n, "float": m}``). Fails on the first tensor that differs."""
    buf = export_quiet(q)
    seen = {"int8": 0, "float": 0}
    for seed in seeds:
        feeds = int8_feed(q, seed)
        for mode, ref in (("reference", True), ("xnnpack", False)):
            outs, it = litert_run(buf, feeds, ref, preserve=ref)
            want = run_reference(q, feeds, kernels=mode, keep_all=ref)
            got = dict(outs)
            if ref:
                got.update({d["name"]: it.get_tensor(d["index"]) for d in it.get_tensor_details()
                            if d["name"] in want})
            for name, arr in want.items():
                if name not in got:
                    continue
                have = got[name]
                assert have.dtype == arr.dtype, (name, have.dtype, arr.dtype)
                if arr.dtype == np.float32:
                    assert close(have, arr), (mode, seed, name, np.abs(have - arr).max())
                    seen["float"] += 1
                else:
                    assert np.array_equal(have, arr), (mode, seed, name)
                    seen["int8"] += 1
    return seen


def op_names(buf: bytes) -> list[str]:
    """The builtin op names of a TFLite flatbuffer, in execution order."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=buf, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    return [o["op_name"] for o in it._get_ops_details()]
