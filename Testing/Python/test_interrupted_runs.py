"""Runs that meet each other or are killed: two runs writing the same outputs at once leave a
set that comes whole from one of them; training and fine-tuning killed with SIGKILL (no chance
to clean up) leave a checkpoint they resume from, and no model file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dmmreg import files

SMALL_CONFIG = ["--config=encoder_channels=8,16,16,16,16", "--config=decoder_channels=16,16,16,16",
                "--config=resize_channels=16,16", "--config=bins=32"]


def test_two_runs_committing_the_same_outputs_leave_one_runs_set(tmp_path, monkeypatch):
    """Run A moves its files slowly, run B quickly and starts just after A: without the commit
    lock B's files land between A's and the set ends mixed (first file B's, second A's)."""
    targets = [tmp_path / "transform.h5", tmp_path / "warped.nii.gz"]
    pause = {"A": 0.2, "B": 0.0}
    real_replace = os.replace

    def slow_replace(source, target):
        real_replace(source, target)
        time.sleep(pause.get(threading.current_thread().name, 0.0))

    monkeypatch.setattr(files.os, "replace", slow_replace)

    def run(label: str) -> None:
        with files.OutputTransaction() as transaction:
            for target in targets:
                transaction.stage(target.name, target, lambda tmp, label=label: Path(tmp).write_text(label))
            if label == "B":
                time.sleep(0.05)  # A has begun its moves
            transaction.commit()

    threads = [threading.Thread(target=run, args=(label,), name=label) for label in ("A", "B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    contents = {target.read_text(encoding="utf-8") for target in targets}
    assert len(contents) == 1, f"outputs from two runs: {[t.read_text(encoding='utf-8') for t in targets]}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".partial", ".previous"))]


def dmmreg(*args, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dmmreg", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_after_checkpoint(process: subprocess.Popen, folder: Path, done: int, timeout_s: float = 240.0) -> None:
    """SIGKILL ``process`` once ``folder``'s checkpoint records at least ``done`` updates."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        checkpoint = folder / "checkpoint.json"
        if checkpoint.exists() and json.loads(checkpoint.read_text(encoding="utf-8"))["done"] >= done:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"no checkpoint with {done} updates within {timeout_s} s")


def assert_consistent_checkpoint(folder: Path) -> int:
    checkpoint = json.loads((folder / "checkpoint.json").read_text(encoding="utf-8"))
    assert (folder / checkpoint["weights"]).exists()
    assert not list(folder.glob(".partial*"))
    return checkpoint["done"]


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_training_killed_with_sigkill_resumes_from_its_checkpoint(command, cohort_folder, tmp_path):
    env = {**os.environ, "DMMREG_MODELS": str(tmp_path / "models"), "OMP_NUM_THREADS": "1"}
    common = ["--cohort", cohort_folder, "--pair", "t2:t1", "--validation-pairs", "1", "--threads", "1",
              "--progress", "none"]
    if command == "finetune":
        base = dmmreg("train", "--method", "midir", "--dim", "2", "--spacing", "2", *SMALL_CONFIG, *common,
                      "--name", "base", "--steps", "2", "--epoch-steps", "2", env=env)
        assert base.wait() == 0, base.stderr.read()
        job = ["finetune", "--model", "base"]
    else:
        job = ["train", "--method", "midir", "--dim", "2", "--spacing", "2", *SMALL_CONFIG]
    folder = tmp_path / "run"
    running = dmmreg(*job, *common, "--name", "tuned", "--steps", "40", "--epoch-steps", "2",
                     "--run-folder", folder, env=env)
    kill_after_checkpoint(running, folder, done=4)
    done = assert_consistent_checkpoint(folder)
    assert 4 <= done < 40
    assert not (tmp_path / "models" / "tuned.safetensors").exists()  # no model from a killed run

    resumed = dmmreg(command, "--resume", folder, "--progress", "none", "--threads", "1", env=env)  # as the user would
    assert resumed.wait() == 0, resumed.stderr.read()
    card = json.loads((tmp_path / "models" / "tuned.json").read_text(encoding="utf-8"))
    assert sum(card["training"]["steps"].values()) == 40
    assert assert_consistent_checkpoint(folder) == 40
