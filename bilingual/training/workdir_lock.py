"""An exclusive lock on a training workdir: one run at a time.

Process 0 of a run creates ``<workdir>/.lock`` (``O_CREAT | O_EXCL``) holding JSON ``{host, pid, started}``
and keeps an ``fcntl.flock`` on it for the run's lifetime; when the run ends, normally or by an exception,
it removes the file. The other processes of a multi-process run take no lock: process 0 broadcasts whether
it got it, and if not every process raises, before anything is compiled or written.

A lock file whose flock is free was left by a run that ended without removing it (killed -9, preempted,
crashed). When that run was on this host and its pid is gone, the new run takes the lock over and logs a
warning naming the dead run, so a killed run resumes as it always did. When the holder cannot be proved dead
(another host sharing the file system, or its pid still alive) the run refuses, naming the holder and the
command that takes the lock over: a lock is never broken silently. Only local workdirs are locked; for a
remote one (``gs://``) a message is logged and no lock is taken.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
from typing import Optional

import jax
import numpy as np

from bilingual.config import ConfigError

log = logging.getLogger("bilingual.train")

LOCK_NAME = ".lock"


class WorkdirLocked(ConfigError):
    """The workdir is held by another run, or a run that ended left its lock; the message says which."""


class WorkdirLock:
    """A held lock: the open, flocked lock file of this process."""

    def __init__(self, path: str, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        """Remove the lock file, then let go of the flock (closing the descriptor)."""
        os.unlink(self.path)
        os.close(self.fd)


def acquire(workdir) -> Optional[WorkdirLock]:
    """Lock ``workdir`` (this process, whatever its index); a remote workdir is not locked (None)."""
    if "://" in str(workdir):
        log.warning("workdir %s is remote: no lock is taken, so make sure one run at a time uses it", workdir)
        return None
    path = os.path.join(str(workdir), LOCK_NAME)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    except FileExistsError:
        fd = _take_over(str(workdir), path)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while another run's check below holds it for a moment
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}).encode(), 0)
    os.fsync(fd)
    return WorkdirLock(path, fd)


def _take_over(workdir: str, path: str) -> int:
    """The flocked descriptor of a lock left by a dead run of this host (logged), else ``WorkdirLocked``."""
    holder, who = _holder(path)
    if holder.get("host") != socket.gethostname() or _pid_alive(holder.get("pid")):
        raise WorkdirLocked(_refusal(workdir, path)) from None
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:  # its run released it meanwhile: start over
        return acquire(workdir).fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another new run took it over first
        os.close(fd)
        raise WorkdirLocked(_refusal(workdir, path)) from None
    log.warning("workdir %s: taking over the lock left by %s, which is no longer running", workdir, who)
    return fd


@contextlib.contextmanager
def hold(workdir):
    """Hold the lock on ``workdir`` for the body. Every process of the run calls this; process 0 locks."""
    lock, refusal = None, None
    if jax.process_index() == 0:
        try:
            lock = acquire(workdir)
        except (WorkdirLocked, OSError) as err:  # raised on process 0 once the others know
            refusal = err
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
        if refused and refusal is None:
            refusal = WorkdirLocked(f"workdir {workdir} is locked by another run (process 0 names it)")
    if refusal is not None:
        raise refusal
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _holder(path: str) -> tuple[dict, str]:
    """The lock file's record and a description of its run."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.loads(f.read())
        return holder, f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return {}, "an unknown run (the lock file is unreadable)"


def _refusal(workdir: str, path: str) -> str:
    """Why ``path`` cannot be taken: held by a live run, or by one not provably dead (with the way out)."""
    _, who = _holder(path)
    if _flock_held(path):
        return f"workdir {workdir} is in use by another run ({who}); wait for it to end or use another workdir"
    return (f"workdir {workdir} is locked by {who}, which may still be running; if no run uses it any more, "
            f"take it over with: rm {path}")


def _flock_held(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # released meanwhile
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
