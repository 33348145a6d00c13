"""Killing a training process: resume in the same workdir ends with the uninterrupted run's parameters.

Each probe runs the tiny synthetic stage of ``test_trainer`` (6 steps, a checkpoint every 2, async saves)
in a child process, stops it at a fixed moment and resumes here: SIGKILL while the async save of step 4 is
in flight (resumes from 2), SIGKILL during the final forced save of step 6 (resumes from 4), and SIGTERM
at step 3 (saves 3 and exits cleanly; resumes from 3). The child reaches the moment deterministically:
orbax's commit of a step directory (data written, not yet renamed into place) writes a marker file and
blocks, and the parent kills on the marker.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from bilingual.training.trainer import train
from test_trainer import config, params_equal
from train_helpers import SyntheticBatches

TESTS = pathlib.Path(__file__).resolve().parent
STAGE = "pairs"


def child_main(workdir: str, marker: str, moment: str, value: int) -> None:
    """The child's run (``python -c``): ``moment`` ``"commit"`` blocks orbax's commit of step ``value``
    after writing ``marker``; ``"batch"`` writes ``marker`` when batch ``value`` is read and waits for the
    parent's ``<marker>.sent`` (the signal has been delivered) before going on."""
    from orbax.checkpoint._src.path import atomicity

    if moment == "commit":
        commit = atomicity.on_commit_callback

        async def blocking_commit(tmp_dir, **kwargs):
            if tmp_dir.get_final().name == str(value):
                pathlib.Path(marker).write_text("committing")
                time.sleep(600)  # the parent kills the process here
            return await commit(tmp_dir, **kwargs)

        atomicity.on_commit_callback = blocking_commit

    def on_batch(position: int) -> None:
        if moment == "batch" and position == value:
            pathlib.Path(marker).write_text("batch")
            deadline = time.monotonic() + 120
            while not pathlib.Path(marker + ".sent").exists() and time.monotonic() < deadline:
                time.sleep(0.02)

    train(config(STAGE), workdir, SyntheticBatches([STAGE], on_batch=on_batch))


def run_child_until(tmp_path, moment: str, value: int, sig: int) -> subprocess.CompletedProcess:
    """Start the child, wait for its marker, send ``sig``; the finished process (stdout/stderr text)."""
    workdir, marker = tmp_path / "run", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    code = (f"import conftest, test_misuse_kill; "  # conftest: the same JAX set-up as this process
            f"test_misuse_kill.child_main({str(workdir)!r}, {str(marker)!r}, {moment!r}, {value})")
    child = subprocess.Popen([sys.executable, "-c", code], cwd=TESTS.parent, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            out, err = child.communicate()
            pytest.fail(f"the child never reached {moment} {value} (exit {child.returncode}):\n{err[-3000:]}")
        time.sleep(0.05)
    child.send_signal(sig)
    (tmp_path / "marker.sent").touch()
    out, err = child.communicate(timeout=120)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def step_directories(workdir) -> tuple[list[int], list[str]]:
    """``(committed steps, other entries)`` of the run's checkpoint root; a save cut short leaves orbax's
    ``<step>.orbax-checkpoint-tmp`` among the others."""
    names = [p.name for p in (workdir / "checkpoints").iterdir() if p.is_dir()]
    return sorted(int(n) for n in names if n.isdigit()), [n for n in names if not n.isdigit() and n != "tokenizer"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return train(config(STAGE), tmp_path_factory.mktemp("full"), SyntheticBatches([STAGE])).state.params


@pytest.mark.parametrize("step,committed", [(4, [2]), (6, [2, 4])], ids=["async-save-in-flight", "final-save"])
def test_sigkill_during_a_save_then_resume_is_bit_exact(tmp_path, uninterrupted, step, committed):
    killed = run_child_until(tmp_path, "commit", step, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    steps_on_disk, partial = step_directories(tmp_path / "run")
    assert steps_on_disk == committed and [n for n in partial if n.startswith(f"{step}.")]  # killed mid-save
    resumed = train(config(STAGE), tmp_path / "run", SyntheticBatches([STAGE]))
    assert int(resumed.state.step) == 6 and [h["step"] for h in resumed.history] == [
        s for s in (2, 4, 6) if s > committed[-1]]  # resumed from the last committed step
    params_equal(resumed.state.params, uninterrupted)


def test_sigterm_saves_stops_and_resumes_bit_exact(tmp_path, uninterrupted):
    stopped = run_child_until(tmp_path, "batch", 3, signal.SIGTERM)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert step_directories(tmp_path / "run") == ([2, 3], [])
    resumed = train(config(STAGE), tmp_path / "run", SyntheticBatches([STAGE]))
    assert int(resumed.state.step) == 6 and [h["step"] for h in resumed.history] == [4, 6]
    params_equal(resumed.state.params, uninterrupted)
