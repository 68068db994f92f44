"""Built-in passes, pattern tables and quantizers of qatir.

Loaded through the ``qatir.passes`` entry point, exactly like a user's plug-in.
"""
