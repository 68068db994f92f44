"""Quantizer ``auto`` with a candidate that needs whole activations (``percentile``) next
to one that needs only min/max (``minmax``): each gets what it reads."""

from __future__ import annotations

import qatir
from qatir.quantizers import get_quantizer
from tests.test_auto_range import auto_table, batches, conv_net


def test_minmax_and_percentile_candidates_each_get_their_statistics():
    # the spike is in batch 2 (even): ranges from the even batches hold it for minmax, not
    # for percentile; the odd batches score it
    data = batches([1.0] * 8, spike={2: 200.0})
    q = qatir.quantize(conv_net(), table=auto_table())
    qatir.calibrate(q, data, progress=False,
                    quantizer_options={"auto": {"candidates": ["minmax", "percentile"],
                                                "folds": 1, "refine": 0},
                                       "percentile": {"percentile": 99.0}})
    err = q.metadata["auto_range_errors"]
    assert set(err) == {"minmax", "percentile"} and err["percentile"] < err["minmax"] / 4
    assert set(q.metadata["auto_ranges"].values()) == {"percentile"}
    fq = q.tensors["x"].users[0]
    # the chosen rule's range from all batches: the 99th percentile, far below the spike
    assert 2.0 < float(fq.inputs[2].data.max()) < 50.0
    assert get_quantizer("percentile").needs_rows() and not get_quantizer("minmax").needs_rows()
