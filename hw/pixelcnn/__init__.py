"""Streaming masked-convolution engine for the integer PixelCNN (issue 6).

``engine.ConvEngine`` (gateware), ``program`` (export -> memory images, fit checks, cycle model),
``sampler`` (Gumbel-max sampler tables and its bit-exact NumPy twin). See docs/conv-engine.md.
"""
