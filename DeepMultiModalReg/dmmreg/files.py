"""Writing files so that a failure never leaves a half-written one where an earlier result was.

* :func:`atomic_write`: one file, through a temporary file beside it.
* :class:`OutputTransaction`: several outputs as one (all of them are replaced, or none; runs
  writing the same outputs at once commit one after the other, :func:`commit_lock`).
* :func:`check_output_paths`: before any work, every output must be writable and name no input.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import uuid

from .errors import InputError


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)`` then move the file into place, so a failure never leaves a
    half-written file where an earlier result was."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    # keep the full extension (.nii.gz) so the writer picks the right format
    tmp = os.path.join(directory, f".partial-{os.getpid()}-{base}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def interrupts_held():
    """Hold SIGINT and SIGTERM back inside the block (main thread only); yields a list that gets
    an entry for each signal that arrived, for the block to act on before it ends."""
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return
    previous = {sig: signal.signal(sig, lambda number, frame: arrived.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield arrived
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def commit_lock(targets: list[str]):
    """Hold an exclusive lock for each of ``targets`` (in sorted order, so two runs never wait on
    each other in a circle), so that runs writing the same outputs at the same time commit one
    after the other and every set of outputs comes whole from one run.  The lock files live in
    the temporary folder, named by a hash of the target's real path (nothing is left beside the
    outputs).  Without ``fcntl`` (Windows) the commits are not serialised."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    import hashlib
    import tempfile

    folder = os.path.join(tempfile.gettempdir(), "dmmreg-output-locks")
    os.makedirs(folder, exist_ok=True)
    handles = []
    try:
        for target in sorted({os.path.realpath(t) for t in targets}):
            name = hashlib.sha1(target.encode("utf-8", "surrogateescape")).hexdigest()
            handle = open(os.path.join(folder, f"{name}.lock"), "a")
            handles.append(handle)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        for handle in reversed(handles):
            handle.close()  # releases its lock


def _beside(target: str, kind: str) -> str:
    """A hidden file name beside ``target``, unique to this process and call, ending with the
    target's own name (so a writer picks the format from the extension)."""
    return os.path.join(os.path.dirname(target), f".{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{os.path.basename(target)}")


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


class OutputTransaction:
    """Output files written as one: :meth:`stage` writes each to a temporary file beside its
    target, :meth:`commit` moves them all into place.  Until the last move succeeds every target
    keeps its earlier contents (or stays absent): a failing move puts back the ones already made,
    and Ctrl-C during the moves undoes them too.  Leaving the ``with`` block without a commit
    (an error, Ctrl-C) removes the temporary files and the folders :meth:`stage` created."""

    def __init__(self):
        self.staged: list[tuple[str, str, str]] = []  # (output name, temporary file, target)
        self._created_folders: list[str] = []

    def __enter__(self) -> OutputTransaction:
        return self

    def __exit__(self, *exc_info) -> None:
        with interrupts_held():
            for _, tmp, _ in self.staged:
                _remove(tmp)
            for folder in reversed(self._created_folders):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            self.staged = []

    def stage(self, name: str, path: str | os.PathLike, write) -> None:
        """Write output ``name`` (e.g. "transform") meant for ``path`` by ``write(tmp)``; ``tmp``
        ends with the target's file name, so the writer picks the same format."""
        target = os.path.abspath(os.fspath(path))
        folder = os.path.dirname(target)
        missing = []
        while not os.path.exists(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        for folder in reversed(missing):
            os.mkdir(folder)
            self._created_folders.append(folder)
        tmp = _beside(target, "partial")
        self.staged.append((name, tmp, target))
        write(tmp)

    def commit(self) -> dict[str, str]:
        """Move every staged file onto its target, all or none; returns ``{name: target}``."""
        replaced: list[tuple[str, str | None]] = []  # (target, hard link to its earlier file)
        with commit_lock([target for _, _, target in self.staged]), interrupts_held() as interrupts:
            try:
                for _, tmp, target in self.staged:
                    earlier = None
                    if os.path.lexists(target):
                        earlier = _beside(target, "previous")
                        _remove(earlier)
                        os.link(target, earlier, follow_symlinks=False)
                    os.replace(tmp, target)
                    replaced.append((target, earlier))
                if interrupts:
                    raise KeyboardInterrupt
            except BaseException:
                for target, earlier in reversed(replaced):
                    if earlier is None:
                        _remove(target)
                    else:
                        os.replace(earlier, target)
                raise
            finally:
                for _, earlier in replaced:
                    if earlier is not None:
                        _remove(earlier)
        written = {name: target for name, _, target in self.staged}
        self.staged, self._created_folders = [], []
        return written


def _same_file(a: str, b: str) -> bool:
    """``a`` and ``b`` name one file: the same path after links, or one file by two names."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_writable(path: str, what: str) -> None:
    """``InputError`` unless a file can be created at ``path`` (tried in its nearest existing
    folder, so a run fails before any work rather than after it)."""
    if os.path.isdir(path):
        raise InputError(f"{what} {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {what} {path}: {folder} is a file, not a folder; choose another output path")
    probe = os.path.join(folder, f".write-test-{os.getpid()}")
    try:
        with open(probe, "wb"):
            pass
    except OSError as error:
        raise InputError(f"cannot write {what} {path}: {folder} is not writable ({error.strerror}); "
                         "choose another output folder") from None
    _remove(probe)


def check_output_paths(outputs: dict[str, str | None], inputs: dict[str, str | None]) -> None:
    """``InputError`` before any work unless every output (``{what: path}``, None: not asked
    for) can be written and names neither an input (``{what: path}``; also through a link or a
    second name of the same file, or a file inside an input folder) nor another output."""
    given = {what: os.fspath(path) for what, path in outputs.items() if path is not None}
    sources = {what: os.fspath(path) for what, path in inputs.items() if path is not None}
    seen: dict[str, str] = {}
    for what, path in given.items():
        for source_what, source in sources.items():
            inside = os.path.isdir(source) and os.path.realpath(path).startswith(os.path.realpath(source) + os.sep)
            if _same_file(path, source) or inside:
                raise InputError(f"{what} {path} would overwrite the {source_what} {source}; inputs are never "
                                 "modified: choose another output path")
        for other_what, other in seen.items():
            if _same_file(path, other):
                raise InputError(f"{what} and {other_what} are both {path}; give each output its own file")
        seen[what] = path
        _check_writable(path, what)
