"""A headless MRML environment on slicer-core (no Slicer application): scene, module logics, slicer.util shims.

This is what Slicer's application sets up before modules run; slicer.util's segmentation helpers look up
``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``, so both are provided here.
"""

from __future__ import annotations

import types

import numpy as np

_ENV = None


def mrml_env():
    """The process-wide environment, cleared of everything but singletons (as File > Close Scene does).

    One per process on purpose: module logics register node classes and observers globally, and building a second
    application logic after the first is garbage-collected crashes vtkSlicerMarkupsLogic.
    """
    global _ENV
    if _ENV is None:
        _ENV = make_mrml_env()
    scene, logics, _app_logic = _ENV
    scene.Clear(0)
    return scene, logics


def make_mrml_env():
    import slicer

    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    selection = slicer.vtkMRMLSelectionNode()
    selection.SetSingletonTag("Singleton")
    scene.AddNode(selection)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    logics = {}
    for name, logic in (("Colors", app_logic.GetColorLogic()), ("Volumes", slicer.vtkSlicerVolumesLogic()),
                        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic()),
                        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic()),
                        ("Markups", slicer.vtkSlicerMarkupsLogic())):
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic
    app_logic.SetSelectionNode(selection) if hasattr(app_logic, "SetSelectionNode") else None
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{name.lower(): types.SimpleNamespace(logic=(lambda bound=logic: bound))
                                              for name, logic in logics.items()})
    return scene, logics, app_logic


def add_volume_node(scene, volume, name: str = "volume"):
    """A scalar volume node holding an engine Volume (LPS geometry -> Slicer's RAS IJKToRAS)."""
    import slicer.util
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    node.CreateDefaultDisplayNodes()
    del vtk
    return node


def write_segmentation_file(scene, segmentation_node, path) -> None:
    """Save a segmentation node through Slicer's own storage node (what File > Save does)."""
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    segmentation_node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    if storage.WriteData(segmentation_node) != 1:
        raise AssertionError(f"Slicer's segmentation storage node could not write {path}")


def read_segmentation_file(scene, path, name: str = "loaded"):
    """A new segmentation node read from ``path`` by Slicer's own storage node (what File > Load does)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if storage.ReadData(node) != 1:
        raise AssertionError(f"Slicer's segmentation storage node could not read {path}")
    return node
