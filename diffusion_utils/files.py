"""Safe file output: atomic writes, output paths checked before any work, and a run-folder lock.

Every file the project writes goes through `atomic_write`: the bytes go to a temporary file in
the same folder, which is flushed and fsynced, then renamed over the target, and the folder is
fsynced so the rename persists. A crash or a full disk at any point leaves the old file intact,
byte for byte, and no half-written file under the target's name (the temporary is removed).

`check_output_path` validates where a command will write (the folder exists and is writable,
the path is not a folder, its extension is one we write) before a long sampling run starts.
`RunLock` makes a run folder single-writer: a lock file holding the owner's PID, held with
`fcntl.flock`, so the lock of a killed process is free again and is taken over with a message.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

LOCK_FILE = ".lock"  # inside a run folder


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or directory to disk (directories: so the renames inside them persist)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write_fn: Callable[[str], object], mode: int = 0o644) -> Path:
    """Call `write_fn(tmp_path)` on a temporary file beside `path`, fsync it and rename it to `path`.

    The folder must exist. If `write_fn` (or the disk) fails, the temporary is removed, the
    error propagates, and an existing `path` is untouched. Returns `path`.
    """
    path = Path(path)
    # the temporary keeps the extension: numpy and MLX append theirs to a name that lacks it
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, mode)  # mkstemp makes it private; outputs are ordinary readable files
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, RuntimeError):  # how MLX reports a failed write ("[write] Unable to write")
            raise OSError(f"could not write {path}: {err}") from None
        raise
    fsync_path(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, content: bytes) -> Path:
    """Write `content` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(content))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` as UTF-8 to `path` atomically (see `atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def check_output_path(path: str | os.PathLike, extensions: Iterable[str], what: str = "output") -> Path:
    """`path` as a Path after checking that a file can be written there; ValueError (one line) if not.

    Checks: a file name is given (not '' or '.'), the extension is one of `extensions`
    (e.g. (".png", ".jpg")), the path is not a folder, its folder exists and is writable.
    Call it before any long work, so a bad path fails in a second, not after the work.
    """
    endings = " or ".join(e.lower() for e in extensions)
    text = os.fspath(path)
    target = Path(text).expanduser()
    if not text.strip() or target.name in ("", ".", ".."):
        raise ValueError(f"{what}: give a file name ending in {endings}, got {text!r}")
    if target.is_dir():
        raise ValueError(f"{what}: {target} is a folder; give a file name ending in {endings}")
    if target.suffix.lower() not in endings.split(" or "):
        raise ValueError(f"{what}: {target.name} must end in {endings} (the format written)")
    folder = target.parent
    if not folder.is_dir():
        raise ValueError(f"{what}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: folder {folder} is not writable")
    return target


class RunLockedError(ValueError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """An exclusive lock on a run folder: `with RunLock(folder): ...` (creates the folder).

    The lock file `<folder>/.lock` holds the owner's PID while it is held. A second writer gets
    RunLockedError naming that PID. The kernel frees the lock when its process dies (flock), so
    the lock of a killed run is taken over, with a message on stderr naming the dead PID.
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise ValueError(f"{self.path.parent} is a file; give a folder for the run")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is in use by another run (process {owner}); "
                                 "wait for it to finish, stop it, or choose another folder") from None
        previous = os.read(fd, 64).decode("ascii", "replace").strip()
        if previous and previous != str(os.getpid()):
            print(f"note: taking over the lock of {self.path.parent} from process {previous}, "
                  "which is no longer running", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Free the lock (the emptied lock file stays: removing it could let two writers in)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
