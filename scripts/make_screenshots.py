"""Make the extension's catalog screenshots (Resources/Screenshots/, linked from CMakeLists.txt
and README.md) from the real things, offscreen:

* ``registration_panel.png``, ``quality_panel.png``: the modules' real ``.ui`` panels loaded with
  PySide6 (CTK/qMRML widgets as the stand-ins of Testing/Python/test_module_ui.py), filled as the
  modules fill them;
* ``registration_result.png``: a real registration of the bundled stroke data (T1 registered to the
  T2 deformed by a random known warp, ``optimise``, fast), drawn by ``dmmreg.picture``.

Run: ``QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/make_screenshots.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "Resources" / "Screenshots"
sys.path[:0] = [str(ROOT / "DeepMultiModalReg"), str(ROOT / "Testing" / "Python")]
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def panels() -> None:
    import test_module_ui as ui
    from PySide6 import QtWidgets

    application = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])  # noqa: F841
    for name, fill, picture in (("DeepMultiModalReg", ui.fill_choosers_as_the_module_does, "registration_panel"),
                                ("DeepMultiModalRegQuality", ui.fill_quality_as_the_module_does, "quality_panel")):
        panel = ui.load_panel(ui.MODULE_FOLDER / "Resources" / "UI" / f"{name}.ui")
        fill(panel)
        if name == "DeepMultiModalReg":  # as the module shows the default method and the models folder
            from dmmreg import methods, model_io

            panel.findChild(QtWidgets.QLabel, "methodSummaryLabel").setText(methods.METHODS["optimise"][1])
            panel.findChild(QtWidgets.QLineEdit, "modelsFolderPathLineEdit").setText(str(model_io.user_models_folder()))
            panel.findChild(QtWidgets.QSpinBox, "refineSpinBox").setValue(methods.DEFAULT_REFINE_ITERATIONS)
        panel.resize(480, panel.sizeHint().height())
        panel.show()
        QtWidgets.QApplication.processEvents()
        assert panel.grab().save(str(OUT / f"{picture}.png"))


def registration_result() -> None:
    from dmmreg.image_io import read_image
    from dmmreg.known_warp import deform, random_known_warp
    from dmmreg.picture import save_registration_picture
    from dmmreg.registration import register_pair

    stroke = ROOT / "Resources" / "SampleData" / "stroke"
    t2, t1 = read_image(stroke / "T2.nii.gz"), read_image(stroke / "T1.nii.gz")
    fixed = deform(t2, random_known_warp(t2.geometry, seed=0))
    result = register_pair(fixed, t1, method="optimise", quality="fast")
    save_registration_picture(fixed, t1, result, OUT / "registration_result.png",
                              title="Stroke T1 registered to a deformed T2 (optimise, fast)")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    panels()
    if "--panels-only" not in sys.argv:
        registration_result()
    print("\n".join(str(path) for path in sorted(OUT.glob("*.png"))))
