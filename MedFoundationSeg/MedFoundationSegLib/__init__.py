"""MedFoundationSeg engine: SAM-family box-prompt segmentation, propagation, refinement, I/O and batch.

Plain Python (numpy/torch/SimpleITK); never imports Slicer, so it runs in any interpreter and in tests.
"""

__version__ = "0.2.0"
