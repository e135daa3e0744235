"""3D Slicer module MedLAMLocalize: click a structure's 6 extreme points on a template, get its box on other volumes.

The Widget is thin: it guides the clicks, hands nodes to MedLAMLocalizeLogic, runs the localization engine on ONE
persistent background worker (responsive GUI, progress, Cancel) and applies the results (editable ROI boxes and
extreme-point lists) on the GUI thread. torch and the engines are imported only inside methods.
"""

# size-waiver: Slicer loads a scripted module's Module, Widget and Test classes from this one file; the Widget only
# reads the panel and calls MedLAMLocalizeLogic.

import logging
import os
import sys

import ctk
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

POLL_INTERVAL_MS = 100
ENGINES = ("auto", "medlam", "registration")  # engineComboBox rows
POINT_LABELS = ("x-min", "x-max", "y-min", "y-max", "z-min", "z-max")  # = MedFoundationSegLib.core.boxes.POINT_NAMES
RESULT_COLUMNS = ("Volume", "Structure", "Result", "Confidence", "Box size (mm)")
TEMPLATE_COLUMNS = ("Template volume", "Structure", "Terminology", "Box size (mm)")
TERMINOLOGY_AUTO = "auto"  # structureTerminologyComboBox data: look the code up from the structure name


class MedLAMLocalize(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedLAM Localize"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["MedFoundationSeg"]  # shares its engine, Logic helpers and dependency installer
        self.parent.contributors = ["MedFoundationSeg developers"]
        self.parent.helpText = (
            "Click the 6 extreme points of a structure on one or a few template volumes; MedLAM (or, without its "
            "weights, image registration) finds the structure's extreme points and 3D box in every other volume. "
            "Boxes can be sent to MedFoundationSeg for segmentation."
        )
        self.parent.acknowledgementText = (
            "MedLAM/MedLSAM (Lei et al., arXiv 2306.14752), Segment Anything (Kirillov et al.), MedSAM and "
            "LiteMedSAM (Ma et al.), MobileSAM (Zhang et al.)."
        )


class MedLAMLocalizeWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._jobs = []  # [{"job", "volumeId", "handled"}] of the current Localize click
        self._timer = None
        self._pointsNode = None
        self.lastError = None  # read by the self-test

    # --- construction -------------------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from MedFoundationSegLogic.compatibility import slicer_version_problem

        problem = slicer_version_problem(slicer.app.majorVersion, slicer.app.minorVersion, sys.version_info)
        if problem:  # say so in the panel instead of failing on the first import of the engine
            self.layout.addWidget(qt.QLabel(problem))
            logging.error(problem)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedLAMLocalize.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.ui.extremePointsPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.structureColorPicker.color = qt.QColor(230, 153, 51)
        self._fillTerminologyList()
        self.ui.templateSetPathEdit.filters = ctk.ctkPathLineEdit.Files
        self.ui.templateSetPathEdit.nameFilters = ["Template set (*.yaml *.yml *.json)"]
        self.ui.templateSetPathEdit.settingKey = "MedLAMLocalize/TemplateSetPath"
        for table, columns in ((self.ui.templateTable, TEMPLATE_COLUMNS), (self.ui.resultsTable, RESULT_COLUMNS)):
            table.setColumnCount(len(columns))
            table.setHorizontalHeaderLabels(list(columns))
            table.horizontalHeader().setStretchLastSection(True)
            table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        self.ui.resultsTable.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.ui.resultsTable.setSelectionMode(qt.QAbstractItemView.SingleSelection)

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._pollJobs)

        self.ui.extremePointsSelector.currentNodeChanged.connect(self.onPointsNodeChanged)
        self.ui.templateVolumeSelector.currentNodeChanged.connect(self._updateButtons)
        self.ui.structureNameEdit.textChanged.connect(self._updateButtons)
        self.ui.queryVolumeSelector.currentNodeChanged.connect(self._updateButtons)
        self.ui.allVolumesCheckBox.toggled.connect(self._updateButtons)
        self.ui.engineComboBox.currentIndexChanged.connect(self.updateEngineStatus)
        self.ui.resultsTable.itemSelectionChanged.connect(self._updateButtons)

        self.ui.addStructureButton.clicked.connect(self.onAddStructure)
        self.ui.saveTemplateSetButton.clicked.connect(self.onSaveTemplateSet)
        self.ui.loadTemplateSetButton.clicked.connect(self.onLoadTemplateSet)
        self.ui.localizeButton.clicked.connect(self.onLocalize)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.sendToSegButton.clicked.connect(self.onSendToSeg)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.onPointsNodeChanged(self.ui.extremePointsSelector.currentNode())
        self.updateEngineStatus()
        self._updateButtons()

    def cleanup(self):
        if self._timer is not None:
            self._timer.stop()
        for entry in self._jobs:
            entry["job"].cancel()
        self.removeObservers()

    def onSceneStartClose(self, caller=None, event=None):
        """Template volumes and results are scene nodes: a closed scene starts a new template set."""
        for entry in self._jobs:
            entry["job"].cancel()
        if self.logic is not None:
            self.logic = type(self.logic)(slicer.mrmlScene)
        self.ui.templateTable.setRowCount(0)
        self.ui.resultsTable.setRowCount(0)
        self._updateButtons()

    # --- logic, worker, dependencies --------------------------------------------------------------------------------
    def _dependenciesPresent(self):
        from MedFoundationSegLogic import dependencies

        return not dependencies.missing_modules()

    def _ensureLogic(self):
        if self.logic is not None:
            return self.logic
        from MedFoundationSegLogic import dependencies

        if not dependencies.slicer_ensure_dependencies("MedLAMLocalize"):
            self._setStatus("Python packages are missing: the action needs them installed (or Slicer restarted).")
            return None
        from MedLAMLocalizeLogic import MedLAMLocalizeLogic

        self.logic = MedLAMLocalizeLogic(slicer.mrmlScene)
        self.updateEngineStatus()
        return self.logic

    def _fillTerminologyList(self):
        """Automatic / none / every coded organ of MedFoundationSegLogic/terminology.yaml (needs PyYAML)."""
        combo = self.ui.structureTerminologyComboBox
        combo.clear()
        combo.addItem("automatic (from the name)", TERMINOLOGY_AUTO)
        combo.addItem("none", "")
        from MedFoundationSegLogic import dependencies

        if dependencies.missing_modules(modules=("yaml",)):
            return
        from MedFoundationSegLib.core import terminology

        for label, tag in terminology.choices():
            combo.addItem(label, tag)

    def _selectedTerminology(self):
        data = self.ui.structureTerminologyComboBox.itemData(self.ui.structureTerminologyComboBox.currentIndex)
        return None if not data else data  # "auto", a tag, or None for "none"

    # --- guided extreme-point placement -----------------------------------------------------------------------------
    def onPointsNodeChanged(self, node):
        if self._pointsNode is not None:
            self.removeObserver(self._pointsNode, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                                self.onPointsModified)
            self.removeObserver(self._pointsNode, slicer.vtkMRMLMarkupsNode.PointPositionUndefinedEvent,
                                self.onPointsModified)
            self.removeObserver(self._pointsNode, slicer.vtkMRMLMarkupsNode.PointRemovedEvent, self.onPointsModified)
        self._pointsNode = node
        self.ui.extremePointsPlaceWidget.setCurrentNode(node)
        if node is not None:
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointsModified)
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionUndefinedEvent, self.onPointsModified)
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointRemovedEvent, self.onPointsModified)
        self.onPointsModified()

    def onPointsModified(self, caller=None, event=None):
        """Say which extreme comes next, and label each placed point with the extreme it was asked for."""
        node = self._pointsNode
        placed = 0
        if node is not None:
            for index in range(node.GetNumberOfControlPoints()):
                if node.GetNthControlPointPositionStatus(index) != slicer.vtkMRMLMarkupsNode.PositionDefined:
                    continue
                if placed < len(POINT_LABELS) and node.GetNthControlPointLabel(index) != POINT_LABELS[placed]:
                    node.SetNthControlPointLabel(index, POINT_LABELS[placed])
                placed += 1
        prompt = self._nextPointPrompt(placed)
        self.ui.nextPointLabel.text = prompt
        self._showInSliceViews(prompt if node is not None and placed < len(POINT_LABELS) else "")
        if placed >= len(POINT_LABELS) and self.ui.extremePointsPlaceWidget.placeModeEnabled:
            self.ui.extremePointsPlaceWidget.setPlaceModeEnabled(False)
        self._updateButtons()

    def _nextPointPrompt(self, placed):
        if self._dependenciesPresent():
            from MedLAMLocalizeLogic import guide_point_list

            return guide_point_list(self._pointsNode)  # also sets the next point's label shown while placing
        if placed >= len(POINT_LABELS):
            return "All 6 extreme points placed: add the structure to the template set."
        return f"Next point ({placed + 1}/6): {POINT_LABELS[placed]}"

    def _showInSliceViews(self, text):
        """The next-extreme instruction in the corner of every slice view (empty text clears it)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        for viewName in layoutManager.sliceViewNames():
            view = layoutManager.sliceWidget(viewName).sliceView()
            view.cornerAnnotation().SetText(vtk.vtkCornerAnnotation.UpperRight, text)
            view.scheduleRender()

    def _placedPoints(self):
        node = self._pointsNode
        return node.GetNumberOfDefinedControlPoints() if node is not None else 0

    # --- template set -------------------------------------------------------------------------------------------------
    def onAddStructure(self):
        logic = self._ensureLogic()
        if logic is None:
            return
        volumeNode = self.ui.templateVolumeSelector.currentNode()
        pointsNode = self._pointsNode
        name = self.ui.structureNameEdit.text.strip()
        color = self.ui.structureColorPicker.color
        rgb = (color.redF(), color.greenF(), color.blueF())
        try:
            with slicer.util.tryWithErrorDisplay("Could not add the structure.", waitCursor=True):
                if volumeNode is None:
                    raise ValueError("select the template volume the points were placed on")
                logic.add_structure(volumeNode, name, pointsNode, color_rgb=rgb,
                                    terminology_tag=self._selectedTerminology())
        except Exception as error:
            self.lastError = str(error)
            self._setStatus(f"Not added: {error}")
            return
        pointsNode.SetName(f"{name} template points")
        pointsNode.SetLocked(True)
        if pointsNode.GetDisplayNode() is not None:
            pointsNode.GetDisplayNode().SetSelectedColor(*rgb)
        self._setStatus(f"Added {name!r} on {volumeNode.GetName()}. Name the next structure and place its points "
                        "in the new point list.")
        nextNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "ExtremePoints")
        self.ui.extremePointsSelector.setCurrentNode(nextNode)
        self.ui.structureNameEdit.text = ""
        self._refreshTemplateTable()

    def onSaveTemplateSet(self):
        logic = self._ensureLogic()
        path = self.ui.templateSetPathEdit.currentPath
        if logic is None:
            return
        try:
            with slicer.util.tryWithErrorDisplay("Could not save the template set.", waitCursor=True):
                if not path:
                    raise ValueError("choose a template set file (.yaml or .json) first")
                if os.path.exists(path) and not slicer.util.confirmOkCancelDisplay(
                        f"{path} exists. Replace it (and the template volumes saved beside it)?"):
                    return
                saved = logic.save_template_set(path, overwrite=True)
        except Exception as error:
            self._setStatus(f"Not saved: {error}")
            return
        self.ui.templateSetPathEdit.addCurrentPathToHistory()
        self._setStatus(f"Template set saved: {saved}")

    def onLoadTemplateSet(self):
        logic = self._ensureLogic()
        path = self.ui.templateSetPathEdit.currentPath
        if logic is None:
            return
        try:
            with slicer.util.tryWithErrorDisplay("Could not load the template set.", waitCursor=True):
                if not path:
                    raise ValueError("choose a template set file (.yaml or .json) first")
                templateSet = logic.load_template_set(path)
        except Exception as error:
            self._setStatus(f"Not loaded: {error}")
            return
        self.ui.templateSetPathEdit.addCurrentPathToHistory()
        self._refreshTemplateTable()
        self._setStatus(f"Loaded {len(templateSet.templates)} template(s) with structures "
                        f"{', '.join(templateSet.structures()) or '(none shared by all templates)'}.")

    def _refreshTemplateTable(self):
        import numpy as np

        table = self.ui.templateTable
        rows = []
        if self.logic is not None:
            for template in self.logic.template_set.templates:
                from MedFoundationSegLib.core import terminology

                for structure, points in sorted(template.points_lps.items()):
                    size = np.ptp(np.asarray(points), axis=0)
                    tag = self.logic.terminology.get(structure)
                    coded = terminology.TerminologyEntry.from_tag(tag).display_name if tag else "(none)"
                    rows.append((template.name, structure, coded, " x ".join(f"{s:.0f}" for s in size)))
        table.setRowCount(len(rows))
        for row, values in enumerate(rows):
            for column, value in enumerate(values):
                table.setItem(row, column, qt.QTableWidgetItem(value))
        self._updateButtons()

    # --- localization -------------------------------------------------------------------------------------------------
    def updateEngineStatus(self, *unused):
        """Which engine Localize will use and why (MedLAM needs its weights; registration needs nothing)."""
        requested = ENGINES[max(self.ui.engineComboBox.currentIndex, 0)]
        if not self._dependenciesPresent():
            self.ui.engineStatusLabel.text = ("Python packages are missing; they are installed on first use. "
                                              "Without MedLAM weights the registration engine is used.")
            return None
        from MedLAMLocalizeLogic import choose_engine

        try:
            choice = choose_engine(requested, self.logic.medlam_weights if self.logic is not None else "medlam")
        except Exception as error:
            self.ui.engineStatusLabel.text = f"Cannot use {requested}: {error}"
            return None
        self.ui.engineStatusLabel.text = f"Engine: {choice.engine}. {choice.reason}"
        return choice

    def _queryVolumes(self):
        if not self.ui.allVolumesCheckBox.checked:
            node = self.ui.queryVolumeSelector.currentNode()
            return [node] if node is not None else []
        templates = self.logic.template_volume_node_ids() if self.logic is not None else set()
        return [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                if node.GetID() not in templates and not node.IsA("vtkMRMLLabelMapVolumeNode")]

    def _localizeOptions(self):
        from MedFoundationSegLib.workflow.options import Options

        return Options(engine=ENGINES[max(self.ui.engineComboBox.currentIndex, 0)],
                       spl=bool(self.ui.subPatchCheckBox.checked),
                       slice_interval=int(self.ui.sliceIntervalSpinBox.value),
                       recentre_iterations=int(self.ui.recentreSpinBox.value), seed=int(self.ui.seedSpinBox.value))

    def onLocalize(self):
        logic = self._ensureLogic()
        if logic is None or self._jobs:
            return
        self.lastError = None
        try:
            with slicer.util.tryWithErrorDisplay("Cannot localize.", waitCursor=True):
                prepared = logic.prepare_localization(self._queryVolumes(), self._localizeOptions())
                jobs = [{"job": p.start(), "volumeId": p.volume_node_id, "handled": False} for p in prepared]
        except Exception as error:
            self.lastError = str(error)
            self._setStatus(f"Not started: {error}")
            return
        self._jobs = jobs
        self.ui.resultsTable.setRowCount(0)
        self.ui.progressBar.value = 0
        self._setStatus(f"Localizing in {len(jobs)} volume(s) with {prepared[0].engine.engine}...")
        self._updateButtons()
        self._timer.start()

    def onCancel(self):
        for entry in self._jobs:
            entry["job"].cancel()
        if self._jobs:
            self._setStatus("Cancelling at the next step...")

    def isBusy(self):
        return bool(self._jobs)

    def _pollJobs(self):
        if not self._jobs:
            self._timer.stop()
            return
        total = 0.0
        running = None
        for entry in self._jobs:
            job = entry["job"]
            if job.done and not entry["handled"]:
                entry["handled"] = True
                self._applyJob(job, entry["volumeId"])
            total += 1.0 if job.done else job.fraction
            if not job.done and running is None:
                running = job
        self.ui.progressBar.value = int(round(100 * total / len(self._jobs)))
        if running is not None:
            self.ui.statusLabel.text = f"{running.name}: {running.message}"
            return
        self._timer.stop()
        failed = [entry["job"] for entry in self._jobs if entry["job"].error is not None]
        self._jobs = []
        found = sum(1 for row in range(self.ui.resultsTable.rowCount)
                    if self.ui.resultsTable.item(row, 2).data(qt.Qt.UserRole))
        self._setStatus(f"Done: {found} box(es) created" + (f"; {len(failed)} volume(s) failed or were cancelled"
                                                             if failed else "") + ".")
        self._updateButtons()

    def _applyJob(self, job, volumeId):
        volumeNode = slicer.mrmlScene.GetNodeByID(volumeId)
        volumeName = volumeNode.GetName() if volumeNode is not None else volumeId
        if job.error is not None:
            message = "cancelled" if job.cancelled else f"failed: {job.error}"
            self._addResultRow(volumeName, "(all)", message, "", "", None)
            if not job.cancelled:
                self.lastError = f"{job.name} failed: {job.error}"
                logging.error("%s\n%s", self.lastError, job.error_traceback)
                if not slicer.app.testingEnabled():
                    slicer.util.errorDisplay(self.lastError, detailedText=job.error_traceback)
            return
        if volumeNode is None:
            self._addResultRow(volumeName, "(all)", "volume was removed; nothing created", "", "", None)
            return
        try:
            results = job.result.boxes()
            created = self.logic.apply_localization(results, volumeNode)
        except Exception as error:
            self.lastError = f"could not create the boxes in {volumeName}: {error}"
            self._addResultRow(volumeName, "(all)", self.lastError, "", "", None)
            return
        for name, result in results.items():
            if name in created:
                size = result.box_ras_mm[1] - result.box_ras_mm[0]
                state = f"found, {result.fraction_inside:.0%} inside the volume" if result.partial else "found"
                self._addResultRow(volumeName, name, state, f"{result.confidence:.2f}",
                                   " x ".join(f"{s:.0f}" for s in size), created[name].roi_node.GetID())
            else:
                reason = result.details.get("reason", "a predicted extreme point lies outside the volume")
                self._addResultRow(volumeName, name, f"absent: {reason}", f"{result.confidence:.2f}", "", None)

    def _addResultRow(self, volumeName, structure, result, confidence, size, roiNodeId):
        table = self.ui.resultsTable
        row = table.rowCount
        table.insertRow(row)
        for column, value in enumerate((volumeName, structure, result, confidence, size)):
            item = qt.QTableWidgetItem(str(value))
            if column == 2:
                item.setData(qt.Qt.UserRole, roiNodeId or "")
            table.setItem(row, column, item)

    def _selectedRoiNode(self):
        rows = [index.row() for index in self.ui.resultsTable.selectionModel().selectedRows()]
        if not rows:
            return None
        roiNodeId = self.ui.resultsTable.item(rows[0], 2).data(qt.Qt.UserRole)
        return slicer.mrmlScene.GetNodeByID(roiNodeId) if roiNodeId else None

    def onSendToSeg(self):
        """Open MedFoundationSeg with this result's volume and box selected."""
        roiNode = self._selectedRoiNode()
        if roiNode is None:
            return
        from MedFoundationSegLogic.node_attributes import STRUCTURE_ATTRIBUTE, VOLUME_REFERENCE

        volumeNode = roiNode.GetNodeReference(VOLUME_REFERENCE)
        slicer.util.selectModule("MedFoundationSeg")
        segWidget = slicer.modules.medfoundationseg.widgetRepresentation().self()
        segWidget.setInputs(volumeNode=volumeNode, roiNode=roiNode,
                            segmentName=roiNode.GetAttribute(STRUCTURE_ATTRIBUTE))

    # --- display ------------------------------------------------------------------------------------------------------
    def _setStatus(self, text):
        self.ui.statusLabel.text = text
        logging.info("MedLAMLocalize: %s", text)

    def _updateButtons(self, *unused):
        idle = not self._jobs
        self.ui.addStructureButton.enabled = (idle and self.ui.templateVolumeSelector.currentNode() is not None
                                              and bool(self.ui.structureNameEdit.text.strip())
                                              and self._placedPoints() == len(POINT_LABELS))
        haveTemplates = self.logic is not None and bool(self.logic.template_set.templates)
        haveQuery = self.ui.allVolumesCheckBox.checked or self.ui.queryVolumeSelector.currentNode() is not None
        self.ui.queryVolumeSelector.enabled = not self.ui.allVolumesCheckBox.checked
        self.ui.localizeButton.enabled = idle and haveTemplates and haveQuery
        self.ui.cancelButton.enabled = not idle
        self.ui.saveTemplateSetButton.enabled = idle and haveTemplates
        self.ui.loadTemplateSetButton.enabled = idle
        self.ui.sendToSegButton.enabled = self._selectedRoiNode() is not None and hasattr(slicer.modules,
                                                                                          "medfoundationseg")


class MedLAMLocalizeTest(ScriptedLoadableModuleTest):
    """Runs inside 3D Slicer only (Reload & Test, or Slicer --testing; see the README): the real widget, the real
    worker and the registration engine (no weights needed) on a phantom template and a moved copy of it."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_template_then_localize()

    def _waitForJobs(self, widget, timeoutSeconds=600):
        import time

        start = time.time()
        while widget.isBusy():
            slicer.app.processEvents()
            time.sleep(0.02)
            self.assertLess(time.time() - start, timeoutSeconds, "localization did not finish in time")
        slicer.app.processEvents()
        self.assertIsNone(widget.lastError, widget.lastError)

    def test_template_then_localize(self):
        # size-waiver: one user story in real Slicer (place points, add, localize, send the box), kept as one test
        import numpy as np
        from MedFoundationSegLib.core.volume import Volume, write_volume
        from MedFoundationSegLib.localize.templates import structure_points_from_mask
        from MedFoundationSegLib.sampledata.phantoms import make_phantom
        from MedFoundationSegLogic import mrml_bridge

        self.delayDisplay("Writing a phantom template and a moved copy of it, then loading both")
        phantom = make_phantom(1, (40, 96, 96))
        shift = np.array([12.0, -7.0, 9.0])
        moved = Volume(phantom.image.array, phantom.image.spacing_mm,
                       tuple(np.asarray(phantom.image.origin_lps_mm, float) + shift), phantom.image.direction, "query")
        folder = slicer.app.temporaryPath
        templatePath = os.path.join(folder, "MedLAMLocalizeTest_template.nrrd")
        queryPath = os.path.join(folder, "MedLAMLocalizeTest_query.nrrd")
        write_volume(phantom.image, templatePath, overwrite=True)
        write_volume(moved, queryPath, overwrite=True)
        templateNode = slicer.util.loadVolume(templatePath, {"name": "template"})
        queryNode = slicer.util.loadVolume(queryPath, {"name": "query"})

        slicer.util.selectModule("MedLAMLocalize")
        widget = slicer.modules.medlamlocalize.widgetRepresentation().self()
        self.assertIsNotNone(widget._ensureLogic(), "dependencies are not installed")
        widget.ui.templateVolumeSelector.setCurrentNode(templateNode)
        widget.ui.structureNameEdit.text = "liver"
        pointsNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "ExtremePoints")
        widget.ui.extremePointsSelector.setCurrentNode(pointsNode)

        self.delayDisplay("Placing the 6 extreme points, guided point by point")
        pointsRas = mrml_bridge.ras_from_lps(structure_points_from_mask(phantom.labels, phantom.mask("liver")))
        for index, point in enumerate(pointsRas):
            self.assertIn(f"({index + 1}/6)", widget.ui.nextPointLabel.text)
            self.assertFalse(widget.ui.addStructureButton.enabled)
            pointsNode.AddControlPoint(vtk.vtkVector3d(*point))
            slicer.app.processEvents()
        self.assertIn("All 6", widget.ui.nextPointLabel.text)
        self.assertEqual([pointsNode.GetNthControlPointLabel(i) for i in range(6)], list(POINT_LABELS))
        self.assertTrue(widget.ui.addStructureButton.enabled)
        widget.ui.addStructureButton.click()
        self.assertIsNone(widget.lastError, widget.lastError)
        self.assertEqual(widget.logic.template_set.structures(), ["liver"])
        self.assertEqual(widget.ui.templateTable.rowCount, 1)

        self.delayDisplay("Localizing in the moved copy with the registration engine")
        widget.ui.allVolumesCheckBox.checked = False
        widget.ui.queryVolumeSelector.setCurrentNode(queryNode)
        widget.ui.engineComboBox.currentIndex = ENGINES.index("registration")
        self.assertIn("registration", widget.ui.engineStatusLabel.text)
        widget.ui.localizeButton.click()
        self.assertTrue(widget.isBusy(), widget.lastError)  # returned at once: the engine runs on the worker
        self._waitForJobs(widget)

        rois = [node for node in slicer.util.getNodesByClass("vtkMRMLMarkupsROINode")
                if node.GetAttribute("MedLAMLocalize.Structure") == "liver"]
        self.assertEqual(len(rois), 1)
        bounds = mrml_bridge.roi_bounds_ras(rois[0])
        k, j, i = np.nonzero(phantom.mask("liver"))
        truthRas = mrml_bridge.ras_from_lps(moved.lps_from_ijk(np.stack([i, j, k], 1)))
        toleranceMm = 1.5 * max(moved.spacing_mm)
        self.assertTrue(np.all(bounds[0] <= truthRas.min(0) + toleranceMm), (bounds, truthRas.min(0)))
        self.assertTrue(np.all(truthRas.max(0) - toleranceMm <= bounds[1]), (bounds, truthRas.max(0)))
        self.assertEqual(widget.ui.resultsTable.rowCount, 1)
        self.assertEqual(widget.ui.resultsTable.item(0, 2).text(), "found")

        self.delayDisplay("Sending the box to MedFoundationSeg")
        widget.ui.resultsTable.selectRow(0)
        self.assertTrue(widget.ui.sendToSegButton.enabled)
        widget.ui.sendToSegButton.click()
        segWidget = slicer.modules.medfoundationseg.widgetRepresentation().self()
        self.assertEqual(segWidget.ui.roiSelector.currentNode().GetID(), rois[0].GetID())
        self.assertEqual(segWidget.ui.inputVolumeSelector.currentNode().GetID(), queryNode.GetID())
