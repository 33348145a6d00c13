"""The launchers rehearsed: ``launch/tpu_vm.sh`` and ``launch/slurm_gpu.sh`` executed as written, with only
the cloud replaced: ``tests/standins/gcloud`` (a 2-worker TPU VM on this machine: each worker a home
directory, the variables a slice sets, 4 CPU devices) and ``tests/standins/srun`` (2 tasks, one per "node",
with SLURM's step variables). The install commands run for real (uv, a fresh venv from
``requirements/runtime.txt``, the project), and so does ``launch.train`` on both workers, which find each
other through ``bilingual.training.distributed`` from the slice's / SLURM's variables.

The workers clone REPO_URL = this repository at REF = its HEAD commit, as on a real slice: **they see
committed code only**. ``launch/tpu_vm.sh`` itself runs from this checkout, but what it runs on the workers
(``launch/install_env.sh``, ``requirements/runtime.txt``, the training code) is HEAD's: uncommitted changes
there are not rehearsed until committed. The SLURM rehearsal runs entirely in a clone of HEAD (its "shared
filesystem"), ``slurm_gpu.sh`` included, so nothing is built in this checkout.

tpu_vm.sh installs what it installs on a slice, jax[tpu] included: libtpu loads nothing without TPU chips,
and the workers' JAX_PLATFORMS=cpu keeps jax on the CPU. The SLURM rehearsal sets JAX_EXTRA= (the lock's
CPU jax) instead of jax[cuda12], whose CUDA wheels are gigabytes and need a GPU. uv's and pip's caches are
this machine's (``$XDG_CACHE_HOME`` or ``~/.cache``), shared by the stand-in workers as a warm image's
would be. Measured on the shared 2-core machine (load 3-5 from other jobs): the TPU install step (both
workers) 44 s with an empty cache (it downloads the runtime lock's wheels and libtpu; racing on an empty cache
the two workers unpack them twice: 7.5 GB of cache, 3.8 GB once warm), 12 s warm;
the whole module about 3.5 minutes warm, 4 cold; most of it is six launch.train start-ups (imports and an
XLA compile each), not the installs.

Also here: ``requirements/runtime.txt`` is the runtime dependency closure of the lock (so the two cannot
drift), and the slice variables give the coordinator, process count and id that jax's own TPU cluster
detection computes.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
STANDINS = ROOT / "tests" / "standins"
TIMEOUT = 600


# ---------------------------------------------------------------------------------------------------------
# What the launchers train: one run file and its overrides (the only place to change it)
# ---------------------------------------------------------------------------------------------------------

def training(num_steps: int) -> tuple[str, list[str]]:
    """(run file, extra launch.train flags) for a rehearsal that trains ``num_steps`` steps: the CPU smoke run
    (tiny MLM on the bundled demo data, global batch 8 = 2 workers x 4 devices, a checkpoint every 2 steps)
    with the test tokenizer."""
    from data_helpers import demo_tokenizer_dir

    return "gin/runs/cpu_smoke.gin", [f"--gin_bindings=DEMO_TOKENIZER = '{demo_tokenizer_dir()}'",
                                      f"--gin_bindings=TrainConfig.num_steps = {num_steps}"]


FIRST_STEPS, MORE_STEPS = 2, 4  # the second tpu_vm.sh run resumes the first's workdir with more steps


# ---------------------------------------------------------------------------------------------------------
# The runtime lock: a generated subset of requirements/lock.txt
# ---------------------------------------------------------------------------------------------------------

# pyproject dependencies that launch.train never imports (exporting to / loading from Hugging Face only)
NOT_AT_RUNTIME = {"transformers"}
# required by some package but not pinned in lock.txt: packaging tools that every venv is seeded with, and
# that uv resolves (unpinned) into the runtime venv
UNPINNED = {"setuptools", "wheel"}
RUNTIME_PYTHONS = ("3.11", "3.12")
RUNTIME_HEADER = """\
# The runtime-only subset of requirements/lock.txt: what `python -m launch.train` needs on TPU and GPU workers
# (launch/install_env.sh installs it, plus JAX's accelerator extra and this project with --no-deps).
# GENERATED, do not edit: the dependency closure, for Python {pythons}, of pyproject.toml's dependencies less
# {excluded} (export/import only), each line copied from lock.txt. No torch, sentence-transformers,
# mteb, pytest. tensorflow_cpu (in the lock) is not required by anything; it ships the same `tensorflow`
# module as tensorflow, which tensorflow-text requires. setuptools and wheel are resolved by the installer.
# Regenerate after changing lock.txt or pyproject.toml:  .venv/bin/python tests/test_launchers.py --write-runtime-lock
# (tests/test_launchers.py::test_runtime_lock_is_the_runtime_closure_of_the_lock fails while it is stale)
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_lines(path: pathlib.Path) -> dict[str, str]:
    """{canonical name: pinned line} of a requirements file (comments and blank lines skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0]
            out[_canonical(name)] = line
    return out


def runtime_closure() -> dict[str, str]:
    """The lock's pinned lines for the runtime dependency closure, read from the installed distributions'
    metadata (the test venv has the whole lock installed), markers evaluated for each RUNTIME_PYTHONS."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = [_canonical(Requirement(r).name) for r in project["dependencies"]]
    roots = [r for r in roots if r not in NOT_AT_RUNTIME]
    lock = lock_lines(ROOT / "requirements" / "lock.txt")
    seen, stack = set(), [(r, "") for r in roots]
    while stack:
        name, extra = stack.pop()
        if (name, extra) in seen or name in UNPINNED:
            continue
        seen.add((name, extra))
        for text in importlib.metadata.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"python_version": v, "python_full_version": f"{v}.0",
                                                              "extra": extra}) for v in RUNTIME_PYTHONS):
                stack += [(_canonical(req.name), e) for e in ("", *req.extras)]
    seen = {name for name, _ in seen}
    missing = sorted(seen - set(lock))
    assert not missing, f"required at run time but not pinned in requirements/lock.txt: {missing}"
    return {name: lock[name] for name in seen}


def runtime_lock_text() -> str:
    header = RUNTIME_HEADER.format(pythons=" and ".join(RUNTIME_PYTHONS), excluded=", ".join(sorted(NOT_AT_RUNTIME)))
    return header + "".join(line + "\n" for _, line in sorted(runtime_closure().items()))


def test_runtime_lock_is_the_runtime_closure_of_the_lock():
    """Line for line the lock's pins, exactly the packages training needs, none of the test stack."""
    runtime = ROOT / "requirements" / "runtime.txt"
    assert runtime.read_text() == runtime_lock_text(), (
        "requirements/runtime.txt is stale: .venv/bin/python tests/test_launchers.py --write-runtime-lock")
    pins = lock_lines(runtime)
    lock = lock_lines(ROOT / "requirements" / "lock.txt")
    assert all(lock[name] == line for name, line in pins.items())
    assert {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "seqio", "tensorflow", "tensorflow-datasets",
            "grain", "array-record", "gin-config", "tokenizers", "numpy"} <= set(pins)
    assert not {"torch", "transformers", "sentence-transformers", "mteb", "pytest", "pytest-xdist"} & set(pins)


# ---------------------------------------------------------------------------------------------------------
# jax.distributed from a slice's variables
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("env, expected", [
    ({"TPU_WORKER_ID": "1", "TPU_WORKER_HOSTNAMES": "127.0.0.1,127.0.0.2"}, ("127.0.0.1:8482", 2, 1)),
    ({"TPU_WORKER_ID": "0", "TPU_PROCESS_ADDRESSES": "localhost:8476,127.0.0.2:8476",
      "TPU_WORKER_HOSTNAMES": "ignored", "JAX_COORDINATOR_PORT": "1234"}, ("localhost:1234", 2, 0)),
    ({"TPU_WORKER_ID": "1", "TPU_WORKER_HOSTNAMES": "127.0.0.3,127.0.0.4", "MEGASCALE_NUM_SLICES": "2",
      "MEGASCALE_SLICE_ID": "1", "MEGASCALE_COORDINATOR_ADDRESS": "127.0.0.1:8080"}, ("127.0.0.1:8482", 4, 3)),
], ids=["one-slice", "process-addresses", "multislice"])
def test_slice_variables_give_what_jax_computes(monkeypatch, env, expected):
    from jax._src.clusters import GkeTpuCluster

    from bilingual.training import distributed

    for name in ("TPU_PROCESS_ADDRESSES", "JAX_COORDINATOR_PORT"):
        monkeypatch.delenv(name, raising=False)
    # empty, not absent: jax would ask the GCE metadata server for an absent MEGASCALE_* value
    for name in ("MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.setenv(name, "")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.tpu_env_params() == expected
    jax_values = (GkeTpuCluster.get_coordinator_address(timeout_secs=10,
                                                        override_coordinator_port=os.environ.get("JAX_COORDINATOR_PORT")),
                  GkeTpuCluster.get_process_count(), GkeTpuCluster.get_process_id())
    assert jax_values == expected
    assert distributed.detected_cluster() == "tpu-env"  # no TPU here, so jax's own detection would not run


def test_detected_cluster_needs_a_whole_environment():
    from bilingual.training.distributed import detected_cluster

    slurm_step = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
                  "SLURM_LOCALID": "0"}
    assert detected_cluster(slurm_step) == "slurm"
    assert detected_cluster({"SLURM_JOB_ID": "7"}) is None  # a batch script outside srun: one process
    assert detected_cluster({"OMPI_COMM_WORLD_SIZE": "2"}) == "ompi"
    assert detected_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) is None  # no worker id
    assert detected_cluster({}) is None


def test_a_worker_id_that_is_no_number_is_named():
    from bilingual.training.distributed import tpu_env_params

    # what libtpu writes into TPU_WORKER_ID when it cannot tell the worker (seen in CI after an AOT compile)
    garbage = "WARNING: could not determine TPU worker number, please set env var `TPU_WORKER_ID` manually"
    with pytest.raises(ValueError, match=r"TPU_WORKER_ID='WARNING.*is no worker number"):
        tpu_env_params({"TPU_WORKER_ID": garbage, "TPU_WORKER_HOSTNAMES": "a,b"})


# ---------------------------------------------------------------------------------------------------------
# The launchers, run end to end
# ---------------------------------------------------------------------------------------------------------

def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def cache_dir() -> str:
    return os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")


def image_python() -> str | None:
    """A Python 3.10 with pip to be the stand-in image's ``python3`` (tpu-ubuntu2204-base has 3.10)."""
    pyenv = os.environ.get("PYENV_ROOT", str(pathlib.Path.home() / ".pyenv"))
    for path in sorted(glob.glob(f"{pyenv}/versions/3.10*/bin/python3.10")) + ["/usr/bin/python3.10"]:
        if os.access(path, os.X_OK) and subprocess.run([path, "-m", "pip", "--version"],
                                                       capture_output=True).returncode == 0:
            return path
    return None


def launcher_env(**extra) -> dict:
    """The launching machine: the stand-ins first on PATH, no test-suite JAX settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "VIRTUAL_ENV", "PYTEST"))}
    env["PATH"] = f"{STANDINS}:{env['PATH']}"
    env.update(extra)
    return env


def run(cmd, cwd, env) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, f"{cmd[:2]} exited {proc.returncode}:\n{proc.stdout[-6000:]}"
    return proc.stdout


def data_states(workdir: pathlib.Path, step: int) -> list[dict]:
    return [json.loads((workdir / "checkpoints" / str(step) / "data" / f"process_{i}-of-2.json").read_text())
            for i in range(2)]


def lines_of(output: str, who: str) -> str:
    return "\n".join(line for line in output.splitlines() if line.startswith(who))


@pytest.fixture(scope="module")
def tpu_runs(tmp_path_factory):
    """tpu_vm.sh twice on one stand-in slice: FIRST_STEPS steps, then again with MORE_STEPS (same workdir)."""
    tmp = tmp_path_factory.mktemp("tpu_vm")
    workdir = tmp / "bucket" / "run"  # stands for gs://bucket/run: one directory both workers write to
    env = launcher_env(GCLOUD_STANDIN_ROOT=str(tmp / "gcloud"), GCLOUD_STANDIN_CACHE=cache_dir(),
                       REPO_URL=str(ROOT), REF=head_commit())  # JAX_EXTRA unset: jax[tpu], as on a slice
    if image_python():
        env["GCLOUD_STANDIN_IMAGE_PYTHON"] = image_python()
    outputs = []
    for steps in (FIRST_STEPS, MORE_STEPS):
        run_file, flags = training(steps)
        outputs.append(run(["bash", "launch/tpu_vm.sh", "standin-slice", "us-central2-b", "v4-16", str(workdir),
                            run_file, *flags], ROOT, env))
    calls = [json.loads(line) for line in (tmp / "gcloud" / "calls.jsonl").read_text().splitlines()]
    return {"outputs": outputs, "calls": calls, "workdir": workdir, "vm": tmp / "gcloud" / "vms" / "standin-slice"}


def test_tpu_vm_gcloud_calls(tpu_runs):
    verbs = [c[3] for c in tpu_runs["calls"]]
    assert verbs == ["describe", "create", "ssh", "ssh", "describe", "ssh", "ssh"], "the slice is created once"
    create = tpu_runs["calls"][1]
    assert create[4:] == ["standin-slice", "--zone", "us-central2-b", "--accelerator-type", "v4-16",
                          "--version", "tpu-ubuntu2204-base"]
    for call in (c for c in tpu_runs["calls"] if c[3] == "ssh"):
        assert call[4:8] == ["standin-slice", "--zone", "us-central2-b", "--worker=all"] and call[8] == "--command"
    install, train = tpu_runs["calls"][2][9], tpu_runs["calls"][3][9]
    assert "launch/install_env.sh tpu" in install and head_commit() in install
    assert ".venv/bin/python -m launch.train --gin_file=gin/runs/cpu_smoke.gin" in train


def test_tpu_vm_installs_the_runtime_lock_on_every_worker(tpu_runs):
    first, second = tpu_runs["outputs"]
    for i in range(2):
        assert "install_env: building .venv" in lines_of(first, f"[worker {i}]")
        assert "install_env: .venv is up to date" in lines_of(second, f"[worker {i}]"), "the re-run skips it"
        venv = tpu_runs["vm"] / f"worker-{i}" / "bilingual" / ".venv"
        probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import sys, importlib.util as u; print(sys.version_info[:2] >= (3, 11), "
                                "u.find_spec('libtpu') is not None, "
                                "[m for m in ('torch', 'transformers', 'mteb', 'sentence_transformers', 'pytest') "
                                "if u.find_spec(m)])"], capture_output=True, text=True, check=True)
        # Python >= 3.11, jax[tpu]'s libtpu (unused here: no TPU chips, so jax stays on the CPU), no test stack
        assert probe.stdout.split(maxsplit=2) == ["True", "True", "[]\n"], probe.stdout
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=venv.parent, capture_output=True, text=True)
        assert head.stdout.strip() == head_commit()
    if image_python():  # the image's python3 was 3.10; the venv has 3.11 all the same
        assert "Python 3.10" in subprocess.run(["python3", "-V"], env=dict(os.environ, PATH=str(
            tpu_runs["vm"] / "image-bin")), capture_output=True, text=True).stdout


def test_tpu_vm_workers_train_and_checkpoint_together(tpu_runs):
    first, second = tpu_runs["outputs"]
    workdir = tpu_runs["workdir"]
    for i in range(2):
        assert f"process {i} of 2; 4 local / 8 global devices" in lines_of(first, f"[worker {i}]")
    assert f"[worker 0] done: step {FIRST_STEPS}" in first
    assert [s["shard_index"] for s in data_states(workdir, FIRST_STEPS)] == [0, 1]
    # the second run resumed the first's checkpoint and trained only the new steps, on both workers
    for i in range(2):
        mine = lines_of(second, f"[worker {i}]")
        assert f"resumed from {workdir / 'checkpoints' / str(FIRST_STEPS)} at step {FIRST_STEPS}" in mine
    assert f"step {MORE_STEPS}/{MORE_STEPS}" in second and f"step {FIRST_STEPS}/{MORE_STEPS}" not in second
    assert f"[worker 0] done: step {MORE_STEPS}" in second
    assert [s["shard_index"] for s in data_states(workdir, MORE_STEPS)] == [0, 1]
    for i in range(2):  # each worker's own log of both runs, as the launcher tees it
        log = (tpu_runs["vm"] / f"worker-{i}" / "bilingual" / f"train-{socket.gethostname()}.log").read_text()
        assert log.count(f"process {i} of 2; 4 local / 8 global devices") == 2


def free_slurm_job_id() -> int:
    """A job id whose coordinator port (jax: 61440 + id % 4096) is free on this machine now."""
    first = os.getpid() % 4096
    for offset in range(4096):
        port = 61440 + (first + offset) % 4096
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return 4096 * 100 + port - 61440
    raise RuntimeError("no free port in 61440-65535")


def test_slurm_gpu_installs_once_and_trains_on_every_node(tmp_path):
    """The batch script as sbatch runs it (a copy, in the submit directory): install, then srun on 2 nodes."""
    shared = tmp_path / "shared"  # the cluster's shared filesystem: the checkout, the venv, the workdir
    repo = shared / "bilingual"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    subprocess.run(["git", "checkout", "-q", "--detach", head_commit()], cwd=repo, check=True)
    workdir = shared / "runs" / "smoke"
    env = launcher_env(HOME=str(shared / "home"), XDG_CACHE_HOME=cache_dir(), JAX_EXTRA="",
                       SLURM_JOB_ID=str(free_slurm_job_id()), SLURM_SUBMIT_DIR=str(repo), SLURM_JOB_NUM_NODES="2",
                       SLURM_NNODES="2", SLURM_JOB_NODELIST="localhost,127.0.0.2", SRUN_STANDIN_LOG=str(tmp_path / "srun.jsonl"),
                       JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
                       SLURM_GPUS_ON_NODE="4")  # no GPUs here: only checks that every task is given all 4 ids
    run_file, flags = training(FIRST_STEPS)
    # sbatch runs a copy of the script from its spool directory, in the submit directory
    spool = tmp_path / "spool"
    spool.mkdir()
    shutil.copy(repo / "launch" / "slurm_gpu.sh", spool / "slurm_script")
    out = run(["bash", str(spool / "slurm_script"), str(workdir), run_file, *flags], tmp_path, env)
    assert "install_env: building .venv" in out
    srun_calls = [json.loads(line) for line in (tmp_path / "srun.jsonl").read_text().splitlines()]
    assert srun_calls == [[".venv/bin/python", "-m", "launch.train", f"--gin_file={run_file}",
                           f"--workdir={workdir}", *flags]]
    for i in range(2):
        mine = lines_of(out, f"[task {i}]")
        assert f"process {i} of 2; 4 local / 8 global devices" in mine
        # jax's SLURM detection would give the task only device $SLURM_LOCALID; the script names them all
        assert "JAX distributed initialized with visible devices: 0,1,2,3" in mine
    assert f"[task 0] done: step {FIRST_STEPS}" in out
    assert [s["shard_index"] for s in data_states(workdir, FIRST_STEPS)] == [0, 1]
    # installed once, on the shared filesystem: a second job finds the stamp (the TPU rehearsal runs a whole
    # second launch; here the batch script's install step alone, as it runs it, under the lock file)
    assert (repo / ".venv" / ".bilingual-install").exists()
    again = run(["flock", ".venv.lock", "launch/install_env.sh", ""], repo, env)
    assert "install_env: .venv is up to date" in again

if __name__ == "__main__":
    if sys.argv[1:] == ["--write-runtime-lock"]:
        (ROOT / "requirements" / "runtime.txt").write_text(runtime_lock_text())
        print("wrote requirements/runtime.txt")
    else:
        sys.exit(f"usage: {sys.argv[0]} --write-runtime-lock")
