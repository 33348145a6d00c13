"""An exclusive lock on a training workdir: one run at a time.

Process 0 of a run creates ``<workdir>/.lock`` (``O_CREAT | O_EXCL``) holding JSON ``{host, pid, started}``
and keeps an ``fcntl.flock`` on it for the run's lifetime; when the run ends, normally or by an exception,
it removes the file. The other processes of a multi-process run take no lock: process 0 broadcasts whether
it got it, and if not every process raises, before anything is compiled or written.

A lock file whose flock is free was left by a run that ended without removing it (killed, crashed). It is
reported, with the command that takes it over, and never broken silently. Only local workdirs are locked;
for a remote one (``gs://``) a message is logged and no lock is taken.
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
        raise WorkdirLocked(_refusal(str(workdir), path)) from None
    fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while another run's check below holds it for a moment
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}).encode())
    os.fsync(fd)
    return WorkdirLock(path, fd)


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


def _refusal(workdir: str, path: str) -> str:
    """Why ``path`` cannot be taken: held by a live run, or left behind (with the command to take it over)."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.loads(f.read())
        who = f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        holder, who = {}, "an unknown run (the lock file is unreadable)"
    take_over = f"if no run uses it any more, take it over with: rm {path}"
    if _flock_held(path):
        return f"workdir {workdir} is in use by another run ({who}); wait for it to end or use another workdir"
    if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
        return f"workdir {workdir} has a stale lock: {who}, is no longer running; {take_over}"
    return f"workdir {workdir} is locked by {who}, which may still be running; {take_over}"


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
