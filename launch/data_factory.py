"""Builds a stage's batch iterator and evaluation hook from the gin-configured settings.

Importing ``tasks.run_data`` registers the data gin configurables (``register_data``, ``register_*_task``), so
this module must be imported before gin files are parsed (``launch.train`` does).
"""

from __future__ import annotations

import jax

from tasks import batching, run_data


def make_batches(config, data: dict):
    """The host-local batch iterator for ``data["name"]`` (a task or mixture).

    Registers the run's data first (``register_data`` in gin: user tasks, and the bundled demo tasks when
    ``register_data.demo_tokenizer`` is set). ``data["options"]`` are keyword arguments of
    ``tasks.batching.make_batch_iterator`` (``sequence_lengths``, ``rates``, ``mlm_rate``, ...). Each process
    reads its own shard and yields ``global batch / process_count`` rows.
    """
    run_data.register_data()
    options = dict(data["options"])
    packing = options.get("packing")
    if packing is not None and packing.get("units") is None:  # the fewest units the mesh and GradCache split
        from bilingual import sharding

        divisor = sharding.batch_divisor(sharding.make_mesh(config.mesh))
        options["packing"] = {**packing, "units": divisor * max(1, getattr(config.step, "gradcache_chunks", 1))}
    return batching.make_batch_iterator(
        data["name"], data["split"], config.batch_size // jax.process_count(), data["seed"],
        shard_index=jax.process_index(), num_shards=jax.process_count(), **options)


def make_eval_hooks(evaluation: dict, every_n_steps: int) -> list:
    """The trainer's evaluation hooks: one for ``evaluation["suite"]``, none when no suite is configured."""
    if not evaluation.get("suite") or every_n_steps < 1:
        return []
    from bilingual.evaluation.hook import make_eval_hook

    return [make_eval_hook(evaluation["suite"], evaluation.get("data_root"), evaluation["tokenizer_dir"],
                     every_n_steps=every_n_steps, limit=evaluation.get("limit"))]
