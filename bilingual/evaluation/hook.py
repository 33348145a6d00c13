"""A trainer hook that runs an evaluation suite every N steps.

    hook = make_eval_hook("de", data_root=None, tokenizer="runs/tok", every_n_steps=1000)
    metrics = hook(step, config, params)   # {} on steps that are not multiples of N

The returned metrics are flat ``{"eval/<task>/<metric>": value, "eval/average": value}`` for a metric
writer. The hook keeps one ``Encoder`` per model configuration and swaps in the new parameters each
time, so the forward pass compiles once per padded shape for the whole training run. Parameters may be
sharded over a mesh; they are gathered onto one device for evaluation.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from bilingual.config import EncoderConfig
from bilingual.evaluation import suites

logger = logging.getLogger(__name__)


def make_eval_hook(suite: str, data_root=None, tokenizer=None, every_n_steps: int = 1000, *,
                   limit: Optional[int] = None, batch_size: int = 32, max_length: Optional[int] = None,
                   prefix: str = "eval/", suites_file=suites.SUITES_FILE
                   ) -> Callable[[int, EncoderConfig, dict], dict[str, float]]:
    """``hook(step, config, params) -> dict[str, float]``; runs ``suite`` when ``step % every_n_steps == 0``.

    ``params`` are ``JinaBert`` parameters, or a masked-LM tree ``{"bert": ..., "cls": ...}`` (the encoder
    part is used). The suite's files are checked now, so a wrong path fails before training starts.
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

    def hook(step: int, config: EncoderConfig, params) -> dict[str, float]:
        if step % every_n_steps:
            return {}
        if isinstance(params, dict) and set(params) >= {"bert", "cls"}:
            params = params["bert"]
        encoder = state.get("encoder")
        if encoder is None or encoder.config != config:
            encoder = state["encoder"] = Encoder(config, params, tokenizer)
        else:
            encoder.set_params(params)

        class Configured:
            def encode(self, texts):
                return encoder.encode(texts, batch_size=batch_size, max_length=max_length)

        result = suites.run_suite(Configured(), tasks, root, limit=limit)
        metrics = {f"{prefix}{name}/{metric}": value for name, task in result["tasks"].items()
                   for metric, value in task["metrics"].items()}
        metrics[f"{prefix}average"] = suites.average_main_score(result)
        metrics[f"{prefix}seconds"] = result["timings"]["total_seconds"]
        logger.info("step %d: %s average %.2f (%s)", step, suite, metrics[f"{prefix}average"],
                    ", ".join(f"{n} {t['main_score']:.1f}" for n, t in result["tasks"].items()))
        return metrics

    return hook
