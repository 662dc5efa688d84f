"""Run the backend (``python -m dmmreg ...``) in a separate process and follow its progress.

* :func:`start_backend` starts a backend command with the interpreter and environment that
  find this package (``PythonSlicer`` inside Slicer); :func:`start_gpu_probe` and
  :func:`device_choices` ask torch, in such a process, which GPUs there are.
* :class:`BackgroundProcess`: the process.  The command prints one JSON object per line on
  stdout, ``{"stage": str, "fraction": 0..1, "message": str}``, the last one
  ``{"stage": "done", ...}`` on success or ``{"stage": "error", "message": ...}`` on failure;
  any other output is log text.  It is started in its own session (POSIX) or process group
  (Windows) so that :meth:`BackgroundProcess.cancel` ends it together with every process it
  started.  Reading happens on threads; :meth:`BackgroundProcess.poll` never blocks, so a GUI
  can call it on a timer.
* :class:`BackgroundJobRun`: what a module logic's run of such processes shares (its progress,
  shown by the widget's :class:`~dmmreg.slicer.widgets.RunControls`); :func:`run_to_end`
  follows one to its end.

Needs only the standard library and the backend's torch-free modules (model_io, threads): torch
runs in the background process only.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from ..model_io import user_models_folder
from ..threads import MAX_THREADS_VARIABLE, usable_cores


@dataclass
class Progress:
    """One progress report of the background command."""

    stage: str
    fraction: float
    message: str = ""
    details: dict = field(default_factory=dict)


def parse_progress_line(line: str) -> Progress | None:
    """A :class:`Progress` from a JSON progress line, or ``None`` for any other text."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or "stage" not in record:
        return None
    details = {k: v for k, v in record.items() if k not in ("stage", "fraction", "message")}
    return Progress(str(record["stage"]), float(record.get("fraction", 0.0) or 0.0), str(record.get("message", "")), details)


class BackgroundProcess:
    """A command running in the background; ``poll()`` hands over what it reported so far."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None):
        self._events: queue.Queue = queue.Queue()
        self._stderr_lines: list[str] = []
        creation = {}
        if os.name == "nt":
            creation["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            creation["start_new_session"] = True
        self._process = subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, encoding="utf-8", errors="replace", env=env, bufsize=1, **creation,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(self._process.stdout, False), daemon=True),
            threading.Thread(target=self._read, args=(self._process.stderr, True), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, is_stderr: bool) -> None:
        for line in stream:
            line = line.rstrip("\r\n")
            if is_stderr:
                self._stderr_lines.append(line)
                self._events.put(("log", line))
                continue
            progress = parse_progress_line(line)
            self._events.put(("progress", progress) if progress else ("log", line))
        stream.close()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the process and its output readers are finished, else ``None``."""
        if self._process.poll() is None or any(reader.is_alive() for reader in self._readers):
            return None
        return self._process.returncode

    @property
    def running(self) -> bool:
        return self.returncode is None

    @property
    def stderr(self) -> str:
        return "\n".join(self._stderr_lines)

    def poll(self) -> list[tuple[str, object]]:
        """New events since the last call: ``("progress", Progress)`` or ``("log", str)``."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the process and its readers are finished (or ``timeout`` s passed)."""
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join(None if timeout is None else max(timeout, 1.0))
        return self.returncode

    def cancel(self, grace_seconds: float = 3.0) -> None:
        """End the process and every process it started; wait until they are gone."""
        if self._process.poll() is not None:
            self._kill_group(signal.SIGKILL if os.name != "nt" else None)  # leftover children
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)], capture_output=True)
        else:
            self._kill_group(signal.SIGTERM)
            deadline = time.monotonic() + grace_seconds
            while self._process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            self._kill_group(signal.SIGKILL)
        self.wait()

    def _kill_group(self, sig) -> None:
        if os.name == "nt":
            return
        try:
            os.killpg(self._process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# --------------------------------------------------------------------------------------------
# The backend command


#: Devices the backend accepts (``--device``).
DEVICES = ("auto", "cpu", "cuda")


def backend_python() -> str:
    """Interpreter for the background process: ``PythonSlicer`` inside Slicer, else this one."""
    if "slicer" in sys.modules and hasattr(sys.modules["slicer"], "app"):
        found = shutil.which("PythonSlicer", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        if found:
            return found
    return sys.executable


def backend_environment() -> dict[str, str]:
    """Environment in which ``python -m dmmreg`` finds this package (the module's Lib folder), the
    user models folder this process uses, and at most all cores but one (``DMMREG_MAX_THREADS``)."""
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # the user models folder of this process (Slicer's setting, unless DMMREG_MODELS is set)
    env["DMMREG_MODELS"] = str(user_models_folder())
    # leave a core to the GUI: the backend uses the idle cores, at most all but one
    env.setdefault(MAX_THREADS_VARIABLE, str(max(1, usable_cores() - 1)))
    return env


def start_backend(arguments: list[str], python: str | None = None) -> BackgroundProcess:
    """Start ``python -m dmmreg <arguments>`` in the background."""
    return BackgroundProcess([python or backend_python(), "-m", "dmmreg", *arguments], env=backend_environment())


GPU_PROBE = (
    "import json, torch\n"
    "gpus = [dict(name=torch.cuda.get_device_name(i), memory=torch.cuda.get_device_properties(i).total_memory)"
    " for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []\n"
    "print(json.dumps(gpus))\n"
)


def start_gpu_probe(python: str | None = None) -> BackgroundProcess:
    """Ask torch in a background interpreter which CUDA GPUs there are (keeps torch out of Slicer);
    read the answer with :func:`device_choices`."""
    return BackgroundProcess([python or backend_python(), "-c", GPU_PROBE], env=backend_environment())


def device_choices(probe_output: list[str] | None) -> list[tuple[str, str]]:
    """``[(device, label)]`` for the device chooser; the CUDA entry names the GPU and its memory.

    ``probe_output``: log lines of a finished :func:`start_gpu_probe` (``None``: not known yet)."""
    choices = [("auto", "Automatic"), ("cpu", "CPU")]
    for line in reversed(probe_output or []):
        try:
            gpus = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(gpus, list) and gpus:
            gpu = gpus[0]
            choices.append(("cuda", f"CUDA: {gpu['name']} ({gpu['memory'] / 2**30:.0f} GiB)"))
        break
    return choices


# --------------------------------------------------------------------------------------------
# A logic's run of background processes


class BackgroundJobRun:
    """Base of a module logic's run of one or more background processes (registration, sequence,
    fine-tuning): the progress a widget shows (``stage``, ``fraction``, ``message``, ``log``)
    and whether it was ``cancelled``.  A subclass defines ``poll()`` (never blocks),
    ``finished``, ``finish()`` (the outputs, or an error) and ``cancel()``."""

    def __init__(self):
        self.stage, self.fraction, self.message = "starting", 0.0, ""
        self.log: list[str] = []
        self.cancelled = False

    def _follow(self, source, first: float = 0.0, share: float = 1.0, label: str = "") -> list[Progress]:
        """Poll ``source`` (a :class:`BackgroundProcess`, or anything whose ``poll()`` gives the
        same events); its fraction maps into ``[first, first + share]`` of this run, its messages
        get ``label`` in front."""
        reports = []
        for kind, value in source.poll():
            if kind == "log":
                self.log.append(label + value)
            else:
                self.stage, self.message = value.stage, label + value.message
                self.fraction = first + share * value.fraction
                reports.append(value)
        return reports


def run_to_end(run: BackgroundJobRun, on_progress=None, poll_seconds: float = 0.1):
    """Follow ``run`` until it ends (for scripts and self-tests), then return ``run.finish()``;
    ``on_progress(run, report)`` is called for each progress report."""
    while not run.finished:
        for report in run.poll():
            if on_progress:
                on_progress(run, report)
        time.sleep(poll_seconds)
    return run.finish()
