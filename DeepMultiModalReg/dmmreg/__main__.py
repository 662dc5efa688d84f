"""``python -m dmmreg``: the command line (:mod:`dmmreg.cli`)."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while starting
    print("error: cancelled; no output was written (existing files are unchanged)", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
