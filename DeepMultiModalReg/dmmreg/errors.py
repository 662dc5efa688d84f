"""Errors the backend raises for problems the user can fix, and for work stopped on request."""


class InputError(ValueError):
    """Bad input (file, image, option): the message names the problem and the fix."""


class Cancelled(RuntimeError):
    """The work stopped on request (a cancel check or a progress callback raised it); the
    message says what was kept (e.g. a training checkpoint)."""
