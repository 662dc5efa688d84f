"""The training report of scripts/train_bundled_models.py, from run folders' checkpoints."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "scripts" / "train_bundled_models.py"


def bundling_script():
    spec = importlib.util.spec_from_file_location("train_bundled_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def validation(stage: str, done: int, registration: float, epe: float) -> dict:
    return {"kind": "validation", "stage": stage, "step": 0, "done": done, "seconds": float(done),
            "epe_before_mm": 4.0, "epe_mm": epe, "folding_percent": 0.0,
            "registration_epe_before_mm": 2.1, "registration_epe_mm": registration}


def test_report_gives_the_kept_weights_of_the_last_stage(tmp_path):
    """A staged run (a first stage that does not train the registration network, so its
    validations read the untrained figure): the registration cell is pre-alignment, untrained,
    and the figure of the weights kept, the best validation of the last stage."""
    runs = tmp_path / "runs"
    folder = runs / "disentangled-brain-2d"
    folder.mkdir(parents=True)
    history = [validation("disentangle", 0, 2.0, 3.8), validation("disentangle", 100, 2.0, 3.8),
               validation("register", 100, 2.0, 3.8), validation("register", 200, 1.9, 3.7),
               validation("register", 300, 1.95, 3.6)]
    (folder / "checkpoint.json").write_text(json.dumps({"done": 300, "history": history}))
    (folder / "job.json").write_text(json.dumps({"cohorts": ["/data/multicontrast.csv"],
                                                 "steps": {"disentangle": 100, "register": 200}}))
    report = bundling_script().write_training_report(runs, tmp_path / "training.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| disentangled-brain-2d"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:5] == ["multicontrast", "300", "300", "300"]
    assert cells[5:8] == ["3.800", "3.700", "200"]  # the best of the last stage, chosen by its registration
    assert cells[-1] == "2.100, 2.000, 1.900"
