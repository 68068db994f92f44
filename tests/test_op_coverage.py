"""Every registered op has what its facts promise, or a stated reason why not.

Walks ``all_ops()``: a TF kernel (execution, calibration, QAT), an integer reference
kernel and a TFLite emitter for every op with an int8 kernel, a minimum-runtime entry
for every (builtin, version) the emitters can produce, a TFLite frontend converter for every
builtin the writer emits, and a bit-exact LiteRT case (``CASES`` in tests/helpers/cases.py, run
by tests/test_reference.py) for every int8 op. A missing piece is a failure naming the op.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from qatir.lowering import lower
from qatir.ops import all_ops, ops_where
from qatir.reference import kernels as reference_kernels
from qatir.target import RUNTIME_VERSION
from qatir.tf.kernels import has_kernel
from qatir.tflite_writer_ops import EMITTERS, VERSIONS
from tests.helpers.cases import CASES, RANDOM_CASES
from tests.helpers.qbuild import QB

EXPORTED = sorted(n for n, d in all_ops().items() if not d.ir_only)

#: ops without an int8 export, and why (all are float-only in qatir's writer/reference).
NO_INT8 = {
    "ABS": "no int8 reference kernel yet (LiteRT has one); exported in float only",
    "CAST": "frontend plumbing; folded or kept float, never emitted",
    "DIV": "LiteRT has no int8 DIV kernel",
    "EXP": "no int8 reference kernel yet; exported in float only",
    "IDENTITY": "removed by the remove_identities pass before export",
    "LOG_SOFTMAX": "no int8 reference kernel yet (LiteRT's is fixed point, output (16/256, 127)); "
                   "a float island in int8 graphs",
    "LOCAL_RESPONSE_NORMALIZATION": "LiteRT's kernel is float32 only (local_response_norm.cc)",
    "NEG": "no int8 reference kernel yet; exported in float only",
    "POW": "LiteRT's kernel is float32/int32 only (pow.cc)",
    "RELU_0_TO_1": "no int8 reference kernel yet; exported in float only",
    "SHAPE": "folded to a constant by the frontends; never emitted",
    "SQRT": "LiteRT has no int8 SQRT kernel",
}
#: ops that are never emitted, so need no emitter.
NOT_EMITTED = {"CAST", "IDENTITY", "SHAPE"}
#: int8 ops without a bit-exact case, and why.
NO_BIT_EXACT_CASE = {
    "DEQUANTIZE": "only at io='float' output edges, which the integer reference (int8 edges) "
                  "does not run; the float edges are checked in tests/test_writer.py",
    "SQUEEZE": "an int8 SQUEEZE is written as RESHAPE (lowering step xnn_forms, form "
               "squeeze_as_reshape: XNNPACK has no SQUEEZE), tests/test_xnn_forms.py",
}
#: ops with no TF kernel, and why.
NO_TF_KERNEL: dict[str, str] = {}


@pytest.mark.parametrize("op", EXPORTED)
def test_every_op_has_a_tf_kernel(op):
    assert has_kernel(op) or op in NO_TF_KERNEL, f"{op}: no TF kernel (qatir/tf/kernels.py)"


@pytest.mark.parametrize("op", EXPORTED)
def test_every_op_has_an_emitter_or_a_reason(op):
    assert op in EMITTERS or op in NOT_EMITTED, f"{op}: no TFLite emitter"
    assert not (op in EMITTERS and op in NOT_EMITTED), f"{op}: listed as never emitted"


@pytest.mark.parametrize("op", EXPORTED)
def test_int8_ops_have_reference_kernels_others_a_reason(op):
    d = all_ops()[op]
    if d.int8:
        assert op in reference_kernels(), f"{op}: int8=True but no integer reference kernel"
        assert op in EMITTERS, f"{op}: int8=True but no TFLite emitter"
        assert op not in NO_INT8, f"{op}: int8=True yet listed in NO_INT8"
    else:
        assert op in NO_INT8, f"{op}: no int8 kernel and no stated reason (add one to NO_INT8)"


def test_every_emittable_version_has_a_runtime_version():
    missing = [(code, v) for code, vs in VERSIONS.items() for v in vs
               if (code, v) not in RUNTIME_VERSION]
    assert not missing, f"no runtime_version.cc entry for {missing}"
    codes = {code for code in VERSIONS}
    assert set(EMITTERS) <= codes | {"PAD"}, sorted(set(EMITTERS) - codes)


def _ops_in(case) -> set[str]:
    qb = QB(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = qb.output(case(qb))
        return {n.op for n in lower(g).nodes}


def test_every_int8_op_has_a_bit_exact_case():
    covered: set[str] = set()
    for case in CASES.values():
        covered |= _ops_in(case)
    for case in RANDOM_CASES.values():
        covered |= _ops_in(lambda qb, c=case: c(qb, np.random.default_rng(100)))
    missing = sorted(ops_where(int8=True) - covered - set(NO_BIT_EXACT_CASE))
    assert not missing, f"int8 ops without a bit-exact case in tests/helpers/cases.py: {missing}"


def test_every_emitted_builtin_reads_back():
    """What the writer emits, the TFLite frontend imports (qatir.load of qatir's own files)."""
    from qatir.frontends import tflite  # noqa: F401  (registers the shape-op converters too)
    from qatir.frontends.tflite_ops import CONVERTERS

    missing = sorted(set(VERSIONS) - set(CONVERTERS))
    assert not missing, f"builtins without a TFLite frontend converter: {missing}"


def test_facts_are_consistent():
    for name, d in all_ops().items():
        if d.weight is not None:
            assert d.channel_axis is not None and d.bias is not None, name
        if d.quant == "fixed":
            assert d.fixed_output is not None, name
        if d.int16:
            assert d.int8 or name in ("EXP", "SQRT", "RSQRT", "BATCH_MATMUL"), name


def test_fact_queries_and_their_errors():
    from qatir.errors import QatirError
    from qatir.ops import fact_map, register_op
    from qatir.ops.infer import same

    assert fact_map("channel_axis") == {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3,
                                        "FULLY_CONNECTED": 0, "TRANSPOSE_CONV": 0}
    assert {"RESHAPE", "CONCATENATION", "MAX_POOL_2D"} <= ops_where(quant="same_scale")
    assert ops_where(quant="fixed") == {"LOGISTIC", "SOFTMAX", "TANH"}
    with pytest.raises(QatirError, match="unknown op fact"):
        ops_where(colour="red")
    with pytest.raises(QatirError, match="unknown fact"):
        register_op("FACT_TEST_OP", same, colour="red", replace=True)
    with pytest.raises(QatirError, match="fixed_output is set exactly when"):
        register_op("FACT_TEST_OP", same, quant="fixed", replace=True)
    with pytest.raises(QatirError, match="weight slot needs its channel_axis"):
        register_op("FACT_TEST_OP", same, weight=1, replace=True)
    assert "FACT_TEST_OP" not in all_ops()
