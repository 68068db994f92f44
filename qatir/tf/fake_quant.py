"""The FAKE_QUANT kernel: TF's fake-quant ops plus each quantizer's training rule.

- Inference: quantize-dequantize with the stored range (per-tensor, or
  per-channel with the channel axis moved last as TF's op requires).
- Training (``fit``): weight ranges follow the current weights (min/max, or
  symmetric abs-max), activation ranges of ``ema_in_fit`` quantizers follow an
  EMA of the batch min/max reduced over all replicas, ``trainable`` ranges get
  gradients from TF's op, ``fixed`` ranges never move.
- Calibration runs with ``ctx.fake_quant`` False: the node is an identity that
  records its input for the calibrator.
"""

from __future__ import annotations

from qatir.ir import Node
from qatir.numerics import normalize_axis
from qatir.quantizers import get_quantizer
from qatir.tf.env import import_tensorflow
from qatir.tf.kernels import KernelContext, round_half_away, tf_kernel

tf = import_tensorflow()

#: EMA decay of ``moving_average`` ranges during ``fit`` (TF-Lite/TFMOT use 0.999 for long runs)
DEFAULT_EMA_DECAY = 0.99


def _reduce_axes(node: Node) -> list[int]:
    rank = node.inputs[0].rank
    axis = node.attrs.get("axis")
    if axis is None:
        return list(range(rank))
    axis = normalize_axis(axis, rank)
    return [i for i in range(rank) if i != axis]


def _all_replicas(value: tf.Tensor, reduce) -> tf.Tensor:
    """Reduce a per-replica statistic over every replica (identity without a strategy)."""
    rc = tf.distribute.get_replica_context()
    if rc is None or rc.num_replicas_in_sync == 1:
        return value
    return reduce(rc.all_gather(value[None], axis=0), axis=0)


def _include_zero(lo: tf.Tensor, hi: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.minimum(lo, 0.0), tf.maximum(hi, 0.0)


def _training_range(ctx: KernelContext, node: Node, x: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor):
    """The range a FAKE_QUANT uses in a training step, after its quantizer's update."""
    a = node.attrs
    q = get_quantizer(a["quantizer"])
    if q.trainable or not q.calibrates:
        return lo, hi
    weight = a.get("kind") == "weight"
    if not weight and not q.ema_in_fit:
        return lo, hi
    xs = tf.stop_gradient(x)
    axes = _reduce_axes(node)
    bmin = tf.reduce_min(xs, axis=axes)
    bmax = tf.reduce_max(xs, axis=axes)
    if not weight:
        bmin = _all_replicas(bmin, tf.reduce_min)
        bmax = _all_replicas(bmax, tf.reduce_max)
        decay = float(a.get("ema_decay", DEFAULT_EMA_DECAY))
        bmin = lo * decay + bmin * (1.0 - decay)
        bmax = hi * decay + bmax * (1.0 - decay)
    new_lo, new_hi = _include_zero(bmin, bmax)
    if a.get("symmetric"):
        m = tf.maximum(-new_lo, new_hi)
        new_lo, new_hi = -m, m
    if weight:
        # not stored: write-back recomputes weight ranges from the final weights, and an
        # assign per weight per step costs ~15% of a CPU step (control dependencies)
        return new_lo, new_hi
    for t, val in ((node.inputs[1], new_lo), (node.inputs[2], new_hi)):
        v = ctx.variable(t)
        if v is not None:
            v.assign(tf.reshape(val, tf.shape(v)))
    return new_lo, new_hi


def fake_quant(x: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor, bits: int, narrow: bool,
               axis: int | None, rank: int) -> tf.Tensor:
    """TF's fake-quant op (straight-through gradients), any per-channel axis."""
    if axis is None:
        return tf.quantization.fake_quant_with_min_max_vars(
            x, tf.reshape(lo, []), tf.reshape(hi, []), num_bits=bits, narrow_range=narrow)
    axis = normalize_axis(axis, rank)
    if axis == rank - 1:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(
            x, lo, hi, num_bits=bits, narrow_range=narrow)
    perm = [i for i in range(rank) if i != axis] + [axis]
    inv = [perm.index(i) for i in range(rank)]
    y = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        tf.transpose(x, perm), lo, hi, num_bits=bits, narrow_range=narrow)
    return tf.transpose(y, inv)


def _nudged_bounds(lo: tf.Tensor, hi: tf.Tensor, bits: int, narrow: bool):
    """TF's Nudge(): the float range a fake-quant op actually represents (float32)."""
    qmin = 1.0 if narrow else 0.0
    qmax = float((1 << bits) - 1)
    scale = (hi - lo) / (qmax - qmin)
    zp = qmin - lo / scale
    zp = tf.clip_by_value(round_half_away(zp), qmin, qmax)
    return (qmin - zp) * scale, (qmax - zp) * scale


@tf.function(jit_compile=True)
def _xla_input_grad(dy, x, lo, hi, bits, narrow):
    nmin, nmax = _nudged_bounds(lo, hi, bits, narrow)
    return tf.where((x >= nmin) & (x <= nmax), dy, tf.zeros_like(dy))


def fake_quant_fixed_range(x: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor, bits: int,
                           narrow: bool) -> tf.Tensor:
    """Per-tensor fake quant whose range gets no gradient.

    The forward pass is TF's op; the backward pass is one fused XLA kernel with
    TF's input gradient (straight-through inside the nudged range). TF's own
    gradient op also reduces gradients for min and max, which a range that is
    not learned does not need.
    """
    lo, hi = tf.stop_gradient(tf.reshape(lo, [])), tf.stop_gradient(tf.reshape(hi, []))

    @tf.custom_gradient
    def fq(v):
        def grad(dy):
            return _xla_input_grad(dy, v, lo, hi, bits, narrow)

        y = tf.quantization.fake_quant_with_min_max_vars(v, lo, hi, num_bits=bits,
                                                         narrow_range=narrow)
        return y, grad

    return fq(x)


@tf_kernel("FAKE_QUANT")
def _fake_quant_kernel(ctx: KernelContext, node: Node, ins):
    x, lo, hi = ins
    if node.name in ctx.capture:
        ctx.captured[node.name] = x
    if not ctx.fake_quant:
        return x
    a = node.attrs
    if ctx.training or (ctx.live_weight_ranges and a.get("kind") == "weight"):
        lo, hi = _training_range(ctx, node, x, lo, hi)
    bits, narrow = int(a["bits"]), bool(a["narrow_range"])
    levels = float((1 << bits) - 1 - (1 if narrow else 0))
    ctx.scales[id(node.outputs[0])] = (hi - lo) / levels
    axis = a.get("axis")
    if ctx.fast_fake_quant and axis is None and not get_quantizer(a["quantizer"]).trainable:
        return fake_quant_fixed_range(x, lo, hi, bits, narrow)
    return fake_quant(x, lo, hi, bits, narrow, None if axis is None else int(axis),
                      node.inputs[0].rank)
