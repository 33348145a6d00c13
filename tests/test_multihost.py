"""2 processes x 4 CPU devices (gloo collectives on localhost) train like 1 process x 8 devices."""

import json
import pathlib
import socket
import subprocess
import sys

import numpy as np

WORKER = pathlib.Path(__file__).resolve().parent / "multihost_worker.py"
ROOT = WORKER.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmds):
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def test_two_processes_match_one_process(tmp_path):
    (single,) = run([[sys.executable, str(WORKER), "--devices", "8", "--workdir", str(tmp_path / "single")]])
    port = free_port()
    multi = run([[sys.executable, str(WORKER), "--devices", "4", "--num_processes", "2", "--process_id", str(i),
                  "--port", str(port), "--workdir", str(tmp_path / "multi")] for i in range(2)])
    assert len(single) == 3
    for losses in multi:
        np.testing.assert_allclose(losses, single, rtol=1e-5)
    assert (tmp_path / "multi" / "checkpoints" / "3").is_dir()
