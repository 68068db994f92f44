"""TF kernels of the data-movement ops (reshape, transpose, pad, resize, slice, ...).

Registered into :mod:`qatir.tf.kernels`' registry, which imports this module.
"""

from __future__ import annotations

from typing import Any

from qatir.numerics import normalize_axes
from qatir.tf.env import import_tensorflow
from qatir.tf.kernels import _act, tf_kernel

tf = import_tensorflow()


# ------------------------------------------------------------------- shape
@tf_kernel("RESHAPE")
def _reshape(ctx, node, ins):
    new = [int(d) for d in node.attrs["new_shape"]]
    if node.inputs[0].shape[:1] == (None,) and -1 not in new and new:
        new[0] = -1
    return tf.reshape(ins[0], new)


@tf_kernel("SQUEEZE")
def _squeeze(ctx, node, ins):
    x = node.inputs[0]
    dims = node.attrs["squeeze_dims"] or [i for i, d in enumerate(x.shape) if d == 1]
    return tf.squeeze(ins[0], axis=normalize_axes(dims, x.rank))


@tf_kernel("TRANSPOSE")
def _transpose(ctx, node, ins):
    return tf.transpose(ins[0], [int(p) for p in node.attrs["perm"]])


@tf_kernel("TILE")
def _tile(ctx, node, ins):
    return tf.tile(ins[0], [int(r) for r in node.attrs["multiples"]])


@tf_kernel("CONCATENATION")
def _concat(ctx, node, ins):
    return _act(node, tf.concat(list(ins), axis=int(node.attrs["axis"])))


@tf_kernel("PAD")
def _pad(ctx, node, ins):
    pads = [[int(a), int(b)] for a, b in node.attrs["paddings"]]
    return tf.pad(ins[0], pads, constant_values=float(node.attrs["constant_value"]))


def _resize(fn):
    def kernel(ctx, node, ins):
        a = node.attrs
        return fn(ins[0], [int(s) for s in a["size"]], align_corners=bool(a["align_corners"]),
                  half_pixel_centers=bool(a["half_pixel_centers"]))
    return kernel


tf_kernel("RESIZE_BILINEAR")(_resize(tf.compat.v1.image.resize_bilinear))
tf_kernel("RESIZE_NEAREST_NEIGHBOR")(_resize(tf.compat.v1.image.resize_nearest_neighbor))
tf_kernel("DEPTH_TO_SPACE")(lambda ctx, node, ins: tf.nn.depth_to_space(
    ins[0], int(node.attrs["block_size"])))
tf_kernel("SPACE_TO_DEPTH")(lambda ctx, node, ins: tf.nn.space_to_depth(
    ins[0], int(node.attrs["block_size"])))


@tf_kernel("STRIDED_SLICE")
def _strided_slice(ctx, node, ins):
    a = node.attrs
    shrink = {int(s) for s in a.get("shrink_axis", [])}
    index: list[Any] = []
    for i, (b, e, s) in enumerate(zip(a["begin"], a["end"], a["strides"])):
        index.append(int(b) if i in shrink else slice(b, e, s))
    return ins[0][tuple(index)]


@tf_kernel("GATHER")
def _gather(ctx, node, ins):
    return tf.gather(ins[0], ins[1], axis=int(node.attrs["axis"]))


@tf_kernel("BATCH_MATMUL")
def _batch_matmul(ctx, node, ins):
    return tf.linalg.matmul(ins[0], ins[1], adjoint_a=bool(node.attrs["adj_x"]),
                            adjoint_b=bool(node.attrs["adj_y"]))


@tf_kernel("CAST")
def _cast(ctx, node, ins):
    return tf.cast(ins[0], tf.as_dtype(node.outputs[0].dtype))


@tf_kernel("SHAPE")
def _shape(ctx, node, ins):
    return tf.shape(ins[0], out_type=tf.as_dtype(node.outputs[0].dtype))
