"""Errors the backend raises for problems the user can fix."""


class InputError(ValueError):
    """Bad input (file, image, option): the message names the problem and the fix."""


class Cancelled(RuntimeError):
    """The run was cancelled on request; nothing was written."""
