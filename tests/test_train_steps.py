"""Train steps: GradCache equals the plain gradient; sharded steps equal the single-device step."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bilingual import JinaBert, JinaBertForMaskedLM, get_config, gradcache, losses, sharding, task_types
from bilingual.optim import OptimizerConfig, make_optimizer
from bilingual.training import objectives, sharded, steps
from train_helpers import synthetic_batch

CONFIG = get_config("tiny", vocab_size=512, hidden_dropout=0.0)


def tiny_params(model_cls=JinaBert, config=CONFIG):
    return nn.meta.unbox(model_cls(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])


@pytest.mark.parametrize("task_type", ["pairs", "retrieval", "sts"])
def test_gradcache_equals_plain_gradients(task_type):
    model = JinaBert(CONFIG)
    params = tiny_params()
    batch = jax.tree.map(jnp.asarray, synthetic_batch(task_type, batch=8))
    embed = steps.make_embed_fn(model, dropout=False)
    views = steps.contrastive_views(task_type, batch)
    loss_fn = task_types.get(task_type).embedding_loss(batch, steps.StepConfig())
    rng = jax.random.key(1)
    (plain_loss, _), plain = jax.jit(lambda p: gradcache.plain_value_and_grad(embed, loss_fn, p, views, rng))(params)
    (gc_loss, _), cached = jax.jit(lambda p: gradcache.value_and_grad(
        embed, loss_fn, p, views, rng, num_chunks=4, groups=2))(params)
    # Error model. Chunking changes only the shapes the matmul kernels see, so each n-term f32 dot product
    # may be summed in another order; its relative error is ~ sqrt(n) * u (u = 2^-24, the probabilistic
    # bound of Higham & Mary 2019), n the longest reduction (the intermediate size). Each layer adds one
    # such error before its LayerNorm, so an embedding differs by at most
    # delta = num_layers * sqrt(n) * u * max|E|, and to first order the loss by ||dL/dE||_1 * delta.
    # The gradient adds two backward passes of the same shapes: ||dg|| <= 3 * num_layers * sqrt(n) * u * ||g||.
    # (Loss differences of 1.9e-6 and gradient ratios of 1e-6 were seen on machines of this kind; a wrong
    # chunk split, rng or pull-back gives differences of order one.)
    embeddings = {name: embed(params, view, rng) for name, view in views.items()}
    loss_grad = jax.grad(lambda e: loss_fn(e)[0])(embeddings)
    per_layer = np.sqrt(CONFIG.intermediate_size) * 2.0 ** -24
    delta = CONFIG.num_layers * per_layer * max(float(jnp.max(jnp.abs(e))) for e in embeddings.values())
    loss_atol = sum(float(jnp.sum(jnp.abs(g))) for g in loss_grad.values()) * delta
    np.testing.assert_allclose(float(gc_loss), float(plain_loss), rtol=0, atol=loss_atol)
    difference = optax.global_norm(jax.tree.map(jnp.subtract, cached, plain))
    assert float(difference) <= 3 * CONFIG.num_layers * per_layer * float(optax.global_norm(plain))
    assert float(optax.global_norm(plain)) > 1e-3


def test_split_and_merge_chunks_are_inverse_and_spread_over_shards():
    x = jnp.arange(24)
    chunks = gradcache.split_chunks(x, 3, 4)
    assert chunks.shape == (3, 8)
    # Every chunk takes 2 rows from each of the 4 contiguous shards of 6 rows.
    np.testing.assert_array_equal(np.asarray(chunks[0]) // 6, [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(np.asarray(gradcache.merge_chunks(chunks, 4)), np.arange(24))
    with pytest.raises(ValueError, match="cannot be split"):
        gradcache.split_chunks(jnp.arange(10), 3, 2)


def test_mlm_step_with_position_budget_equals_full_logits():
    model = JinaBertForMaskedLM(CONFIG)
    params = tiny_params(JinaBertForMaskedLM)
    batch = jax.tree.map(jnp.asarray, synthetic_batch("mlm", batch=4, length=32))
    tx = optax.sgd(1.0)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    budgeted = jax.jit(steps.make_mlm_step(model, tx, steps.StepConfig(max_predictions=16)))
    full = jax.jit(steps.make_mlm_step(model, tx, steps.StepConfig(max_predictions=0)))
    s1, m1 = budgeted(state, batch, jax.random.key(0))
    s2, m2 = full(state, batch, jax.random.key(0))
    assert float(m1["mlm_dropped"]) == 0 and float(m1["mlm_tokens"]) == float(batch["loss_weights"].sum())
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-6)
    # Reference loss from full logits computed directly.
    logits, _ = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                            segment_ids=batch["segment_ids"])
    ref, _ = losses.mlm_loss(logits, batch["targets"], batch["loss_weights"])
    np.testing.assert_allclose(float(m1["loss"]), float(ref), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5), s1.params, s2.params)
    # A too-small budget is reported, not hidden.
    _, m3 = jax.jit(steps.make_mlm_step(model, tx, steps.StepConfig(max_predictions=2)))(state, batch, jax.random.key(0))
    assert float(m3["mlm_dropped"]) > 0


def _run_step(task_type, mesh, tx, step_config, batch, params):
    objective = objectives.for_stage("mlm" if task_type == "mlm" else "pairs", CONFIG, step_config)
    model = objective.model
    example_ids = jnp.zeros((1, 8), jnp.int32)
    encoder_params = params["bert"] if task_type == "mlm" else params
    state, shardings = sharded.init_state(model, tx, mesh, jax.random.key(0), example_ids, encoder_params,
                                          merge=objectives.replace_encoder)
    if task_type == "mlm":  # same MLM head as the reference run
        host = jax.tree.map(np.array, params)  # copies: the compiled step donates (deletes) its input state
        state = state.replace(params=jax.device_put(host, shardings.params),
                              opt_state=jax.device_put(jax.tree.map(np.array, tx.init(host)), shardings.opt_state))
    groups = sharding.batch_divisor(mesh)
    fn = (steps.make_mlm_step(model, tx, step_config) if task_type == "mlm"
          else steps.make_contrastive_step(model, tx, task_type, step_config, groups=groups))
    compiled, memory = sharded.compile_step(fn, mesh, shardings, state, batch)
    new_state, metrics = compiled(state, sharded.put_batch(mesh, batch), jax.random.key(3))
    return new_state, metrics, memory


DATA_FSDP, DATA_TENSOR = sharding.MeshConfig(data=2, fsdp=4), sharding.MeshConfig(data=2, tensor=4)


@pytest.mark.parametrize("task_type,chunks,mesh_config", [
    ("mlm", 1, DATA_FSDP), ("mlm", 1, DATA_TENSOR), ("pairs", 1, DATA_TENSOR), ("retrieval", 2, DATA_FSDP)])
def test_sharded_step_equals_single_device(task_type, chunks, mesh_config):
    # SGD with lr 1 makes the parameter change equal the gradient, so <= 1e-5 on parameters is <= 1e-5 on
    # gradients (AdamW's first step divides by |g| and would amplify round-off on near-zero gradients).
    tx = optax.sgd(1.0)
    step_config = steps.StepConfig(gradcache_chunks=chunks)
    params = tiny_params(JinaBertForMaskedLM if task_type == "mlm" else JinaBert)
    batch = synthetic_batch(task_type, batch=16, length=16)
    one = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    ref_state, ref_metrics, _ = _run_step(task_type, one, tx, step_config, batch, params)
    mesh = sharding.make_mesh(mesh_config)
    state, metrics, memory = _run_step(task_type, mesh, tx, step_config, batch, params)
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
                 state.params, ref_state.params)
    assert memory is not None and memory.argument_size_in_bytes > 0
    kernel = state.params["bert" if task_type == "mlm" else "encoder"]
    kernel = (kernel["encoder"] if task_type == "mlm" else kernel)["layer_0"]["mlp"]["wo"]["kernel"]
    assert len({s.data.shape for s in kernel.addressable_shards}) == 1
    assert kernel.addressable_shards[0].data.shape != kernel.shape  # really sharded


def test_adamw_state_is_sharded_like_parameters_and_training_reduces_loss():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    tx = make_optimizer(OptimizerConfig(learning_rate=3e-3, warmup_steps=2, total_steps=20))
    model = JinaBert(CONFIG)
    state, shardings = sharded.init_state(model, tx, mesh, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    mu = state.opt_state[1][0].mu["encoder"]["layer_0"]["mlp"]["gated_layers"]["kernel"]
    assert mu.sharding.spec == state.params["encoder"]["layer_0"]["mlp"]["gated_layers"]["kernel"].sharding.spec
    batch = synthetic_batch("pairs", batch=8)
    fn = steps.make_contrastive_step(model, tx, "pairs", steps.StepConfig(), groups=4)
    compiled, _ = sharded.compile_step(fn, mesh, shardings, state, batch)
    device_batch = sharded.put_batch(mesh, batch)
    losses_seen = []
    for i in range(8):
        state, metrics = compiled(state, device_batch, jax.random.key(i))
        losses_seen.append(float(metrics["loss"]))
    assert losses_seen[-1] < losses_seen[0] - 0.5, losses_seen
    assert int(state.step) == 8


def test_init_from_encoder_params_checks_shapes():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    tx = optax.sgd(0.1)
    other = tiny_params(config=CONFIG.replace(vocab_size=256))
    with pytest.raises(ValueError, match="word_embeddings/embedding: model \\(512, 128\\) vs given \\(256, 128\\)"):
        sharded.init_state(JinaBert(CONFIG), tx, mesh, jax.random.key(0), jnp.zeros((1, 8), jnp.int32), other,
                           merge=objectives.replace_encoder)
