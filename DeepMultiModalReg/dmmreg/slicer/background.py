"""Run a backend command in a separate process and follow its JSON progress lines.

Generic (registration, fine-tuning...): the command prints one JSON object per line on stdout,
``{"stage": str, "fraction": 0..1, "message": str}``, the last one ``{"stage": "done", ...}`` on
success or ``{"stage": "error", "message": ...}`` on failure; any other output is log text.

The process is started in its own session (POSIX) or process group (Windows) so that
:meth:`BackgroundProcess.cancel` ends it together with every process it started.  Reading
happens on threads; :meth:`BackgroundProcess.poll` never blocks, so a GUI can call it on a timer.

Needs only the standard library.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field


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

    def __init__(self, command: list[str], env: dict[str, str] | None = None, cwd: str | None = None):
        self.command = list(command)
        self._events: queue.Queue = queue.Queue()
        self._stderr_lines: list[str] = []
        self.cancelled = False
        creation = {}
        if os.name == "nt":
            creation["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            creation["start_new_session"] = True
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, encoding="utf-8", errors="replace", env=env, cwd=cwd, bufsize=1, **creation,
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
        self.cancelled = True
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
