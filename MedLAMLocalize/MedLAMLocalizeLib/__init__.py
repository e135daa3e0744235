"""MedLAMLocalize engine: few-shot 3D anatomy localization (MedLAM) and a registration fallback.

Plain Python (numpy/torch/SimpleITK); never imports Slicer, so it runs in any interpreter and in tests.
"""

__version__ = "0.1.0"
