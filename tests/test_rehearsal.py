"""Every full-scale run file (a TPU slice or a GPU cluster), run for real through ``launch.train`` on
2 processes x 4 CPU devices (``jax.distributed`` on localhost, gloo), stage after stage of its chain.

Each chain starts as the README's does: the tokenizer trained by ``launch.train_tokenizer`` with
``gin/tokenizer/<pair>_chain.gin``; then each stage runs from the previous stage's checkpoints
(``MLM_CHECKPOINTS`` / ``PAIRS_CHECKPOINTS``). The overrides are only those of ``tests/rehearsal.py`` (tiny
model, 2 steps, a small batch, data macros pointed at bundled data); mesh axes, stage logic, sequence lengths,
checkpointing, the evaluation hook and data sharding stay as written. For every stage the test asserts: both
processes exit 0; the final checkpoint holds both processes' data states (each host read its own shard and
saved its position); the evaluation hook reported at the final step on both processes; a stage with a
previous stage starts from that stage's checkpoints. A run file naming data its data file does not register
fails the chain (``launch.train`` exits 2 naming ``data.name``), and so does a data path that matches nothing.
"""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys

import gin
import pytest

from gin_helpers import bound_values
from rehearsal import GIN, ROOT, STEPS, bindings_for, data_macros, train_tokenizer

WORKER = pathlib.Path(__file__).resolve().parent / "rehearsal_worker.py"
PROCESSES, DEVICES = 2, 4
TIMEOUT = 900

# chain -> (language pair, its stages in order; a stage is (run file stem, the macro naming its predecessor))
CHAINS = {
    "de_en_tpu_v4_64": ("de_en", [("de_en_tpu_v4_64_mlm", None), ("de_en_tpu_v4_64_pairs", "MLM_CHECKPOINTS"),
                                  ("de_en_tpu_v4_64_multitask", "PAIRS_CHECKPOINTS")]),
    "es_en_tpu_v5e_64": ("es_en", [("es_en_tpu_v5e_64_mlm", None), ("es_en_tpu_v5e_64_pairs", "MLM_CHECKPOINTS"),
                                   ("es_en_tpu_v5e_64_multitask", "PAIRS_CHECKPOINTS")]),
    # the GPU chain fine-tunes the backbone of the TPU chain's first stage (its run files say so)
    "de_en_8gpu": ("de_en", [("de_en_8gpu_pairs", "MLM_CHECKPOINTS"), ("de_en_8gpu_multitask", "PAIRS_CHECKPOINTS")]),
}
NOT_FULL_SCALE = ("demo_", "cpu_smoke", "finetune_")  # the CPU demo, the smoke run and the probes


def full_scale_runs() -> set[str]:
    return {p.stem for p in (GIN / "runs").glob("*.gin") if not p.stem.startswith(NOT_FULL_SCALE)}


def data_name(stem: str) -> str:
    """``data.name`` as the run file binds it."""
    return bound_values(GIN / "runs" / f"{stem}.gin", "data.name")[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def segments(stdout: str) -> list[str]:
    """A worker's stdout cut after each stage's status line: one piece per stage that ran."""
    pieces, current = [], []
    for line in stdout.splitlines():
        current.append(line)
        if line.startswith('{"stage": '):
            pieces.append("\n".join(current))
            current = []
    return pieces


def run_chain(stages: list[list[str]]) -> list[tuple[str, str]]:
    """Runs the stages (``launch.train`` argument lists) on 2 processes; returns each one's (stdout, stderr)."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), "--devices", str(DEVICES), "--num_processes",
                               str(PROCESSES), "--process_id", str(i), "--port", str(port), "--stages",
                               json.dumps(stages)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(PROCESSES)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT))
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"process exited {p.returncode}:\n{out[-2000:]}\n{err[-4000:]}"
    return outs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """pair -> (data macros, tokenizer directory), made once for the module."""
    out = {}
    for pair in ("de_en", "es_en"):
        tmp = tmp_path_factory.mktemp(pair)
        macros = data_macros(pair, tmp / "data")
        out[pair] = (macros, train_tokenizer(pair, macros, tmp / "tokenizer"))
    return out


@pytest.fixture(scope="module")
def chains(data, tmp_path_factory):
    """chain -> {stage: (workdir, the checkpoints it starts from or None, [its stdout per process])}, the
    chains run in the order above (the GPU chain starts from the first chain's MLM stage)."""
    results, checkpoints = {}, {}
    for chain, (pair, stages) in CHAINS.items():
        macros, tokenizer = data[pair]
        tmp = tmp_path_factory.mktemp(chain)
        argvs, workdirs, starts = [], {}, {}
        for stem, previous in stages:
            run = GIN / "runs" / f"{stem}.gin"
            stage = stem.rsplit("_", 1)[1]
            extra = {"TOKENIZER": tokenizer}
            starts[stem] = None
            if previous:
                starts[stem] = extra[previous] = checkpoints[(pair, previous.split("_")[0].lower())]
            workdirs[stem] = tmp / stage
            argvs.append([f"--gin_file={run}", f"--workdir={workdirs[stem]}",
                          *[f"--gin_bindings={b}" for b in bindings_for(run, macros, PROCESSES * DEVICES, **extra)]])
            checkpoints[(pair, stage)] = str(workdirs[stem] / "checkpoints")
        pieces = [segments(out) for out, _ in run_chain(argvs)]
        results[chain] = {stem: (workdirs[stem], starts[stem], [p[i] for p in pieces if i < len(p)])
                          for i, (stem, _) in enumerate(stages)}
    return results


def test_every_full_scale_run_file_is_rehearsed():
    rehearsed = {stem for _, stages in CHAINS.values() for stem, _ in stages}
    assert full_scale_runs() == rehearsed


@pytest.mark.parametrize("chain", list(CHAINS))
def test_chain_trains_every_stage_on_two_processes(chains, chain):
    pair, stages = CHAINS[chain]
    for index, (stem, _) in enumerate(stages):
        workdir, start, outs = chains[chain][stem]
        stage = stem.rsplit("_", 1)[1]
        assert len(outs) == PROCESSES, stem
        for out in outs:  # each process: this stage ended with status 0, and its eval hook ran at the last step
            assert out.endswith(json.dumps({"stage": index, "status": 0})), (stem, out[-2000:])
            assert f"@ step {STEPS}: eval/" in out, (stem, out[-2000:])
        assert f"done: step {STEPS}" in outs[0], stem
        if start:
            assert f"[{stage}] encoder initialised from {start}" in outs[0], (stem, outs[0][-2000:])
        else:
            assert "encoder initialised from" not in outs[0], stem
        final = workdir / "checkpoints" / str(STEPS)
        states = sorted(p.name for p in (final / "data").glob("process_*.json"))
        assert states == [f"process_{i}-of-{PROCESSES}.json" for i in range(PROCESSES)], (stem, states)
        for i, name in enumerate(states):  # host i read shard i of 2 of the run's data, STEPS batches
            state = json.loads((final / "data" / name).read_text())
            assert (state["shard_index"], state["num_shards"], state["step"]) == (i, PROCESSES, STEPS), (stem, state)
            assert state["name"] == data_name(stem) and state["tasks"], (stem, state)
            if stage == "multitask":  # tasks named <type>_<lang> (gin/datasets/<pair>_multitask.gin)
                drawn = {name.split("_")[0] for name in state["tasks"]}
                assert drawn == {"retrieval", "sts"}, (f"{stem}: {STEPS} steps drew only {sorted(drawn)}; "
                                                       "raise rehearsal.STEPS", state["tasks"])


def test_unregistered_data_and_missing_paths_fail_before_compiling(data, tmp_path, capsys):
    """In one process, the first stage with a data name nothing registers, then with a path that matches
    nothing: exit status 2 and one line naming the gin key, before any step is compiled."""
    from launch import train

    macros, tokenizer = data["de_en"]
    run = GIN / "runs" / "de_en_tpu_v4_64_mlm.gin"
    base = [f"--gin_file={run}", f"--workdir={tmp_path / 'w'}",
            *[f"--gin_bindings={b}" for b in bindings_for(run, macros, 8, TOKENIZER=tokenizer)]]
    gin.clear_config()
    # a name no data file registers (the old run files named the demo's 'mlm_de_en', which other tests of
    # this process may have registered)
    assert train.main(base + ["--gin_bindings=data.name = 'mlm_de_en_nowhere'"]) == 2
    err = capsys.readouterr().err
    assert "data.name='mlm_de_en_nowhere' is not a registered task or mixture" in err and "compiled" not in err
    gin.clear_config()
    missing = str(tmp_path / "nowhere" / "*.array_record")
    assert train.main(base + [f"--gin_bindings=CULTURAX_DE = [{missing!r}]"]) == 2
    err = capsys.readouterr().err
    assert "mlm_de_web/register_text_task.files" in err and missing in err
    gin.clear_config()
