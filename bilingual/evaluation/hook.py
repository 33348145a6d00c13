"""A trainer hook that runs an evaluation suite every N steps and at the final step.

    hook = make_eval_hook("de", data_root=None, tokenizer="runs/tok", every_n_steps=1000)
    train(config, workdir, batches, hooks=[hook])

The hook (a ``bilingual.training.hooks.EvalHook``) decides its own cadence: every ``every_n_steps`` steps
and always at the last step, whatever ``num_steps`` is. Its metrics are flat
``{"eval/<task>/<metric>": value, "eval/average": value, "eval/seconds": value}``, the prefix added once.
The hook keeps one ``Encoder`` per model configuration and swaps in the new parameters each time, so the
forward pass compiles once per padded shape for the whole training run. Parameters may be
sharded over a mesh; they are gathered onto one device for evaluation.
"""

from __future__ import annotations

import logging
from typing import Optional

from bilingual.config import EncoderConfig
from bilingual.evaluation import suites
from bilingual.evaluation.configured import ConfiguredEncoder
from bilingual.training.hooks import EvalHook

logger = logging.getLogger(__name__)


def make_eval_hook(suite: str, data_root=None, tokenizer=None, every_n_steps: int = 1000, *,
                   limit: Optional[int] = None, batch_size: int = 32, max_length: Optional[int] = None,
                   prefix: str = "eval/", suites_file=suites.SUITES_FILE) -> EvalHook:
    """The trainer hook running ``suite``; ``hook.evaluate(step, config, params)`` runs it once, unprefixed.

    ``params`` are ``JinaBert`` parameters (the trainer passes the encoder inside any stage's model). The
    suite's files are checked now, so a wrong path fails before training starts.
    """
    if every_n_steps < 1:
        raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
    if tokenizer is None:
        raise ValueError("make_eval_hook needs the tokenizer (a transformers tokenizer or its directory)")
    from bilingual.encoder_api import Encoder, load_tokenizer

    tasks = suites.get_suite(suite, suites_file)
    root = suites.check_files(tasks, data_root)
    tokenizer = load_tokenizer(tokenizer)
    state: dict = {}

    def evaluate(step: int, config: EncoderConfig, params) -> dict[str, float]:
        encoder = state.get("encoder")
        if encoder is None or encoder.config != config:
            encoder = state["encoder"] = Encoder(config, params, tokenizer)
        else:
            encoder.set_params(params)

        configured = ConfiguredEncoder(encoder, batch_size, max_length, log=logger.info)
        result = suites.run_suite(configured, tasks, root, limit=limit)
        metrics = {f"{name}/{metric}": value for name, task in result["tasks"].items()
                   for metric, value in task["metrics"].items()}
        metrics["average"] = suites.average_main_score(result)
        metrics["seconds"] = result["timings"]["total_seconds"]
        logger.info("step %d: %s average %.2f (%s)", step, suite, metrics["average"],
                    ", ".join(f"{n} {t['main_score']:.1f}" for n, t in result["tasks"].items()))
        return metrics

    return EvalHook(evaluate, every_n_steps, prefix)
