"""One process of a full-scale chain rehearsal (tests/test_rehearsal.py): N fake CPU devices, gloo
collectives, then each stage run through ``launch.train.main`` in turn.

    python tests/rehearsal_worker.py --devices 4 --num_processes 2 --process_id I --port P \\
        --stages '[["--gin_file=gin/runs/x_mlm.gin", "--workdir=W/mlm", "--gin_bindings=..."], [...]]'

``jax.distributed`` is initialised once, here, with the same values ``launch.train``'s distributed flags would
give it; the stages then run one after the other in this process, as separate ``launch.train`` commands
would (gin is cleared between them; every stage registers its data again). Prints one JSON line per stage:
``{"stage": i, "status": exit status of launch.train.main}``, and stops at the first stage that fails.
"""

import argparse
import json
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--devices", type=int, required=True)
parser.add_argument("--process_id", type=int, required=True)
parser.add_argument("--num_processes", type=int, required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--stages", required=True, help="JSON list of launch.train argument lists")
args = parser.parse_args()

os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

import gin  # noqa: E402

from bilingual.training import distributed  # noqa: E402
from launch import train  # noqa: E402

distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)
for i, argv in enumerate(json.loads(args.stages)):
    gin.clear_config()
    status = train.main(argv) or 0
    print(json.dumps({"stage": i, "status": status}), flush=True)
    if status:
        sys.exit(status)
