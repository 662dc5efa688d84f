"""What the modules' Qt widgets share (used only inside Slicer; imports no Qt).

:class:`ParameterNodeBinding` is the parameter-node part of Slicer's scripted-module template
(bind ``self.ui`` to the node, observe it, rebind on enter, scene close and reopen);
:class:`RunControls` drives a logic's background run from the panel (a timer polls it, the
start button becomes Cancel, a progress bar and status label follow it); :class:`DeviceChoice`
and :class:`MethodModelChoice` fill the device, method and model choosers from the backend;
:class:`ModelsFolderChoice` binds the models-folder field to the saved setting;
:func:`select_by_data` shows a parameter's value in such a chooser; :func:`ensure_torch`
installs PyTorch and the backend's other requirements on first use.
Qt (``qt``) and ``slicer`` are imported inside the functions, which run only in Slicer.
"""

from __future__ import annotations

from ..errors import InputError


class ParameterNodeBinding:
    """Mix into a ``ScriptedLoadableModuleWidget`` (before it, with ``VTKObservationMixin``).
    The widget defines ``initializeParameterNode()`` (choose the node and default inputs) and
    ``_updateFromParameterNode(caller=None, event=None)``; extra work on scene close goes in
    ``onSceneStartClose``, calling this one."""

    _parameterNode = None
    _parameterNodeGuiTag = None

    def _loadPanel(self, uiName: str) -> None:
        """``Resources/UI/<uiName>.ui`` in the module's panel, its widgets as ``self.ui``."""
        import slicer

        from .settings import apply_saved_settings

        apply_saved_settings()  # the user models folder saved in Slicer's settings
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{uiName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

    def _bindToScene(self) -> None:
        """Observe the scene's closing and reopening, and bind the parameter node (end of setup)."""
        import slicer

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def setParameterNode(self, parameterNode) -> None:
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateFromParameterNode)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateFromParameterNode)
            self._updateFromParameterNode()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def _chooseDefaultVolume(self, parameter: str, accept=None) -> None:
        """When the volume ``parameter`` of the node is empty: the scene's first scalar volume that
        is not a label map (and that ``accept(node)`` accepts, when given), if there is one."""
        import slicer

        if getattr(self._parameterNode, parameter):
            return
        for volume in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if not volume.IsA("vtkMRMLLabelMapVolumeNode") and (accept is None or accept(volume)):
                setattr(self._parameterNode, parameter, volume)
                return


def select_by_data(pairs) -> None:
    """For each ``(combo, value)``: select the item whose data is ``value`` (choosers whose items
    are not their values), if there is one and it is not selected already."""
    for combo, value in pairs:
        index = combo.findData(value)
        if index >= 0 and index != combo.currentIndex:
            combo.setCurrentIndex(index)


class RunControls:
    """Mix into a module widget (before :class:`ParameterNodeBinding`, with :class:`DeviceChoice`)
    whose work is a background run of the logic (a :class:`~dmmreg.slicer.background.BackgroundJobRun`:
    ``poll()``, ``fraction``, ``stage``, ``message``, ``log``, ``finished``, ``finish()``, ``cancel()``).

    ``setup`` calls :meth:`_setupRunControls` with the start button, progress bar and status
    label; the start button's handler calls :meth:`_mayStartRun`, starts the run (reporting
    :class:`~dmmreg.errors.InputError` itself) and hands it to :meth:`_runStarted`.  Each timer
    tick polls the GPU probe and the run; a finished run's outputs go to the widget's
    ``_finishRun(outputs)``, which ends with :meth:`_endRun`.  Class attributes say what differs:
    the poll interval, the button's text, the errors a failed run raises and how they are shown."""

    POLL_MILLISECONDS = 100
    RUN_BUTTON_TEXT = "Apply"
    #: What ``run.finish()`` raises when the run failed (shown to the user, not a bug).
    RUN_ERRORS: tuple = (InputError,)
    RUN_NAME = "The run"  # "<RUN_NAME> failed: <error>" in the message box
    RUN_TITLE = "Background run"  # the message box's title
    RUN_FAILED_STATUS = "Failed: {error}"  # the status label after a failure
    CANCELLED_STATUS = "Cancelled; the scene is unchanged."

    run = None
    timer = None

    def _setupRunControls(self, runButton, progressBar, statusLabel) -> None:
        """Remember the run's widgets and start the timer that polls the run (call in setup)."""
        import qt

        self.run = None
        self._runButton, self._runProgressBar, self._runStatusLabel = runButton, progressBar, statusLabel
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_MILLISECONDS)
        self.timer.connect("timeout()", self.onTimer)
        self.timer.start()

    def cleanup(self) -> None:
        """The module is closing: cancel a run, stop the timer, drop the observers."""
        if self.run is not None:
            self.run.cancel()
        self.timer.stop()
        self.removeObservers()

    def onSceneStartClose(self, caller, event) -> None:
        """The scene is closing: cancel a run (nothing is added), then unbind the parameter node."""
        if self.run is not None:
            self._cancel("cancelled (scene closed)")
        ParameterNodeBinding.onSceneStartClose(self, caller, event)

    def _cancel(self, message: str | None = None) -> None:
        """Cancel the run (the logic removes what it made) and say so in the status label."""
        self.run.cancel()
        self._endRun(message or self.CANCELLED_STATUS)

    def _mayStartRun(self) -> bool:
        """The start button was pressed: False when it was Cancel (the run is cancelled) or
        PyTorch is not available; True when the widget should start a run now."""
        if self.run is not None:
            self._cancel()
            return False
        return ensure_torch()

    def _runStarted(self, run, cancelToolTip: str) -> None:
        """A run started: the start button becomes Cancel (with ``cancelToolTip``), progress 0."""
        self.run = run
        self._runButton.text = "Cancel"
        self._runButton.toolTip = cancelToolTip
        self._runProgressBar.value = 0
        self._runStatusLabel.text = "starting"

    def onTimer(self) -> None:
        """Each tick: the GPU probe's answer, then the run's progress, stage and log; a finished
        run is collected."""
        self._pollGpuProbe()
        if self.run is None:
            return
        self.run.poll()
        self._runProgressBar.value = int(round(100 * self.run.fraction))
        self._runStatusLabel.text = f"{self.run.stage}: {self.run.message}" if self.run.message else self.run.stage
        self._showRunLog(self.run)
        if self.run.finished:
            self._collectRun()

    def _showRunLog(self, run) -> None:
        """Show the run's new log lines (the widgets without a log show none)."""

    def _collectRun(self) -> None:
        """The run ended: its outputs go to ``_finishRun(outputs)``; a failure (``RUN_ERRORS``)
        is shown in the status label and a message box."""
        import slicer

        run, self.run = self.run, None
        try:
            outputs = run.finish()
        except self.RUN_ERRORS as error:
            self._endRun(self.RUN_FAILED_STATUS.format(error=error))
            slicer.util.errorDisplay(f"{self.RUN_NAME} failed: {error}", windowTitle=self.RUN_TITLE)
            return
        self._finishRun(outputs)

    def _endRun(self, message: str) -> None:
        """No run any more: the start button is itself again, ``message`` in the status label."""
        self.run = None
        self._runButton.text = self.RUN_BUTTON_TEXT
        self._runStatusLabel.text = message
        self._updateFromParameterNode()


class DeviceChoice:
    """Mix into a module widget with ``ui.deviceComboBox`` and a ``device`` parameter: the
    device choices (``auto``, ``cpu`` and the GPUs a background probe finds; see
    :func:`dmmreg.slicer.background.device_choices`).  ``setup`` calls :meth:`_setupDevices`; the
    probe's answer is read by :meth:`_pollGpuProbe` (from :meth:`RunControls.onTimer`)."""

    _gpuProbe = None

    def _setupDevices(self) -> None:
        """The devices known without a GPU now, the probe started, the chooser connected."""
        from .background import start_gpu_probe

        self._fillDevices(None)
        self._gpuProbe = start_gpu_probe()
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)

    def _pollGpuProbe(self) -> None:
        """Once the probe has finished: the devices it found."""
        if self._gpuProbe is not None and not self._gpuProbe.running:
            self._fillDevices([line for kind, line in self._gpuProbe.poll() if kind == "log"])
            self._gpuProbe = None

    def _fillDevices(self, probeOutput) -> None:
        from .background import device_choices

        current = self._parameterNode.device if self._parameterNode else "auto"
        self.ui.deviceComboBox.clear()
        for value, label in device_choices(probeOutput):
            self.ui.deviceComboBox.addItem(label, value)
        index = self.ui.deviceComboBox.findData(current)
        self.ui.deviceComboBox.setCurrentIndex(max(index, 0))

    def onDeviceChanged(self, index=None) -> None:
        if self._parameterNode and self.ui.deviceComboBox.currentData:
            self._parameterNode.device = self.ui.deviceComboBox.currentData


class MethodModelChoice:
    """Mix into a module widget with ``ui.methodComboBox``, ``ui.methodSummaryLabel`` and
    ``ui.modelComboBox`` and ``method`` and ``model`` parameters: the registration methods of
    the backend (those in ``METHODS``, when set) and the trained models of the chosen one
    (:func:`dmmreg.methods.available_models`).  ``setup`` calls :meth:`_setupMethods`; the widget
    says what an empty or filled model list means in ``_modelsFilled(method, models)``."""

    #: The methods offered (None: every method of the backend).
    METHODS = None
    #: Methods that cannot run (a learned method without a model) are shown disabled, their tooltip
    #: saying why and how to get a model (:func:`dmmreg.methods.method_availability`).
    ONLY_RUNNABLE = False

    def _setupMethods(self) -> None:
        """The methods (and the first one's models) filled, the choosers connected."""
        self._fillMethods()
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)

    def _fillMethods(self) -> None:
        import qt

        from ..methods import method_availability

        rows = [row for row in method_availability() if self.METHODS is None or row[0] in self.METHODS]
        self._methodSummaries = {name: summary for name, summary, _ in rows}
        current = self.ui.methodComboBox.currentData
        self.ui.methodComboBox.clear()
        for name, summary, whyNot in rows:
            if whyNot is None or not self.ONLY_RUNNABLE:
                self.ui.methodComboBox.addItem(name, name)
                continue
            self.ui.methodComboBox.addItem(f"{name} (no model)", name)
            index = self.ui.methodComboBox.count - 1
            self.ui.methodComboBox.setItemData(index, whyNot, qt.Qt.ToolTipRole)
            self.ui.methodComboBox.model().item(index).setEnabled(False)
        index = self.ui.methodComboBox.findData(current) if current else -1
        if index >= 0:
            self.ui.methodComboBox.setCurrentIndex(index)
        self.onMethodChanged()

    def onMethodChanged(self, index=None) -> None:
        name = self.ui.methodComboBox.currentData
        self.ui.methodSummaryLabel.text = self._methodSummaries.get(name, "")
        if self._parameterNode and name and self._parameterNode.method != name:
            self._parameterNode.method = name
        self._fillModels(name)

    def _fillModels(self, method) -> None:
        """Trained models of ``method`` (if the backend lists any), their summaries as tooltips."""
        import qt

        from .. import methods

        models = methods.available_models(method) if method else []
        self.ui.modelComboBox.clear()
        for name, summary in models:
            self.ui.modelComboBox.addItem(name, name)
            self.ui.modelComboBox.setItemData(self.ui.modelComboBox.count - 1, summary, qt.Qt.ToolTipRole)
        self._modelsFilled(method, models)

    def _modelsFilled(self, method, models) -> None:
        """What the widget shows once the models of ``method`` are listed (nothing by default)."""

    def onModelChanged(self, index=None) -> None:
        if self._parameterNode:
            self._parameterNode.model = self.ui.modelComboBox.currentData or ""


class ModelsFolderChoice:
    """Mix into a module widget with ``ui.modelsFolderPathLineEdit`` (a ``ctkPathLineEdit``): the
    user models folder, one setting for every module (:mod:`dmmreg.slicer.settings`: saved in
    Slicer's settings, ``DMMREG_MODELS`` wins and then the field is read-only).  ``setup`` calls
    :meth:`_setupModelsFolder`; the widget lists its models again in ``_modelsFolderChanged()``."""

    def _setupModelsFolder(self) -> None:
        import ctk

        from .settings import models_folder_field

        folder, editable = models_folder_field()
        self.ui.modelsFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.modelsFolderPathLineEdit.currentPath = folder
        self.ui.modelsFolderPathLineEdit.enabled = editable
        self.ui.modelsFolderPathLineEdit.connect("currentPathChanged(QString)", self.onModelsFolderChanged)

    def onModelsFolderChanged(self, path) -> None:
        from .settings import save_user_models_folder

        save_user_models_folder(path)
        self._modelsFolderChanged()

    def _modelsFolderChanged(self) -> None:
        """The models folder changed: list the models again (nothing by default)."""


def ensure_torch() -> bool:
    """The backend's requirements (PyTorch from the PyTorch extension, then safetensors and the
    others), installed on first use after the user agrees; False (with a message to the user)
    when they are not available.  See :mod:`dmmreg.slicer.dependencies`."""
    from .dependencies import ensure_dependencies

    return ensure_dependencies()
