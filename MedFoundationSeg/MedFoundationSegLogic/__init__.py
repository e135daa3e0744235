"""MRML-side Logic of the MedFoundationSeg module: converts between Slicer nodes and the Slicer-free engine.

Qt-free on purpose (MRML, vtk, numpy, torch only) so the same code runs in 3D Slicer and under ``slicer-core`` in tests.
It lives in its own package, not in MedFoundationSeg.py, because Slicer's module file imports qt/ctk.
"""
