"""3D Slicer module MedFoundationSeg: the desktop front end of the MedFoundationSegLib engine.

The Widget only collects input and shows results; all computation lives in the Slicer-free engine package MedFoundationSegLib.
"""

import logging
import os

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class MedFoundationSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedFoundationSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedFoundationSeg developers"]
        self.parent.helpText = "Turn boxes into 3D masks with SAM-family box-prompt models (SAM, MedSAM, MobileSAM, LiteMedSAM), propagate a mask from annotated slices, and refine it with clicks and scribbles."
        self.parent.acknowledgementText = (
            "MedLAM/MedLSAM (Lei et al., arXiv 2306.14752), Segment Anything (Kirillov et al.), MedSAM and "
            "LiteMedSAM (Ma et al.), MobileSAM (Zhang et al.)."
        )


class MedFoundationSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedFoundationSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

    def cleanup(self):
        self.removeObservers()


class MedFoundationSegTest(ScriptedLoadableModuleTest):
    """Runs inside 3D Slicer only (Slicer --testing, or the Reload & Test button)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_engine_importable()

    def test_engine_importable(self):
        import MedFoundationSegLib

        self.assertTrue(os.path.isdir(os.path.dirname(MedFoundationSegLib.__file__)))
        logging.info("MedFoundationSegLib %s found", MedFoundationSegLib.__version__)
