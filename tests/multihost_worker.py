"""One process of the multi-host tests: N fake CPU devices, gloo collectives, the real input pipeline.

    python tests/multihost_worker.py --devices 4 --process_id I --num_processes 2 --port P --workdir W \\
        --tokenizer TOK [--hang_at STEP]

Trains the pairs stage on the bundled ``pairs_mix_de`` mixture (two seqio tasks over ``data/demo/train``)
read through ``tasks.batching``, host-sharded: process ``i`` of ``n`` reads shard ``i`` and passes its
``16 / n`` rows. One process with 8 devices reads both shards itself and concatenates them (process 0's rows
first, as the global batch is laid out), so it sees the same global batches. The evaluation hook runs the
bundled STSb-de suite (16 pairs) at steps 2 and 4. ``--hang_at S`` prints ``READY <S>`` once step ``S - 1``'s
checkpoint is on disk and then waits to be killed (the kill test). Prints one JSON line: the logged losses,
the evaluation averages and the exact checksums of the final parameters.
"""

import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--devices", type=int, required=True)
parser.add_argument("--process_id", type=int, default=0)
parser.add_argument("--num_processes", type=int, default=1)
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--workdir", required=True)
parser.add_argument("--tokenizer", required=True)
parser.add_argument("--hang_at", type=int, default=0)
args = parser.parse_args()

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from bilingual import checksums, get_config, sharding  # noqa: E402
from bilingual.optim import OptimizerConfig  # noqa: E402
from bilingual.training import distributed  # noqa: E402
from bilingual.training.hooks import Hook  # noqa: E402
from bilingual.training.trainer import TrainConfig, train  # noqa: E402
from launch import data_factory  # noqa: E402
from tasks import batching, demo  # noqa: E402

GLOBAL_BATCH, SHARDS, STEPS = 16, 2, 4
LENGTHS = {"query": 16, "passage": 24}

if args.num_processes > 1:
    distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
assert jax.device_count() == 8, jax.devices()
demo.register_demo_tasks(args.tokenizer)


def shard(index: int):
    return batching.make_batch_iterator("pairs_mix_de", batch_size=GLOBAL_BATCH // SHARDS, seed=3,
                                        sequence_lengths=LENGTHS, shard_index=index, num_shards=SHARDS)


class BothShards:
    """One process reading what the two hosts read, concatenated in process order."""

    def __init__(self):
        self.shards = [shard(0), shard(1)]

    def __next__(self):
        parts = [next(s) for s in self.shards]
        assert len({p["task"] for p in parts}) == 1, "every host draws the same task at a step"
        return {k: np.concatenate([p[k] for p in parts]) if isinstance(v, np.ndarray) else v
                for k, v in parts[0].items()}

    def get_state(self):
        return {"shards": [s.get_state() for s in self.shards]}

    def set_state(self, state):
        for s, saved in zip(self.shards, state["shards"]):
            s.set_state(saved)


class HangAt(Hook):
    """Stops making progress at step ``step`` (the previous step's checkpoint is written) until killed."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self, event):
        if event.step == self.step:
            print(f"READY {self.step}", flush=True)
            time.sleep(3600)


class Recorded(Hook):
    """The wrapped hook, keeping what it returned per step."""

    def __init__(self, hook):
        self.hook, self.values = hook, {}

    def __call__(self, event):
        out = self.hook(event)
        if out:
            self.values[str(event.step)] = out
        return out


if args.num_processes == 1:
    batches = BothShards()
else:
    assert jax.process_count() == SHARDS
    batches = shard(jax.process_index())
hooks = [Recorded(h) for h in data_factory.make_eval_hooks(
    {"suite": "STSb-de", "tokenizer_dir": args.tokenizer, "limit": 16}, every_n_steps=2)]
if args.hang_at:
    hooks.append(HangAt(args.hang_at))
config = TrainConfig(stage="pairs", model=get_config("tiny", vocab_size=2048, num_layers=1, hidden_dropout=0.0),
                     optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=1), num_steps=STEPS,
                     batch_size=GLOBAL_BATCH, mesh=sharding.MeshConfig(data=4, fsdp=2), log_every=1,
                     checkpoint_every=2, async_checkpoints=False, tokenizer=args.tokenizer,
                     peak_flops_per_device=1e11)
result = train(config, args.workdir, batches, hooks=hooks)
print(json.dumps({"losses": [h["loss"] for h in result.history if "loss" in h],
                  "eval": {step: values["eval/average"] for step, values in hooks[0].values.items()},
                  "checksums": checksums.tree_checksums(result.state.params),
                  "steps": [h["step"] for h in result.history if "loss" in h]}))
