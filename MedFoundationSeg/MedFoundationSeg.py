"""3D Slicer module MedFoundationSeg: box -> 3D mask with SAM-family models, slice propagation, click/scribble refinement.

The Widget is thin: it reads the panel, asks MedFoundationSegLogic to prepare an action (GUI thread), runs the
action's ``compute`` on ONE persistent background worker (the GUI stays responsive, progress and Cancel work), then
lets the Logic apply the result on the GUI thread (undoable, only into the chosen segment). Nothing heavy is imported
at module load: torch and the engine are imported inside methods, after the dependency check.
"""

# size-waiver: Slicer loads a scripted module's Module, Widget and Test classes from this one file; the Widget only
# reads the panel and calls MedFoundationSegLogic.

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
SETTINGS_GROUP = "MedFoundationSeg"
CACHE_ENV = "MEDFOUNDATIONSEG_CACHE"  # read by MedFoundationSegLib.core.weights
# Combo box rows -> Options values (same order as the items in MedFoundationSeg.ui). The panel's "guided" row is the
# engine's box_guided mode for a box (its drawn-segment propagation uses the stop rules throughout).
PROPAGATION_MODES = ("box_guided", "every_k", "reference")
REFINE_METHODS = ("graphcut", "geodesic", "growcut")
DISPLAY_WINDOW = "display"  # window preset item that means "what the slice views show"


class MedFoundationSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedFoundationSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedFoundationSeg developers"]
        self.parent.helpText = (
            "Turn a box (ROI) into a 3D mask with SAM-family box-prompt models (SAM, MedSAM, MobileSAM, LiteMedSAM), "
            "propagate a segment from the current slice, fill between annotated slices, and refine with include/"
            "exclude clicks and scribbles. Every AI edit runs in the background, writes only into the chosen segment "
            "and can be undone."
        )
        self.parent.acknowledgementText = (
            "MedLAM/MedLSAM (Lei et al., arXiv 2306.14752), Segment Anything (Kirillov et al.), MedSAM and "
            "LiteMedSAM (Ma et al.), MobileSAM (Zhang et al.)."
        )


class MedFoundationSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._job = None
        self._onJobDone = None
        self._jobAction = None  # the PreparedAction of the running job (its slices are drawn as they come)
        self._timer = None
        self.lastError = None  # message of the last failed action (read by the self-test)
        self._segmentNameHint = None

    # --- construction -------------------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from MedFoundationSegLogic.compatibility import slicer_version_problem

        problem = slicer_version_problem(slicer.app.majorVersion, slicer.app.minorVersion, sys.version_info)
        if problem:  # say so in the panel instead of failing on the first import of the engine
            self.layout.addWidget(qt.QLabel(problem))
            logging.error(problem)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedFoundationSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        for placeWidget in (self.ui.positiveClicksPlaceWidget, self.ui.negativeClicksPlaceWidget):
            placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.cacheDirEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.headsFolderEdit.filters = ctk.ctkPathLineEdit.Dirs

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self._pollJob)

        self._restoreSettings()
        self._fillEngineLists()

        self.ui.inputVolumeSelector.currentNodeChanged.connect(self._updateButtons)
        self.ui.segmentSelector.currentNodeChanged.connect(self._onSegmentationChanged)
        self.ui.segmentSelector.currentSegmentChanged.connect(self._updateButtons)
        self.ui.roiSelector.currentNodeChanged.connect(self._updateButtons)
        self.ui.positiveClicksSelector.currentNodeChanged.connect(self.ui.positiveClicksPlaceWidget.setCurrentNode)
        self.ui.negativeClicksSelector.currentNodeChanged.connect(self.ui.negativeClicksPlaceWidget.setCurrentNode)
        self.ui.positiveClicksSelector.currentNodeChanged.connect(self._updateButtons)
        self.ui.negativeClicksSelector.currentNodeChanged.connect(self._updateButtons)
        self.ui.scribbleCheckBox.toggled.connect(self.ui.scribbleSegmentSelector.setEnabled)
        self.ui.scribbleCheckBox.toggled.connect(self._updateButtons)
        self.ui.modelComboBox.currentIndexChanged.connect(self._onModelChanged)
        self.ui.deviceComboBox.currentIndexChanged.connect(self._saveSettings)
        self.ui.embeddingBudgetSpinBox.valueChanged.connect(self._saveSettings)
        self.ui.cacheDirEdit.currentPathChanged.connect(self._onCacheDirChanged)
        self.ui.engineApplyButton.clicked.connect(self.onEngineApply)

        self.ui.fetchWeightsButton.clicked.connect(self.onFetchWeights)
        self.ui.segmentInRoiButton.clicked.connect(self.onSegmentInRoi)
        self.ui.propagateButton.clicked.connect(lambda: self.onPropagate(outwardOnly=False))
        self.ui.repropagateButton.clicked.connect(lambda: self.onPropagate(outwardOnly=True))
        self.ui.fillBetweenButton.clicked.connect(self.onFillBetween)
        self.ui.rerunButton.clicked.connect(self.onRerun)
        self.ui.refineButton.clicked.connect(self.onRefine)
        self.ui.paintScribblesButton.clicked.connect(self.onPaintScribbles)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.undoButton.clicked.connect(self.onUndo)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self._updateButtons()

    def cleanup(self):
        if self._timer is not None:
            self._timer.stop()
        if self._job is not None:
            self._job.cancel()
        if self.logic is not None:
            self.logic.clear_preview()
        self.removeObservers()

    def onSceneStartClose(self, caller=None, event=None):
        """A closed scene takes the nodes of the undo history with it; the model caches stay warm."""
        if self._job is not None:
            self._job.cancel()
        if self.logic is not None:
            from MedFoundationSegLogic.segment_edits import SegmentEditHistory

            self.logic.clear_preview()
            self.logic.history = SegmentEditHistory(slicer.mrmlScene)
        self._updateButtons()

    # --- settings -------------------------------------------------------------------------------------------------
    def _settingsKey(self, name):
        return f"{SETTINGS_GROUP}/{name}"

    def _restoreSettings(self):
        settings = qt.QSettings()
        cacheDir = str(settings.value(self._settingsKey("CacheDir"), "") or "")
        if cacheDir:
            os.environ[CACHE_ENV] = cacheDir
        self.ui.cacheDirEdit.currentPath = os.environ.get(CACHE_ENV, "")
        self.ui.engineUrlEdit.text = str(settings.value(self._settingsKey("EngineUrl"), "") or "")
        self.ui.enginePythonEdit.currentPath = str(settings.value(self._settingsKey("EnginePython"), "") or "")
        self.ui.headsFolderEdit.currentPath = str(settings.value(self._settingsKey("HeadsFolder"), "") or "")
        budget = settings.value(self._settingsKey("EmbeddingBudgetMB"), "")
        if str(budget).isdigit():
            self.ui.embeddingBudgetSpinBox.value = int(budget)
        device = str(settings.value(self._settingsKey("Device"), "") or "")
        index = self.ui.deviceComboBox.findText(device) if device else -1
        if index >= 0:
            self.ui.deviceComboBox.currentIndex = index

    def onEngineApply(self):
        """Use the engine given under Advanced (remote URL + token, or a local engine with another Python)."""
        from MedFoundationSegLogic import engine_process

        url, python = self.ui.engineUrlEdit.text, self.ui.enginePythonEdit.currentPath
        try:
            with slicer.util.tryWithErrorDisplay("Cannot use this engine.", waitCursor=True):
                engine = engine_process.configure_engine(url, self.ui.engineTokenEdit.text, python)
                self.ui.engineStatusLabel.text = engine_process.describe(engine)
        except Exception as error:
            self.ui.engineStatusLabel.text = f"Engine: not reachable ({error})"
            return
        settings = qt.QSettings()
        settings.setValue(self._settingsKey("EngineUrl"), url)
        settings.setValue(self._settingsKey("EnginePython"), python)

    def _saveSettings(self, *unused):
        settings = qt.QSettings()
        settings.setValue(self._settingsKey("EmbeddingBudgetMB"), str(self.ui.embeddingBudgetSpinBox.value))
        settings.setValue(self._settingsKey("Device"), self.ui.deviceComboBox.currentText)
        if self.ui.modelComboBox.currentText:
            settings.setValue(self._settingsKey("Model"), self.ui.modelComboBox.currentText)

    def _onCacheDirChanged(self, path):
        """The weights cache folder: remembered in Slicer's settings and handed to the engine via the environment."""
        path = str(path).strip()
        qt.QSettings().setValue(self._settingsKey("CacheDir"), path)
        if path:
            os.environ[CACHE_ENV] = path
        else:
            os.environ.pop(CACHE_ENV, None)
        self._onModelChanged()

    def _fillEngineLists(self):
        """Model list from the registry and window presets from window_presets.yaml (when the packages exist)."""
        from MedFoundationSegLogic import dependencies

        missing = dependencies.missing_modules(modules=("yaml", "numpy"))
        self.ui.windowPresetComboBox.clear()
        self.ui.windowPresetComboBox.addItem("automatic (CT window or MR percentiles)", "auto")
        if missing:
            self.ui.weightsStatusLabel.text = ("Python packages are missing (" + ", ".join(missing) + "); they are "
                                               "installed on first use.")
            return
        from MedFoundationSegLib.core import weights
        from MedFoundationSegLib.segment import intensity

        for name, preset in intensity.load_presets()["presets"].items():
            self.ui.windowPresetComboBox.addItem(preset.get("title", name), name)
        self.ui.windowPresetComboBox.addItem("current display window/level", DISPLAY_WINDOW)
        wasBlocked = self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for name in weights.model_names(kind="box-prompt"):
            self.ui.modelComboBox.addItem(name)
        saved = str(qt.QSettings().value(self._settingsKey("Model"), "litemedsam") or "litemedsam")
        index = self.ui.modelComboBox.findText(saved)
        self.ui.modelComboBox.currentIndex = max(index, 0)
        self.ui.modelComboBox.blockSignals(wasBlocked)
        self._onModelChanged()

    def _onModelChanged(self, *unused):
        name = self.ui.modelComboBox.currentText
        if not name:
            return
        from MedFoundationSegLib.core import weights

        try:
            path, status = weights.cached_status(name)
        except Exception as error:  # an unreadable cache folder must not break the panel
            path, status = None, f"unknown ({error})"
        ready = status.startswith("ok")
        self.ui.weightsStatusLabel.text = f"Weights: {status}" + (f" ({path})" if ready else "")
        self.ui.fetchWeightsButton.enabled = not ready and self._job is None
        self.ui.fetchWeightsButton.text = "Re-download weights" if status.startswith("corrupt") else "Download weights"
        self._saveSettings()
        self._updateButtons()

    def _weightsReady(self):
        from MedFoundationSegLib.core import weights

        return weights.cached_status(self.ui.modelComboBox.currentText)[1].startswith("ok")

    # --- logic, worker, dependencies --------------------------------------------------------------------------------
    def _ensureLogic(self):
        """Dependencies checked (one confirmation, then install), then the Logic created once for the session."""
        if self.logic is not None:
            return self.logic
        from MedFoundationSegLogic import dependencies

        if not dependencies.slicer_ensure_dependencies("MedFoundationSeg"):
            self._setStatus("Python packages are missing: the action needs them installed (or Slicer restarted).")
            return None
        from MedFoundationSegLogic.logic import MedFoundationSegLogic

        if self.ui.modelComboBox.count == 0:
            self._fillEngineLists()
        python = self.ui.enginePythonEdit.currentPath
        if python and not self.ui.engineUrlEdit.text:  # a saved local-engine Python (a remote engine needs its token)
            from MedFoundationSegLogic import engine_process

            engine_process.configure_engine("", "", python)
        self.logic = MedFoundationSegLogic(slicer.mrmlScene)
        return self.logic

    def _syncOptions(self, volumeNode):
        """Copy the panel's choices into the Logic's options (one Options value, as the CLI uses)."""
        window = self.ui.windowPresetComboBox.itemData(self.ui.windowPresetComboBox.currentIndex) or "auto"
        if window == DISPLAY_WINDOW:
            displayNode = volumeNode.GetDisplayNode() if volumeNode else None
            if displayNode is None:
                raise ValueError("the volume has no display window/level; pick another intensity window")
            window = {"level": float(displayNode.GetLevel()), "width": float(displayNode.GetWindow())}
        self.logic.options = self.logic.options.replace(
            model=self.ui.modelComboBox.currentText or self.logic.options.model,
            device=self.ui.deviceComboBox.currentText or "auto", window=window,
            padding_mm=float(self.ui.boxPaddingSpinBox.value),
            mode=PROPAGATION_MODES[max(self.ui.propagationModeComboBox.currentIndex, 0)],
            refine=REFINE_METHODS[max(self.ui.refineMethodComboBox.currentIndex, 0)],
            cache_mb=int(self.ui.embeddingBudgetSpinBox.value), learn=bool(self.ui.learnCheckBox.checked),
            click_reach_mm=None if self.ui.clickReachSpinBox.value < 0 else float(self.ui.clickReachSpinBox.value))
        self.logic.set_heads_folder(self.ui.headsFolderEdit.currentPath or None)
        qt.QSettings().setValue(self._settingsKey("HeadsFolder"), self.ui.headsFolderEdit.currentPath)

    # --- inputs -------------------------------------------------------------------------------------------------------
    def setInputs(self, volumeNode=None, roiNode=None, segmentName=None):
        """Used by MedLAMLocalize's "Send box to MedFoundationSeg"."""
        if volumeNode is not None:
            self.ui.inputVolumeSelector.setCurrentNode(volumeNode)
        if roiNode is not None:
            self.ui.roiSelector.setCurrentNode(roiNode)
        self._segmentNameHint = (roiNode.GetID(), segmentName) if roiNode is not None and segmentName else None
        self._updateButtons()

    def _onSegmentationChanged(self, node):
        self.ui.scribbleSegmentSelector.setCurrentNode(node)
        self._updateButtons()

    def _segmentationNode(self, volumeNode, create=True):
        node = self.ui.segmentSelector.currentNode()
        if node is None and create:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
            node.CreateDefaultDisplayNodes()
            if volumeNode is not None:
                node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            self.ui.segmentSelector.setCurrentNode(node)
        return node

    def _selectedSegmentId(self):
        segmentId = self.ui.segmentSelector.currentSegmentID()
        return segmentId if segmentId else None

    def _requireSegment(self):
        segmentId = self._selectedSegmentId()
        if segmentId is None:
            raise ValueError("select the segment to work on (Segment selector)")
        return segmentId

    def currentSliceIndex(self, volumeNode):
        """Index of the Red slice view's plane along the engine's slice axis (through the volume's RAS-to-IJK)."""
        sliceNode = None
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.sliceWidget("Red") is not None:
            sliceNode = layoutManager.sliceWidget("Red").mrmlSliceNode()
        if sliceNode is None:
            sliceNode = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed")
        if sliceNode is None:
            raise ValueError("there is no Red slice view to take the current slice from")
        sliceToRas = sliceNode.GetSliceToRAS()
        centerRas = [sliceToRas.GetElement(row, 3) for row in range(3)] + [1.0]
        rasToIjk = vtk.vtkMatrix4x4()
        volumeNode.GetRASToIJKMatrix(rasToIjk)
        ijk = rasToIjk.MultiplyPoint(centerRas)
        from MedFoundationSegLib.core.geometry import slice_frame

        axisIjk = slice_frame(self.logic.options.axis if self.logic else "axial").ijk_axis
        index = int(round(ijk[axisIjk]))
        size = volumeNode.GetImageData().GetDimensions()[axisIjk]
        if not 0 <= index < size:
            raise ValueError(f"the Red slice view shows slice {index}, outside the volume (0..{size - 1}); "
                             "scroll it onto the segment first")
        return index

    # --- actions ----------------------------------------------------------------------------------------------------
    def _startAction(self, prepare, segmentName="AI segment", color=(0.9, 0.6, 0.2), needsModel=True):
        """prepare(logic, volumeNode, segmentationNode) -> PreparedAction, on the GUI thread; compute on the worker."""
        logic = self._ensureLogic()
        if logic is None or self._job is not None:
            return
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        self.lastError = None
        try:
            with slicer.util.tryWithErrorDisplay("Cannot start the action.", waitCursor=True):
                self._syncOptions(volumeNode)
                if needsModel and not self._weightsReady():
                    raise ValueError(f"weights of {logic.options.model} are not downloaded yet: click "
                                     "'Download weights' first")
                segmentationNode = self._segmentationNode(volumeNode)
                prepared = prepare(logic, volumeNode, segmentationNode)
        except Exception as error:  # already shown to the user by tryWithErrorDisplay
            self.lastError = str(error)
            self._setStatus(f"Not started: {error}")
            return

        def done(job):
            if job.error is not None:
                return
            edit = logic.apply(prepared, job.result, segment_name=segmentName, color_rgb=color)
            self.ui.segmentSelector.setCurrentSegmentID(edit.segment_id)
            protected = (f"; {edit.voxels_protected} voxels left to other segments" if edit.voxels_protected else "")
            warning = f" Note: {logic.head_warning}." if logic.head_warning else ""
            self._setStatus(f"{prepared.action}: {edit.voxels_written} voxels written{protected}.{warning}")
            self._showReport(job.result.meta.get("report", {}))

        try:
            job = prepared.start()
        except Exception as error:  # the engine could not be started or reached: the scene is untouched
            self.lastError = f"{prepared.action}: {error}"
            self._setStatus(self.lastError)
            return
        self._watch(job, done, prepared)

    def onSegmentInRoi(self):
        roiNode = self.ui.roiSelector.currentNode()
        name = "AI segment"
        color = (0.9, 0.6, 0.2)
        if roiNode is not None:
            hint = self._segmentNameHint[1] if self._segmentNameHint and self._segmentNameHint[0] == roiNode.GetID() \
                else None
            from MedFoundationSegLogic.node_attributes import STRUCTURE_ATTRIBUTE

            name = hint or roiNode.GetAttribute(STRUCTURE_ATTRIBUTE) or roiNode.GetName()
            if roiNode.GetDisplayNode() is not None:
                color = tuple(roiNode.GetDisplayNode().GetSelectedColor())
        newSegment = self.ui.newSegmentCheckBox.checked
        self._startAction(lambda logic, volume, segmentation: logic.prepare_segment_in_roi(
            volume, roiNode, segmentation, None if newSegment else self._selectedSegmentId()), name, color)

    def onPropagate(self, outwardOnly=False):
        def prepare(logic, volume, segmentation):
            if volume is None:
                raise ValueError("select an input volume")
            return logic.prepare_propagation(volume, segmentation, self._requireSegment(),
                                             self.currentSliceIndex(volume), outward_only=outwardOnly)

        self._startAction(prepare)

    def onFillBetween(self):
        self._startAction(lambda logic, volume, segmentation: logic.prepare_fill_between(
            volume, segmentation, self._requireSegment()), needsModel=False)

    def onRerun(self):
        """Rebuild the selected segment's action from its stored prompts (edited box/clicks are read again)."""
        segmentationNode = self.ui.segmentSelector.currentNode()
        segmentId = self._selectedSegmentId()
        needsModel = True
        if segmentationNode is not None and segmentId:
            from MedFoundationSegLogic import mrml_bridge

            needsModel = mrml_bridge.get_segment_prompts(segmentationNode, segmentId).get("action") != \
                "fill between slices"
        self._startAction(lambda logic, volume, segmentation: logic.prepare_rerun(
            volume, segmentation, self._requireSegment()), needsModel=needsModel)

    def onRefine(self):
        scribbleId = None
        if self.ui.scribbleCheckBox.checked:
            scribbleId = self.ui.scribbleSegmentSelector.currentSegmentID() or None

        def prepare(logic, volume, segmentation):
            segmentId = self._requireSegment()
            if scribbleId == segmentId:
                raise ValueError("the scribble segment must be another segment than the one being refined")
            return logic.prepare_refine(volume, segmentation, segmentId,
                                        positive_node=self.ui.positiveClicksSelector.currentNode(),
                                        negative_node=self.ui.negativeClicksSelector.currentNode(),
                                        scribble_segment_id=scribbleId)

        self._startAction(prepare)

    def onPaintScribbles(self):
        """A scratch "scribbles" segment, opened in the Segment Editor's Paint effect."""
        volumeNode = self.ui.inputVolumeSelector.currentNode()
        with slicer.util.tryWithErrorDisplay("Cannot open the Segment Editor.", waitCursor=True):
            if volumeNode is None:
                raise ValueError("select an input volume first")
            segmentationNode = self._segmentationNode(volumeNode)
            segmentation = segmentationNode.GetSegmentation()
            scribbleId = self.ui.scribbleSegmentSelector.currentSegmentID()
            if not scribbleId or scribbleId == self._selectedSegmentId():
                scribbleId = segmentation.GetSegmentIdBySegmentName("scribbles")
            if not scribbleId:
                scribbleId = segmentation.AddEmptySegment("", "scribbles", [1.0, 1.0, 0.0])
            self.ui.scribbleCheckBox.checked = True
            self.ui.scribbleSegmentSelector.setCurrentNode(segmentationNode)
            self.ui.scribbleSegmentSelector.setCurrentSegmentID(scribbleId)
            slicer.util.selectModule("SegmentEditor")
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            editor.setSegmentationNode(segmentationNode)
            if hasattr(editor, "setSourceVolumeNode"):
                editor.setSourceVolumeNode(volumeNode)
            else:  # Slicer before 5.4
                editor.setMasterVolumeNode(volumeNode)
            editor.setCurrentSegmentID(scribbleId)
            editor.setActiveEffectByName("Paint")

    def onFetchWeights(self):
        from MedFoundationSegLogic import dependencies

        name = self.ui.modelComboBox.currentText
        if not name or self._job is not None:
            return
        if dependencies.missing_modules(modules=("yaml", "requests")) and not self._ensureLogic():
            return

        def done(job):
            if job.error is None:
                helper = job.result.meta.get("click_model_path")
                self._setStatus(f"Weights of {name} downloaded and verified: {job.result.meta['path']}"
                                + (f" (and of the model that answers its clicks: {helper})" if helper else ""))
            self._onModelChanged()

        from MedFoundationSegLib.workflow.actions import EngineRequest

        try:
            job = self._ensureLogic().engine.submit(EngineRequest("fetch_weights", params={"name": name}),
                                                    f"download {name}")
        except Exception as error:
            self._setStatus(f"Download not started: {error}")
            return
        self._watch(job, done)

    def onUndo(self):
        if self.logic is None or self._job is not None:
            return
        action = self.logic.undo()
        self._setStatus(f"Undone: {action}." if action else "Nothing to undo (or its nodes were deleted).")
        self._updateButtons()

    def onCancel(self):
        if self._job is not None:
            self._job.cancel()
            self._setStatus(f"Cancelling {self._job.name} at the next step...")

    # --- job polling (GUI thread) -----------------------------------------------------------------------------------
    def _watch(self, job, onDone, prepared=None):
        """Poll ``job`` (an engine job) with the QTimer; ``onDone(job)`` runs on the GUI thread when it ends. With
        ``prepared`` (a segmentation action) the slices the job finishes are drawn as they come."""
        self._job = job
        self._onJobDone = onDone
        self._jobAction = prepared
        name = job.name
        self.ui.progressBar.value = 0
        self.ui.stopReasonsText.plainText = ""
        self._setStatus(f"{name}: started")
        self._updateButtons()
        self._timer.start()

    def isBusy(self):
        return self._job is not None

    def _pollJob(self):
        job = self._job
        if job is None:
            self._timer.stop()
            return
        self.ui.progressBar.value = int(round(100 * job.fraction))
        self.ui.statusLabel.text = f"{job.name}: {job.message}"
        if not job.done:
            self._showPreview(job)
            return
        self._timer.stop()
        onDone, self._job, self._onJobDone, self._jobAction = self._onJobDone, None, None, None
        if self.logic is not None:
            self.logic.clear_preview()  # before the result is written: the scratch node never lingers
        try:
            if job.cancelled:
                self._setStatus(f"{job.name}: cancelled; nothing was written.")
            elif job.error is not None:
                self.lastError = f"{job.name} failed: {job.error}"
                self._setStatus(self.lastError)
                if not slicer.app.testingEnabled():
                    slicer.util.errorDisplay(self.lastError, detailedText=job.error_traceback)
            onDone(job)
        except Exception as error:  # applying to the scene failed: report, never leave the panel busy
            import traceback

            self.lastError = f"{job.name}: could not apply the result: {error}"
            self._setStatus(self.lastError)
            logging.error(traceback.format_exc())
            if not slicer.app.testingEnabled():
                slicer.util.errorDisplay(self.lastError, detailedText=traceback.format_exc())
        finally:
            self.ui.progressBar.value = 100 if job.error is None else 0
            self._updateButtons()

    def _showPreview(self, job):
        if self._jobAction is None or self.logic is None:
            return
        try:
            shown = self.logic.show_preview(self._jobAction, job)
        except Exception as error:  # a preview is never worth stopping the job for
            logging.warning(f"MedFoundationSeg: slice preview failed: {error}")
            return
        if shown:
            self.ui.statusLabel.text = f"{job.name}: {job.message} ({shown} slices shown)"

    # --- display ------------------------------------------------------------------------------------------------------
    def _setStatus(self, text):
        self.ui.statusLabel.text = text
        logging.info("MedFoundationSeg: %s", text)

    def _showReport(self, report):
        """Why propagations and corrections stopped where they did, and a one-line summary (workflow.results)."""
        from MedFoundationSegLib.workflow.results import report_lines

        self.ui.stopReasonsText.plainText = "\n".join(report_lines(report))

    def _hasStoredPrompts(self):
        segmentationNode = self.ui.segmentSelector.currentNode()
        segment = segmentationNode.GetSegmentation().GetSegment(self._selectedSegmentId() or "") \
            if segmentationNode is not None else None
        from MedFoundationSegLogic.node_attributes import PROMPTS_TAG

        return segment is not None and segment.HasTag(PROMPTS_TAG)

    def _updateButtons(self, *unused):
        idle = self._job is None
        haveVolume = self.ui.inputVolumeSelector.currentNode() is not None
        haveSegment = self.ui.segmentSelector.currentNode() is not None and bool(self._selectedSegmentId())
        haveClicks = (self.ui.positiveClicksSelector.currentNode() is not None
                      or self.ui.negativeClicksSelector.currentNode() is not None)
        self.ui.segmentInRoiButton.enabled = idle and haveVolume and self.ui.roiSelector.currentNode() is not None
        self.ui.propagateButton.enabled = idle and haveVolume and haveSegment
        self.ui.repropagateButton.enabled = idle and haveVolume and haveSegment
        self.ui.fillBetweenButton.enabled = idle and haveVolume and haveSegment
        self.ui.rerunButton.enabled = idle and haveVolume and haveSegment and self._hasStoredPrompts()
        self.ui.refineButton.enabled = idle and haveVolume and haveSegment and (
            haveClicks or self.ui.scribbleCheckBox.checked)
        self.ui.cancelButton.enabled = not idle
        self.ui.undoButton.enabled = idle and self.logic is not None and len(self.logic.history) > 0
        if not idle:
            self.ui.fetchWeightsButton.enabled = False


class MedFoundationSegTest(ScriptedLoadableModuleTest):
    """Runs inside 3D Slicer only (Reload & Test, or Slicer --testing; see the README). Uses the real widget, the
    real worker and the real model (LiteMedSAM weights are downloaded on first run)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_in_box_then_undo()
        self.setUp()
        self.test_propagate_from_red_slice()

    # helpers
    def _widget(self):
        slicer.util.selectModule("MedFoundationSeg")
        widget = slicer.modules.medfoundationseg.widgetRepresentation().self()
        self.assertIsNotNone(widget._ensureLogic(), "dependencies are not installed")
        return widget

    def _waitForJob(self, widget, timeoutSeconds=900):
        import time

        start = time.time()
        while widget.isBusy():
            slicer.app.processEvents()
            time.sleep(0.02)
            self.assertLess(time.time() - start, timeoutSeconds, "the background job did not finish in time")
        slicer.app.processEvents()
        self.assertIsNone(widget.lastError, widget.lastError)

    def _phantomScene(self, widget):
        """A CT-like phantom written to a temporary file and loaded the way a user loads data."""
        import numpy as np
        from MedFoundationSegLib.core.volume import write_volume
        from MedFoundationSegLib.sampledata.phantoms import make_phantom

        phantom = make_phantom(3, (48, 128, 128))
        path = os.path.join(slicer.app.temporaryPath, "MedFoundationSegTest_phantom.nrrd")
        write_volume(phantom.image, path, overwrite=True)
        volumeNode = slicer.util.loadVolume(path, {"name": "phantom"})
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        widget.ui.inputVolumeSelector.setCurrentNode(volumeNode)
        widget.ui.segmentSelector.setCurrentNode(segmentationNode)
        widget.ui.modelComboBox.currentIndex = widget.ui.modelComboBox.findText("litemedsam")
        if not widget._weightsReady():
            self.delayDisplay("Downloading LiteMedSAM weights through the module's button")
            widget.ui.fetchWeightsButton.click()
            self._waitForJob(widget)
            self.assertTrue(widget._weightsReady())
        liver = np.asarray(phantom.mask("liver"), bool)  # (k, j, i)
        return phantom, volumeNode, segmentationNode, liver

    def test_segment_in_box_then_undo(self):
        import numpy as np
        from MedFoundationSegLogic import mrml_bridge

        widget = self._widget()
        phantom, volumeNode, segmentationNode, liver = self._phantomScene(widget)
        k, j, i = np.nonzero(liver)
        boxIjk = np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])
        roiNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "liver box")
        mrml_bridge.set_roi_bounds_ras(roiNode, mrml_bridge.ras_bounds_from_ijk_box(phantom.image, boxIjk))
        widget.ui.roiSelector.setCurrentNode(roiNode)
        widget.ui.newSegmentCheckBox.checked = True
        self.assertTrue(widget.ui.segmentInRoiButton.enabled)

        self.delayDisplay("Segment inside the box, on the background worker")
        widget.ui.segmentInRoiButton.click()
        self.assertTrue(widget.isBusy(), widget.lastError)  # returned at once: the work runs on the worker
        self._waitForJob(widget)
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        segmentId = segmentation.GetNthSegmentID(0)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
        self.assertGreater(int(mask.sum()), 0)
        precision = (mask & liver).sum() / mask.sum()
        self.assertGreater(precision, 0.5, f"only {precision:.2f} of the AI segment lies in the liver")
        self.assertEqual(mrml_bridge.get_segment_prompts(segmentationNode, segmentId).get("action"), "segment in box")
        self.assertTrue(widget.ui.undoButton.enabled)

        self.delayDisplay("Undo removes the AI segment")
        widget.ui.undoButton.click()
        self.assertEqual(segmentation.GetNumberOfSegments(), 0)
        self.assertFalse(widget.ui.undoButton.enabled)

    def test_propagate_from_red_slice(self):
        import numpy as np
        from MedFoundationSegLogic import mrml_bridge

        widget = self._widget()
        phantom, volumeNode, segmentationNode, liver = self._phantomScene(widget)
        counts = liver.sum(axis=(1, 2))
        seedK = int(np.argmax(counts))
        seed = np.zeros_like(liver)
        seed[seedK] = liver[seedK]
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("", "liver", [0.8, 0.3, 0.2])
        slicer.util.updateSegmentBinaryLabelmapFromArray(seed.astype(np.uint8), segmentationNode, segmentId,
                                                         volumeNode)
        widget.ui.segmentSelector.setCurrentSegmentID(segmentId)

        sliceNode = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed")
        if sliceNode is None:  # --no-main-window: no views, so add the Red slice node the layout would create
            sliceNode = slicer.vtkMRMLSliceNode()
            sliceNode.SetName("Red")
            sliceNode.SetLayoutName("Red")
            sliceNode.SetSingletonTag("Red")  # a new slice node's SliceToRAS is the identity: an axial view
            sliceNode = slicer.mrmlScene.AddNode(sliceNode)
        j, i = np.argwhere(seed[seedK]).mean(0)
        centerRas = mrml_bridge.ras_from_lps(phantom.image.lps_from_ijk([[i, j, seedK]]))[0]
        sliceNode.JumpSliceByOffsetting(*centerRas)
        self.assertEqual(widget.currentSliceIndex(volumeNode), seedK)

        self.delayDisplay("Propagate from the Red slice")
        widget.ui.propagateButton.click()
        self._waitForJob(widget)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
        self.assertGreater(int(mask.any(axis=(1, 2)).sum()), 1, "propagation stayed on the seed slice")
        self.assertGreaterEqual((mask[seedK] & seed[seedK]).sum(), 0.9 * seed[seedK].sum())
        self.assertNotEqual(widget.ui.stopReasonsText.plainText, "")

        widget.ui.undoButton.click()
        restored = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
        self.assertTrue(np.array_equal(restored, seed))
