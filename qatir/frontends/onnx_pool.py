"""Converters for ONNX MaxPool, AveragePool, Resize and Upsample (NHWC).

Pool padding that TFLite's SAME does not express (explicit pads, ceil_mode,
count_include_pad) becomes an explicit PAD + VALID pool; for AveragePool a
constant per-position MUL then restores onnxruntime's divisor exactly.
"""

from __future__ import annotations

import numpy as np

from qatir.frontends.onnx_ctx import Ctx, Dim, converter, onnx_attrs
from qatir.frontends.onnx_nn import Window, pad_nhwc, read_window, same_pads, to_nhwc
from qatir.numerics import same_padding

MAX_POOL_PAD = float(np.finfo(np.float32).min)
MAX_DIVISOR_MAP = 1 << 22  # output positions of a padded AveragePool's divisor constant


def _axis_geometry(ctx: Ctx, w: Window, i: int, size: int, ceil_mode: bool):
    """ONNX output length, explicit (before, after) pads and extra end pad for ceil_mode."""
    k, s, d = w.kernel[i], w.stride[i], w.dilation[i]
    eff = (k - 1) * d + 1
    if w.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out, b, e = same_padding(size, k, s, d)
        return out, ((b, e) if w.auto_pad == "SAME_UPPER" else (e, b)), 0
    pads = (0, 0) if w.auto_pad == "VALID" else w.pads[i]
    span = size + pads[0] + pads[1] - eff
    if span < 0:
        raise ctx.shape_error(f"pool window {eff} larger than padded input {size + sum(pads)}")
    if ceil_mode:
        out = -(-span // s) + 1
        if (out - 1) * s >= size + pads[0]:
            out -= 1
    else:
        out = span // s + 1
    extra = max((out - 1) * s + eff - (size + pads[0] + pads[1]), 0)
    return out, pads, extra


def _pool_setup(ctx: Ctx):
    x = ctx.need(0)
    a = onnx_attrs(ctx.node)
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        raise ctx.unsupported("the Indices output")
    t, back = to_nhwc(ctx, x)
    win = read_window(ctx, x.rank)
    ceil_mode = bool(a.get("ceil_mode", 0))
    hw = t.shape[1:3]
    return a, t, back, win, ceil_mode, hw


@converter("MaxPool")
def _max_pool(ctx: Ctx) -> None:
    a, t, back, win, ceil_mode, hw = _pool_setup(ctx)
    if win.dilation != [1, 1]:
        raise ctx.unsupported("dilated MaxPool")
    attrs = {"filter": win.kernel, "stride": win.stride}
    if None in hw:
        if win.auto_pad == "SAME_UPPER":
            y = ctx.emit("MAX_POOL_2D", [t], {**attrs, "padding": "SAME"}, suffix=_sfx(ctx))
            ctx.set_out(back(y))
            return
        if win.auto_pad == "VALID" or (not ceil_mode and all(p == (0, 0) for p in win.pads)):
            ctx.set_out(back(ctx.emit("MAX_POOL_2D", [t], {**attrs, "padding": "VALID"},
                                      suffix=_sfx(ctx))))
            return
        if win.auto_pad == "NOTSET" and not ceil_mode:  # explicit pads work at any size
            same = [same_pads(hw[i], win.kernel[i], win.stride[i], 1) for i in range(2)]
            if win.pads == same:
                y = ctx.emit("MAX_POOL_2D", [t], {**attrs, "padding": "SAME"}, suffix=_sfx(ctx))
            else:
                y = ctx.emit("MAX_POOL_2D", [pad_nhwc(ctx, t, win.pads, MAX_POOL_PAD)],
                             {**attrs, "padding": "VALID"}, suffix=_sfx(ctx))
            ctx.set_out(back(y))
            return
        raise ctx.shape_error("MaxPool with ceil_mode or SAME_LOWER needs static spatial dims; "
                              "use input_shapes=")
    geo = [_axis_geometry(ctx, win, i, hw[i], ceil_mode) for i in range(2)]
    pads = [(p[0], p[1] + extra) for _, p, extra in geo]
    same = [same_padding(hw[i], win.kernel[i], win.stride[i]) for i in range(2)]
    outs_same = all(geo[i][0] == same[i][0] for i in range(2))
    same = [same[i][1:] for i in range(2)]
    if pads == same and outs_same and any(p != (0, 0) for p in pads):
        y = ctx.emit("MAX_POOL_2D", [t], {**attrs, "padding": "SAME"}, suffix=_sfx(ctx))
    else:
        t = pad_nhwc(ctx, t, pads, MAX_POOL_PAD)
        y = ctx.emit("MAX_POOL_2D", [t], {**attrs, "padding": "VALID"}, suffix=_sfx(ctx))
    ctx.set_out(back(y))


def _sfx(ctx: Ctx) -> str:
    return "__pool" if ctx.need(0).rank == 3 else ""


def _divisors(size: int, out: int, k: int, s: int, pads: tuple[int, int], include_pad: bool):
    """onnxruntime's averaging divisor for each output position along one axis."""
    start = np.arange(out, dtype=np.int64) * s - pads[0]
    end = np.minimum(start + k, size + pads[1])
    if include_pad:
        return (end - start).astype(np.float64)
    return (np.minimum(end, size) - np.maximum(start, 0)).astype(np.float64)


@converter("AveragePool")
def _avg_pool(ctx: Ctx) -> None:
    a, t, back, win, ceil_mode, hw = _pool_setup(ctx)
    if win.dilation != [1, 1]:
        raise ctx.unsupported("dilated AveragePool")
    include = bool(a.get("count_include_pad", 0))
    attrs = {"filter": win.kernel, "stride": win.stride}
    if None in hw:
        if win.auto_pad == "SAME_UPPER" and not include:
            ctx.set_out(back(ctx.emit("AVERAGE_POOL_2D", [t], {**attrs, "padding": "SAME"},
                                      suffix=_sfx(ctx))))
            return
        if win.auto_pad == "VALID" or (not ceil_mode and all(p == (0, 0) for p in win.pads)):
            ctx.set_out(back(ctx.emit("AVERAGE_POOL_2D", [t], {**attrs, "padding": "VALID"},
                                      suffix=_sfx(ctx))))
            return
        if win.auto_pad == "NOTSET" and not ceil_mode:
            same = [same_pads(hw[i], win.kernel[i], win.stride[i], 1) for i in range(2)]
            if not include and win.pads == same:
                y = ctx.emit("AVERAGE_POOL_2D", [t], {**attrs, "padding": "SAME"},
                             suffix=_sfx(ctx))
                ctx.set_out(back(y))
                return
            if include:  # every window lies inside the padded input: the divisor is k*k
                y = ctx.emit("AVERAGE_POOL_2D", [pad_nhwc(ctx, t, win.pads)],
                             {**attrs, "padding": "VALID"}, suffix=_sfx(ctx))
                ctx.set_out(back(y))
                return
        raise ctx.shape_error("padded AveragePool needs static spatial dims; use input_shapes=")
    geo = [_axis_geometry(ctx, win, i, hw[i], ceil_mode) for i in range(2)]
    pads = [(p[0], p[1] + extra) for _, p, extra in geo]
    same = [same_padding(hw[i], win.kernel[i], win.stride[i]) for i in range(2)]
    outs_same = all(geo[i][0] == same[i][0] for i in range(2))
    same = [same[i][1:] for i in range(2)]
    if all(p == (0, 0) for p in pads):
        y = ctx.emit("AVERAGE_POOL_2D", [t], {**attrs, "padding": "VALID"}, suffix=_sfx(ctx))
        ctx.set_out(back(y))
        return
    if not include and pads == same and outs_same:
        y = ctx.emit("AVERAGE_POOL_2D", [t], {**attrs, "padding": "SAME"}, suffix=_sfx(ctx))
        ctx.set_out(back(y))
        return
    if geo[0][0] * geo[1][0] > MAX_DIVISOR_MAP:
        raise ctx.shape_error(f"output {geo[0][0]}x{geo[1][0]} too large for a padded "
                              "AveragePool")
    div = [_divisors(hw[i], geo[i][0], win.kernel[i], win.stride[i], geo[i][1], include)
           for i in range(2)]
    if np.any(div[0] <= 0) or np.any(div[1] <= 0):
        raise ctx.shape_error("a pooling window lies entirely in the padding")
    scale = (win.kernel[0] * win.kernel[1]) / np.outer(div[0], div[1])
    sfx = _sfx(ctx)
    y = ctx.emit("AVERAGE_POOL_2D", [pad_nhwc(ctx, t, pads)], {**attrs, "padding": "VALID"},
                 suffix=sfx + ("__sum" if not np.allclose(scale, 1.0) else ""))
    if not np.allclose(scale, 1.0):
        corr = ctx.const_tensor(scale.astype(np.float32)[None, :, :, None],
                                ctx.out_name() + "__divisor")
        y = ctx.emit("MUL", [y, corr], suffix=sfx)
    ctx.set_out(back(y))


# ------------------------------------------------------------------ resize
def _resize_mode(ctx: Ctx, mode: str, ctm: str, nearest: str, scale_hw: list[float]):
    """(IR op, align_corners, half_pixel_centers) equal to the ONNX attributes, or unsupported."""
    integral_up = all(float(s).is_integer() and s >= 1 for s in scale_hw)
    if mode == "nearest":
        if ctm == "asymmetric" and nearest == "floor":
            return "RESIZE_NEAREST_NEIGHBOR", False, False
        if ctm in ("half_pixel", "pytorch_half_pixel") and nearest == "round_prefer_ceil":
            return "RESIZE_NEAREST_NEIGHBOR", False, True
        if ctm in ("half_pixel", "pytorch_half_pixel", "asymmetric") and integral_up and (
                nearest == "round_prefer_floor" or ctm != "asymmetric"):
            return "RESIZE_NEAREST_NEIGHBOR", False, False
        if ctm == "align_corners" and nearest == "round_prefer_ceil":
            return "RESIZE_NEAREST_NEIGHBOR", True, False
    elif mode in ("linear", "bilinear"):
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            return "RESIZE_BILINEAR", False, True
        if ctm == "align_corners":
            return "RESIZE_BILINEAR", True, False
        if ctm == "asymmetric":
            return "RESIZE_BILINEAR", False, False
    raise ctx.unsupported(f"Resize mode={mode!r}, coordinate_transformation_mode={ctm!r}, "
                          f"nearest_mode={nearest!r}")


def _resize(ctx: Ctx, scales: np.ndarray | None, sizes: np.ndarray | None, mode: str, ctm: str,
            nearest: str) -> None:
    x = ctx.need(0)
    if x.rank != 4:
        raise ctx.unsupported(f"only 4-D Resize (got rank {x.rank})")
    in_shape = x.shape
    if None in in_shape[2:]:
        raise ctx.shape_error("Resize needs static spatial dims; use input_shapes=")
    if sizes is not None and np.size(sizes) == 4:
        sizes = list(np.asarray(sizes).reshape(-1))
        if any(isinstance(v, Dim) for v in sizes[2:]):
            raise ctx.shape_error("Resize output size depends on a dynamic dimension; "
                                  "use input_shapes=")
        if any(not isinstance(v, Dim) and d is not None and int(v) != d
               for v, d in zip(sizes[:2], in_shape[:2])):
            raise ctx.unsupported("resizing the batch or channel dims")
        out_hw = [int(v) for v in sizes[2:]]
        scale_hw = [out_hw[i] / in_shape[2 + i] for i in range(2)]
    elif scales is not None and np.size(scales) == 4:
        sc = [float(v) for v in np.asarray(scales, np.float64).reshape(-1)]
        if sc[0] != 1 or sc[1] != 1:
            raise ctx.unsupported("resizing the batch or channel dims")
        out_hw = [int(np.floor(in_shape[2 + i] * sc[2 + i])) for i in range(2)]
        scale_hw = sc[2:]
        if any(abs(out_hw[i] - in_shape[2 + i] * sc[2 + i]) > 1e-6 for i in range(2)):
            raise ctx.unsupported("scales giving a non-integral output size")
    else:
        raise ctx.shape_error("Resize needs 4 scales or 4 sizes")
    if any(v <= 0 for v in out_hw):
        raise ctx.shape_error(f"Resize output size {out_hw} is not positive")
    op, align, half = _resize_mode(ctx, mode, ctm, nearest, scale_hw)
    t = ctx.as_tensor(x, (0, 2, 3, 1))
    y = ctx.emit(op, [t], {"size": out_hw, "align_corners": align, "half_pixel_centers": half})
    ctx.set_out(ctx.act(y, (0, 2, 3, 1)))


@converter("Resize")
def _resize_op(ctx: Ctx) -> None:
    a = onnx_attrs(ctx.node)
    if int(a.get("antialias", 0)) or a.get("keep_aspect_ratio_policy", "stretch") != "stretch" \
            or "axes" in a:
        raise ctx.unsupported("antialias, axes or keep_aspect_ratio_policy")
    mode = a.get("mode", "nearest")
    if ctx.opset < 11:
        scales, sizes, ctm = ctx.const_in(1, "scales"), None, "asymmetric"
        nearest = "floor"
    else:
        scales = ctx.const_in(2, "scales", optional=True)
        sizes_val = ctx.inp(3)
        if sizes_val is not None and not sizes_val.is_const:
            raise ctx.unsupported("sizes must be constant (or foldable)")
        sizes = None if sizes_val is None else sizes_val.const
        ctm = a.get("coordinate_transformation_mode", "half_pixel")
        nearest = a.get("nearest_mode", "round_prefer_floor")
    _resize(ctx, scales, sizes, mode, ctm, nearest)


@converter("Upsample")
def _upsample(ctx: Ctx) -> None:
    a = onnx_attrs(ctx.node)
    scales = a.get("scales") if ctx.opset < 9 else ctx.const_in(1, "scales")
    _resize(ctx, None if scales is None else np.asarray(scales), None,
            a.get("mode", "nearest"), "asymmetric", "floor")
