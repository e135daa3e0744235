"""3D Slicer module MedLAMLocalize: the desktop front end of the MedLAMLocalizeLib engine.

The Widget only collects input and shows results; all computation lives in the Slicer-free engine package MedLAMLocalizeLib.
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


class MedLAMLocalize(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedLAM Localize"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedFoundationSeg developers"]
        self.parent.helpText = "Click the 6 extreme points of a structure on one or a few template volumes; MedLAM (or, without its weights, image registration) finds the structure's extreme points and 3D box in every other volume."
        self.parent.acknowledgementText = (
            "MedLAM/MedLSAM (Lei et al., arXiv 2306.14752), Segment Anything (Kirillov et al.), MedSAM and "
            "LiteMedSAM (Ma et al.), MobileSAM (Zhang et al.)."
        )


class MedLAMLocalizeWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedLAMLocalize.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

    def cleanup(self):
        self.removeObservers()


class MedLAMLocalizeTest(ScriptedLoadableModuleTest):
    """Runs inside 3D Slicer only (Slicer --testing, or the Reload & Test button)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_engine_importable()

    def test_engine_importable(self):
        import MedLAMLocalizeLib

        self.assertTrue(os.path.isdir(os.path.dirname(MedLAMLocalizeLib.__file__)))
        logging.info("MedLAMLocalizeLib %s found", MedLAMLocalizeLib.__version__)
