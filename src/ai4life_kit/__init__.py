"""ai4life-kit: denoise fluorescence microscopy images from noisy TIFFs to bioimage.io and the AI4Life challenge.

Importing the package is cheap (no torch): the heavy modules are imported where they are used.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
