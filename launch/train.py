"""Train one stage from gin files.

    python -m launch.train --gin_file=gin/runs/demo_de_en_mlm.gin --workdir=runs/demo/mlm \
        [--gin_bindings="TrainConfig.init_from='runs/demo/mlm/checkpoints'"] \
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

gin files are looked up relative to the current directory and to the repository's ``gin/`` folder.
Running again with the same ``--workdir`` resumes from its latest checkpoint. On TPU VMs and under
SLURM/MPI launchers multi-host start-up is automatic; elsewhere pass the three distributed flags.

``TrainConfig.stage = 'finetune'`` (``gin/stages/finetune.gin``) fine-tunes a head on one labelled task
instead (``bilingual.training.finetune``): epochs, dev after each, best dev checkpoint, its test score.
A fine-tuning workdir is not resumed (runs are minutes long); use a new one.

Bad input (a gin error, an unknown task or mixture, a malformed data row, a damaged checkpoint) prints one
``error:`` line and exits with status 2 (``launch.cli``); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from launch import cli  # noqa: E402

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.parser(__doc__)
    parser.add_argument("--gin_file", action="append", required=True, help="gin file (repeatable)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding (repeatable)")
    parser.add_argument("--workdir", required=True, help="checkpoints, TensorBoard logs, operative config")
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    return parser.parse_args(argv)


@cli.entry_point
def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's per-save chatter
    from bilingual.training import distributed

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)

    import gin
    import jax

    from launch import configurables, data_factory

    gin.add_config_file_search_path(str(GIN_DIR))
    configurables.parse(args.gin_file, args.gin_bindings)
    if configurables.stage() == "finetune":
        return run_finetune(args.workdir)
    config, data, evaluation = configurables.build()
    batches = data_factory.make_batches(config, data)
    hooks = data_factory.make_eval_hooks(evaluation, config.eval_every)

    from bilingual.training.trainer import train

    try:
        result = train(config, args.workdir, batches, hooks=hooks, operative_config=gin.config_str())
    finally:
        batches.close()
    if jax.process_index() == 0:
        print(f"done: step {int(result.state.step)}; checkpoints in {result.workdir / 'checkpoints'}")


def run_finetune(workdir: str) -> None:
    """The ``finetune`` stage: one task, epochs, best dev checkpoint, test of the best (see
    ``bilingual.training.finetune``)."""
    import gin
    import jax

    from bilingual import tokenizer as tokenizer_lib
    from bilingual.training.finetune import finetune
    from launch import configurables
    from tasks import finetune_data

    task = configurables.finetune_task_settings()
    config = configurables.build_finetune(task["spec"])
    data = finetune_data.load_task(task["spec"], task["data_root"])
    operative = gin.config_str()
    result = finetune(config, workdir, data, tokenizer_lib.load(task["tokenizer_dir"]))
    if jax.process_index() == 0:
        (result.workdir / "operative_config.gin").write_text(operative)
        print(f"done: best dev epoch {result.best_epoch}; test {result.metric} {result.test[result.metric]:.4f}; "
              f"checkpoint in {result.workdir / 'checkpoints'}")


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
