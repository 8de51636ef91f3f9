"""PixelCNN family (baseline gated, Grayscale, Pyramid) and its integer export for hardware.

Ref: Kolesnikov & Lampert, "PixelCNN models with auxiliary variables for natural image modeling",
ICML 2017 (arXiv 1612.08185); van den Oord et al. arXiv 1601.06759 (PixelCNN), 1606.05328 (Gated PixelCNN).
See docs/pixelcnn-models.md for usage and the integer export file layout.
"""
