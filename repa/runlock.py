"""One writer per output folder, and no stale temporary files.

``claim_folder(path, what)`` takes an exclusive advisory lock (``fcntl.flock`` on ``PATH/.lock``, which holds the
holder's pid) for the lifetime of a ``with`` block. The operating system releases it when the process dies, so a
killed run never blocks the next one; a second live writer is refused with the holder's pid. A folder created by
the claim is removed again when the block fails before anything else was written into it, so that a failed first
start leaves nothing behind.

``clean_stale_temp_files(folder)`` removes the temporary files (``.NAME.tmp-PID`` / ``.NAME.tmpPID``) that a writer
killed between writing and renaming left behind; the pid in the name tells whether their writer is still alive.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

LOCK_FILE = ".lock"
# temporary names of atomic writes in this project: ".00000010.pt.tmp-1234", ".samples.npz.tmp1234"
TEMP_PATTERN = re.compile(r"^\..+\.tmp-?(\d+)$")


class RunLockedError(RuntimeError):
    """Another live process holds the folder's lock."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # alive, owned by someone else
        return True
    return True


def clean_stale_temp_files(folder: str | os.PathLike, prefix: str = "") -> list[Path]:
    """Delete the temporary files of dead writers directly inside ``folder`` (only names starting with ``prefix``
    when given); returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for name in os.listdir(folder):
        m = TEMP_PATTERN.match(name)
        if m is None or not name.startswith(prefix) or int(m.group(1)) == os.getpid() or _pid_alive(int(m.group(1))):
            continue
        path = folder / name
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            path.unlink()
            removed.append(path)
    return removed


class _Lock:
    def __init__(self, folder: Path, what: str):
        self.folder, self.what, self.path, self.fd = folder, what, folder / LOCK_FILE, None

    def acquire(self) -> None:
        import fcntl
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise RunLockedError(f"{self.folder} is in use by another repa process (pid {holder}) writing "
                                     f"this {self.what}; wait for it to finish or stop it, or use another "
                                     f"folder") from None
            # the previous holder may have unlinked the file between our open and our flock: retry on the new one
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()         # unlink while holding the lock, then close (which releases it)
        os.close(self.fd)
        self.fd = None


@contextlib.contextmanager
def claim_folder(path: str | os.PathLike, what: str = "output", *, enabled: bool = True):
    """Hold the exclusive lock of folder ``path`` (created if needed) for the ``with`` block.

    Args:
        path: the run directory, dataset folder or sample folder.
        what: what the folder holds, for the error message ("run", "dataset", "sample folder").
        enabled: False makes this a no-op (ranks other than 0 of a distributed job).
    Raises:
        RunLockedError: another live process holds the lock. NotADirectoryError: ``path`` is a file.
    """
    if not enabled:
        yield None
        return
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{folder} is a file, not a folder; give a folder path for the "
                                                f"{what}", str(folder))
    created = []
    missing = folder
    while not missing.exists():
        created.append(missing)
        missing = missing.parent
    folder.mkdir(parents=True, exist_ok=True)
    lock = _Lock(folder, what)
    try:
        lock.acquire()
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield lock
    except BaseException:
        lock.release()
        _remove_empty(created)      # a failed first start leaves no folder behind
        raise
    lock.release()


def _remove_empty(created: list[Path]) -> None:
    for folder in created:          # deepest first
        try:
            folder.rmdir()
        except OSError:
            break
