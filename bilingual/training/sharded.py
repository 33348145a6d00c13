"""Train state creation and step compilation on a device mesh.

Parameter and optimiser-state shardings come from the logical axis names the modules declare
(``bilingual.sharding.LOGICAL_RULES``): optax's ``init`` on the boxed abstract parameters gives boxed
moments, so ``mu``/``nu`` are sharded exactly like their parameters (FSDP shards optimiser state too).
Batches are sharded over ``(data, fsdp)``. Steps are jitted with explicit in/out shardings and the state
donated, and compiled ahead of time so memory can be printed before the first step runs.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from bilingual import sharding
from bilingual.training.steps import TrainState


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, example_ids) -> TrainState:
    """Boxed (logically partitioned) shapes of the whole train state; no memory allocated."""

    def init(key):
        params = model.init(key, example_ids)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return jax.eval_shape(init, jax.random.key(0))


def state_shardings(model: nn.Module, tx, mesh: Mesh, example_ids, rules=sharding.LOGICAL_RULES):
    """``NamedSharding`` tree matching the (unboxed) train state; validates divisibility first."""
    boxed = abstract_state(model, tx, example_ids)
    sharding.check_divisible(boxed.params, mesh, rules)
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)


def init_state(model: nn.Module, tx, mesh: Mesh, rng: jax.Array, example_ids,
               encoder_params: Optional[Any] = None, merge: Optional[Callable] = None,
               rules=sharding.LOGICAL_RULES):
    """A fresh, sharded train state; each device materialises only its shards.

    ``encoder_params`` (e.g. from the previous stage or an imported checkpoint) go into the initial
    parameters through ``merge(fresh_params, encoder_params)`` (traced inside the sharded init, so they land
    straight in their shards; ``objectives.replace_encoder`` for the stages, a head merge for fine-tuning).
    The optimiser state always starts fresh. ``encoder_params`` are an argument of the jitted init, not
    constants it closes over: restored on several processes they are global arrays, which jit can only take
    as arguments; arrays this process holds whole are passed as host copies, so the devices they were
    restored to do not matter.
    """
    shardings = state_shardings(model, tx, mesh, example_ids, rules)

    def init(key, encoder_params):
        params = nn.meta.unbox(model.init(key, example_ids)["params"])
        if encoder_params is not None:
            params = merge(params, encoder_params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    if encoder_params is not None:  # host copies where this process holds them whole (any devices they sit on)
        encoder_params = jax.tree.map(lambda x: np.asarray(x) if getattr(x, "is_fully_addressable", True) else x,
                                      encoder_params)
    with sharding.sharding_context(mesh, rules):
        state = jax.jit(init, out_shardings=shardings)(rng, encoder_params)
    return state, shardings


def batch_shardings(mesh: Mesh, batch) -> dict:
    return {k: sharding.batch_sharding(mesh, np.ndim(v)) for k, v in batch.items()}


def put_batch(mesh: Mesh, local_batch) -> dict:
    """Host-local numpy batch -> global arrays sharded over the batch axes.

    With one process this is a ``device_put``; with several, each process passes its own rows
    (``global_batch / process_count``) and ``jax.make_array_from_process_local_data`` assembles them.
    """
    out = {}
    for key, value in local_batch.items():
        target = sharding.batch_sharding(mesh, np.ndim(value))
        if jax.process_count() == 1:
            out[key] = jax.device_put(value, target)
        else:
            out[key] = jax.make_array_from_process_local_data(target, np.asarray(value))
    return out


def compile_step(step_fn: Callable, mesh: Mesh, shardings, example_state, example_batch,
                 rules=sharding.LOGICAL_RULES, rng_impl: Optional[str] = None):
    """AOT-compile ``step_fn(state, batch, rng)`` with explicit shardings and the state donated.

    ``rng_impl``: the ``jax.random`` implementation of the step key (``TrainConfig.dropout_prng``; None:
    the default, threefry); the compiled step takes only keys of that implementation.

    ``example_batch`` and ``example_state`` may hold arrays or ``jax.ShapeDtypeStruct`` (the batch with *global*
    shapes); nothing is placed on the mesh, so its devices may be compile-only ones (``launch.compile_for``).
    Returns ``(compiled, memory_analysis)``.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    in_batch = batch_shardings(mesh, example_batch)
    jitted = jax.jit(step_fn, in_shardings=(shardings, in_batch, replicated),
                     out_shardings=(shardings, replicated), donate_argnums=(0,))
    batch_shapes = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype if not hasattr(v, "dtype") else v.dtype)
                    for k, v in example_batch.items()}
    state_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), example_state)
    rng_shape = jax.eval_shape(lambda: jax.random.key(0, impl=rng_impl))  # abstract: the mesh's devices may be compile-only
    with sharding.sharding_context(mesh, rules):
        compiled = jitted.lower(state_shapes, batch_shapes, rng_shape).compile()
    return compiled, compiled.memory_analysis()


def describe_memory(analysis) -> str:
    if analysis is None:
        return "memory analysis unavailable on this backend"
    gb = lambda b: b / 2 ** 30
    return (f"per device: arguments {gb(analysis.argument_size_in_bytes):.2f} GiB, outputs "
            f"{gb(analysis.output_size_in_bytes):.2f} GiB, temporaries {gb(analysis.temp_size_in_bytes):.2f} GiB, "
            f"aliased {gb(analysis.alias_size_in_bytes):.2f} GiB")
