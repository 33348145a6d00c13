"""One process of the multi-host test: N fake CPU devices, gloo collectives, a few trainer steps.

    python tests/multihost_worker.py --devices 4 --process_id I --num_processes 2 --port P --workdir W
prints one JSON line: the logged losses.
"""

import argparse
import json
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--devices", type=int, required=True)
parser.add_argument("--process_id", type=int, default=0)
parser.add_argument("--num_processes", type=int, default=1)
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--workdir", required=True)
args = parser.parse_args()

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from bilingual import get_config, sharding  # noqa: E402
from bilingual.optim import OptimizerConfig  # noqa: E402
from bilingual.training import distributed  # noqa: E402
from bilingual.training.trainer import TrainConfig, train  # noqa: E402
from train_helpers import SyntheticBatches  # noqa: E402

if args.num_processes > 1:
    distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
assert jax.device_count() == 8, jax.devices()

config = TrainConfig(stage="pairs", model=get_config("tiny", vocab_size=512, num_layers=1, hidden_dropout=0.0),
                     optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=3),
                     num_steps=3, batch_size=16, mesh=sharding.MeshConfig(data=4, fsdp=2), log_every=1,
                     checkpoint_every=100, peak_flops_per_device=1e11)
batches = SyntheticBatches(["pairs"], batch=16, shard_index=jax.process_index(), num_shards=jax.process_count())
result = train(config, args.workdir, batches)
print(json.dumps([h["loss"] for h in result.history]))
