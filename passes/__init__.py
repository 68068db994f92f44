"""Built-in passes and pattern tables of qatir.

Loaded through the ``qatir.passes`` entry point, exactly like a user's plug-in:
importing this package imports one module per pass, and each registers itself
with :func:`qatir.pipeline.register_pass`. ``tables/`` holds the built-in
pattern tables (``int8_default.toml``). The fake-quant layout these passes
produce is documented in :mod:`qatir.passes.insert_fake_quant`.
"""

from qatir.passes import (  # noqa: F401  (imported for their registrations)
    canonicalize_layer_norm,
    div_to_mul,
    eliminate_dead_code,
    equalize_cross_layer,
    fold_batch_norm,
    fold_bias_add,
    fold_constants,
    fold_pad_into_window,
    fold_scale_into_conv,
    fold_scale_shift,
    fuse_activations,
    fuse_hard_swish,
    fuse_hard_swish_spelled,
    insert_fake_quant,
    lower_clip,
    lower_relu_0_to_1,
    propagate_quant_constraints,
    remove_identities,
)
