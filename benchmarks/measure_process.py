"""Run a command and write its wall seconds and peak resident memory to a JSON file:
``python measure_process.py OUT.json COMMAND...`` (exit status: the command's).

Measured from this small process rather than from the benchmark: ``subprocess`` starts children
with vfork, so a child's ``ru_maxrss`` starts from its parent's high-water mark, and a child of
the (large) benchmark process would report at least the benchmark's own memory."""

import json
import os
import subprocess
import sys
import time

out, command = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
process = subprocess.Popen(command)
_, status, usage = os.wait4(process.pid, 0)
seconds = time.perf_counter() - start
code = os.waitstatus_to_exitcode(status)
with open(out, "w") as file:
    json.dump({"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024.0, "returncode": code}, file)  # Linux: kB
sys.exit(code)
