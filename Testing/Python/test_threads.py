"""The thread policy (dmmreg.threads): no more torch threads than the cores left idle."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dmmreg import threads


def test_default_leaves_the_busy_cores_and_keeps_one(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    for busy, expected in ((0, 8), (3, 5), (8, 1), (12, 1)):
        monkeypatch.setattr(threads, "busy_cores", lambda busy=busy: busy)
        assert threads.default_threads() == expected


def test_a_process_that_just_started_counts_as_busy():
    """The load average lags by a minute; the /proc/stat sample sees a busy loop at once."""
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert threads.busy_cores(interval_s=0.5) >= 1
    finally:
        loop.kill()


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc/stat")
def test_a_process_that_just_ended_does_not_count(monkeypatch):
    """A heavy process that ended seconds ago still weighs on the 1-minute load average; where
    the /proc/stat sample exists the load average is not consulted."""
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1000.0, 1000.0, 1000.0))
    assert threads.busy_cores() <= (os.cpu_count() or 1)


def test_use_threads_sets_torch_and_an_explicit_count_wins():
    previous = torch.get_num_threads()
    try:
        assert threads.use_threads(1) == 1 and torch.get_num_threads() == 1
        count = threads.use_threads(0)
        assert 1 <= count <= threads.usable_cores() and torch.get_num_threads() == count
    finally:
        torch.set_num_threads(previous)
