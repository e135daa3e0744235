"""Every module .ui file is well-formed Qt Designer XML, uses only Qt classes or declared Slicer/CTK custom widgets,
and loads with Qt's own loader (PySide6, offscreen) with the custom widgets standing in as their base classes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UI_FILES = sorted(REPO.glob("*/Resources/UI/*.ui"))


def _qt_widget_classes() -> set[str]:
    from PySide6 import QtWidgets

    classes = set()
    for name in dir(QtWidgets):
        obj = getattr(QtWidgets, name)
        if isinstance(obj, type) and issubclass(obj, (QtWidgets.QWidget, QtWidgets.QLayout)):
            classes.add(name)
    return classes


def _custom_bases(root) -> dict[str, str]:
    """custom widget class -> the Qt class it finally extends."""
    custom = {c.findtext("class"): c.findtext("extends") for c in root.iter("customwidget")}
    resolved = {}
    for name, base in custom.items():
        seen = set()
        while base in custom and base not in seen:
            seen.add(base)
            base = custom[base]
        resolved[name] = base
    return resolved


def test_every_module_has_a_ui_file():
    assert {p.stem for p in UI_FILES} == {"MedLAMLocalize", "MedFoundationSeg"}


@pytest.mark.parametrize("ui_path", UI_FILES, ids=lambda p: p.name)
def test_ui_is_wellformed_with_known_classes(ui_path):
    root = ET.parse(ui_path).getroot()  # raises on malformed XML
    assert root.tag == "ui" and root.get("version") == "4.0"
    assert root.findtext("class") == ui_path.stem
    top = root.find("widget")
    assert top is not None and top.get("name") == ui_path.stem

    custom = _custom_bases(root)
    qt_classes = _qt_widget_classes()
    for name, base in custom.items():  # each custom widget must resolve to a Qt class through its extends chain
        assert base in qt_classes, f"{ui_path.name}: custom widget {name} extends unknown class {base}"
        assert name.startswith(("q", "ctk")), f"{name} is not a Slicer/CTK widget"

    names = []
    for element in root.iter("widget"):
        cls = element.get("class")
        assert cls in qt_classes or cls in custom, f"{ui_path.name}: widget class {cls} is neither Qt nor declared"
        names.append(element.get("name"))
    for element in root.iter("layout"):
        assert element.get("class") in qt_classes, element.get("class")
        names.append(element.get("name"))
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"{ui_path.name}: duplicate object names {duplicates}"

    for connection in root.iter("connection"):
        assert connection.findtext("sender") in names and connection.findtext("receiver") in names


@pytest.mark.parametrize("ui_path", UI_FILES, ids=lambda p: p.name)
def test_ui_loads_with_qt(ui_path, monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtCore, QtWidgets
    from PySide6.QtUiTools import QUiLoader

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    stand_ins = _custom_bases(ET.parse(ui_path).getroot())

    class SlicerStandInLoader(QUiLoader):
        """Creates each Slicer/CTK custom widget as the Qt class it extends (what Slicer's own loader specialises)."""

        def createWidget(self, class_name, parent=None, name=""):
            widget = super().createWidget(stand_ins.get(class_name, class_name), parent, name)
            if widget is not None:
                widget.setObjectName(name)
            return widget

    loader = SlicerStandInLoader()
    ui_file = QtCore.QFile(str(ui_path))
    assert ui_file.open(QtCore.QFile.ReadOnly)
    widget = loader.load(ui_file)
    ui_file.close()
    assert widget is not None, loader.errorString()
    declared = {e.get("name") for e in ET.parse(ui_path).getroot().iter("widget")}
    found = {child.objectName() for child in widget.findChildren(QtCore.QObject)} | {widget.objectName()}
    missing = declared - found
    assert not missing, f"widgets not created by Qt's loader: {sorted(missing)}"
    widget.deleteLater()
    app.processEvents()
