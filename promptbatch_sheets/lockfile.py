"""An advisory lock that one process holds on a file while it works on it.

The lock is the operating system's (``flock``, or ``msvcrt.locking`` on Windows) on a small
lock file, so it goes away with its holder however the holder ends, kill -9 included: a dead
run never blocks the next one. The lock file names its holder (pid, host, start time) for the
message another process shows, and is removed when the lock is released.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

_WINDOWS_SPOT = 1 << 20
"""Windows locks a byte range and blocks reads of it: the byte locked lies past the holder's
description, so another process can still read who holds the lock."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its lock file says."""

    pid: int
    host: str
    started: float

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        here = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"pid {self.pid}{here}, started {when}"


class Busy(Exception):
    """Another process holds the lock; ``holder`` is None when it has not said who it is yet."""

    def __init__(self, holder: Holder | None) -> None:
        super().__init__(holder.describe() if holder else "another process")
        self.holder = holder


def _try_lock(fd: int, wait: bool) -> bool:
    """False while another process holds the lock. A file system that has no locks at all
    (some network and FUSE mounts) counts as unlocked: refusing every run there forever
    would be worse than the race the lock guards against."""
    if sys.platform == "win32":
        os.lseek(fd, _WINDOWS_SPOT, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
        except OSError:  # EDEADLOCK or EACCES: held elsewhere
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except (BlockingIOError, PermissionError):
        return False  # EWOULDBLOCK (EACCES on some systems): held elsewhere
    except OSError:
        return True  # ENOLCK, EOPNOTSUPP: this file system has no locks
    return True


def _holder(fd: int) -> Holder | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096))
        return Holder(int(data["pid"]), str(data["host"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class FileLock:
    """``with FileLock(path):`` holds the lock or raises Busy (``wait=True`` waits for it)."""

    def __init__(self, path: Path, wait: bool = False) -> None:
        self.path = path
        self.wait = wait
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if not _try_lock(fd, self.wait):
                holder = _holder(fd)
                os.close(fd)
                raise Busy(holder)
            if self._still_there(fd):
                break
            os.close(fd)  # released and removed while we waited: lock the new file instead
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        self._fd = fd

    def _still_there(self, fd: int) -> bool:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if sys.platform != "win32":  # removed while still held: no one can lock a stale file
            _unlink(self.path)
        os.close(fd)
        if sys.platform == "win32":
            _unlink(self.path)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):  # open elsewhere (Windows), or already replaced
        os.unlink(path)


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (one we may not signal runs)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        return True  # no cheap check; callers fall back on the age of what the pid left
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
