"""MediaPipe's custom TFLite operators that have a builtin equivalent.

``Convolution2DTransposeBias`` (MediaPipe's ``transpose_conv_bias``; the selfie
segmentation model's last layer) is TRANSPOSE_CONV with a bias input: inputs
``(x, w OHWI, b)``, the output size implied by padding and stride. Its custom options
are a raw ``TfLiteTransposeConvParams`` (XNNPACK's delegate, which runs the op in
LiteRT, copies them into that struct): int32 ``padding`` (TfLitePadding: 1 SAME,
2 VALID), ``stride_width``, ``stride_height``; later fields, if present, are ignored.

MediaPipe's face-landmark-with-attention model also uses ``Landmarks2TransformMatrix``,
``TransformLandmarks`` and ``TransformTensorBilinear``: they estimate an affine
transform from predicted landmarks and resample a feature map (or the landmarks)
through it — data-dependent gathers with no TFLite builtin equivalent. They stay
unsupported (named with their node counts by the importer).
"""

from __future__ import annotations

import struct
from typing import Any

from qatir.frontends.tflite_ops import Emit, converter, need_inputs, positive
from qatir.frontends.tflite_reader import TOp

_TFLITE_PADDING = {1: "SAME", 2: "VALID"}  # TfLitePadding (C enum), not the schema's Padding


@converter("CUSTOM:Convolution2DTransposeBias")
def _conv2d_transpose_bias(ctx: Any, op: TOp) -> Emit:
    need_inputs(ctx, op, 3, 3)
    raw = op.custom_options
    if len(raw) < 12:
        raise ctx.fail(op, f"custom options are {len(raw)} bytes; expected at least 12 "
                           "(padding, stride_width, stride_height as int32)")
    pad, stride_w, stride_h = struct.unpack_from("<iii", raw)
    if pad not in _TFLITE_PADDING:
        raise ctx.fail(op, f"padding code {pad} is neither SAME (1) nor VALID (2)")
    stride = positive(ctx, op, "stride", stride_h, stride_w)
    return Emit("TRANSPOSE_CONV", list(op.inputs),
                {"stride": stride, "padding": _TFLITE_PADDING[pad], "fused_activation": "NONE"})
