"""``python -m dmmreg``: the command line (:mod:`dmmreg.cli`)."""

import os
import sys

try:
    from .cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C while starting
    print("error: cancelled; no output was written (existing files are unchanged)", file=sys.stderr)
    code = 130
if code == 130:
    # a Ctrl-C during start-up, even once handled, can make the interpreter end itself by SIGINT
    # at exit (exit status -2 instead of 130): the outputs are settled, so leave with the code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
raise SystemExit(code)
