"""Packed contrastive batches (issue 15): the packer, segment pooling equal to encoding each text alone, and
packed steps equal to padded steps (plain, GradCache, sharded), the batch producer's packed layout and its
errors. The references are independent of the code under test: each text encoded alone, the padded step."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bilingual import JinaBert, get_config, gradcache, packing, sharding, task_types
from bilingual.config import ConfigError
from bilingual.modeling import segment_mean_pool
from bilingual.training import objectives, sharded, steps
from train_helpers import synthetic_batch

CONFIG = get_config("tiny", vocab_size=512, hidden_dropout=0.0)
U = 2.0 ** -24  # f32 unit round-off


def tiny_params():
    return nn.meta.unbox(JinaBert(CONFIG).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])


def _float_tolerance(scale: float) -> float:
    # Error model: packing changes only which tokens share a matmul and how long the softmax rows are (the
    # extra keys are masked to exactly 0 weight), so each n-term f32 reduction is summed in another order:
    # relative error ~ sqrt(n) * u (Higham & Mary 2019), n the longest reduction (the MLP's intermediate
    # size), once per layer before its LayerNorm. A wrong segment, position or pooling gives errors of O(1).
    return CONFIG.num_layers * math.sqrt(CONFIG.intermediate_size) * U * scale


# ------------------------------------------------------------------------------------------------- packer

def test_first_fit_places_every_text_whole_and_reports_overflow():
    lengths = [5, 3, 8, 2, 7, 4, 6]
    p = packing.first_fit(lengths, row_length=10, rows=4)
    assert p.num_blocks == 1
    for r in range(4):  # no two texts of a row overlap, and each fits the row
        spans = sorted((p.start[t], p.start[t] + lengths[t]) for t in range(7) if p.row[t] == r)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and all(e <= 10 for _, e in spans)
    assert sum(lengths) <= 10 * p.rows_used[0] and p.rows_used[0] == 4
    capped = packing.first_fit(lengths, row_length=10, rows=4, max_texts=3)
    assert capped.num_blocks == 3 and capped.texts.max() <= 3
    with pytest.raises(packing.PackingError, match=r"7 texts of 35 tokens \(longest 8\) need 4 rows of 10 "
                                                   r"tokens; the block has 3"):
        packing.first_fit(lengths, row_length=10, rows=3, max_blocks=1)
    with pytest.raises(packing.PackingError, match="a text of 12 tokens does not fit a row of 10"):
        packing.first_fit([12], row_length=10, rows=1)


def test_first_fit_puts_texts_longer_than_the_row_in_long_rows_and_names_what_overflows():
    lengths = [12, 3, 9, 15, 2, 6]  # rows of 10; two texts above 10
    p = packing.first_fit(lengths, row_length=10, rows=2, long_rows=2, long_length=16, max_blocks=1)
    assert p.row[0] >= 2 and p.row[3] >= 2  # the long texts sit in the long rows (2, 3)
    for r in range(4):
        capacity = 10 if r < 2 else 16
        spans = sorted((p.start[t], p.start[t] + lengths[t]) for t in range(6) if p.row[t] == r)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and all(e <= capacity for _, e in spans)
    # short rows are filled first: 9, 6+3 and 2 need no long row room beyond what is left over
    assert packing.rows_needed(lengths, 10, long_rows=2, long_length=16) == 2
    assert packing.rows_needed([12, 3, 9, 15, 2, 6], 10, long_rows=3, long_length=16) == 1  # 9 in a long row
    with pytest.raises(packing.PackingError, match=r"the 2 longer than the row of 10 tokens need 2 long rows of 16; "
                                                   r"the block has 1"):
        packing.first_fit(lengths, row_length=10, rows=2, long_rows=1, long_length=16, max_blocks=1)
    with pytest.raises(packing.PackingError, match=r"6 texts of 47 tokens \(longest 15\) need 2 rows of 10 tokens "
                                                   r"beside 2 long rows of 16; the block has 1"):
        packing.first_fit(lengths, row_length=10, rows=1, long_rows=2, long_length=16, max_blocks=1)
    with pytest.raises(packing.PackingError, match="a text of 17 tokens does not fit a row of 16"):
        packing.first_fit([17], row_length=10, rows=1, long_rows=1, long_length=16)


@pytest.mark.parametrize("long_rows", [0, 2])
def test_pack_units_labels_text_i_of_a_unit_with_segment_i_plus_one(long_rows):
    rng = np.random.default_rng(0)
    sizes = (3, 9, 4, 2, 6, 5, 7, 2) if not long_rows else (3, 14, 4, 12, 6, 5, 7, 16)
    texts = [rng.integers(5, 100, n).astype(np.int32) for n in sizes]
    out = packing.pack_units(texts, units=2, rows=3, row_length=10, pad_id=1, long_rows=long_rows, long_length=16)
    assert out["ids"].shape == out["segments"].shape == (2, 3, 10)
    assert out["long_ids"].shape == out["long_segments"].shape == (2, long_rows, 16)
    assert list(out["lengths"]) == [len(t) for t in texts]
    for u in range(2):
        ids = np.concatenate([out["ids"][u].ravel(), out["long_ids"][u].ravel()])
        segments = np.concatenate([out["segments"][u].ravel(), out["long_segments"][u].ravel()])
        for i in range(4):
            np.testing.assert_array_equal(ids[segments == i + 1], texts[4 * u + i])
        assert (ids[segments == 0] == 1).all()
    if long_rows:  # each text longer than the row sits whole in a long row of its unit
        for i, t in enumerate(texts):
            if len(t) > 10:
                assert (out["long_segments"][i // 4] == i % 4 + 1).sum() == len(t)


def test_packing_config_sizes_the_blocks_and_names_the_key_at_fault():
    config = packing.PackingConfig({"query": 20, "passage": 40}, units=2, row_length={"query": 64},
                                   long_rows={"query": 1})
    assert config.block("query", 32, 128) == (10, 64, 1)  # ceil(32 * 20 / 64) rows of 64 + one of 128
    assert config.block("passage", 32, 128) == (10, 128, 0)  # rows of the full length, no long rows
    with pytest.raises(ValueError, match=r"\['long_rows'\]\['query'\] is not set: rows of 64 < 128"):
        packing.PackingConfig({"query": 20}, row_length={"query": 64}).block("query", 32, 128)
    with pytest.raises(ValueError, match=r"\['row_length'\]\['query'\]=256: expected 2 to .* 128"):
        packing.PackingConfig({"query": 20}, row_length={"query": 256}, long_rows={"query": 1}).block("query", 8, 128)
    with pytest.raises(ValueError, match=r"\['long_rows'\]\['query'\]=1: .*0 where rows are the full length"):
        packing.PackingConfig({"query": 20}, long_rows={"query": 1}).block("query", 8, 128)
    with pytest.raises(ValueError, match="unknown keys \\['rows'\\]"):
        packing.PackingConfig.from_options({"tokens_per_text": {}, "rows": 3})


def test_length_report_sizes_units_that_fit_the_simulated_units():
    rng = np.random.default_rng(3)
    lengths = np.concatenate([rng.integers(4, 40, 980), rng.integers(100, 300, 20)])  # 2% long texts
    report = packing.length_report(lengths, texts_per_unit=32, row_length=64, long_length=512, trials=400)
    assert report["long_rows"] >= 1 and report["row_length"] == 64
    rows = math.ceil(32 * report["tokens_per_text"] / 64)
    units = [rng.choice(lengths, 32) for _ in range(400)]  # fresh units: nearly all fit the reported sizes
    fit = 0
    for u in units:
        try:
            packing.first_fit(u, 64, rows, max_blocks=1, long_rows=report["long_rows"], long_length=512)
            fit += 1
        except packing.PackingError:
            pass
    assert fit >= 0.98 * len(units)
    # one row length for all: the full rows hold short and long texts alike, and cost more tokens per text
    full = packing.length_report(lengths, texts_per_unit=32, row_length=512)
    assert full["long_rows"] == 0
    assert rows * 64 + report["long_rows"] * 512 < math.ceil(32 * full["tokens_per_text"] / 512) * 512 * 1.5


# ------------------------------------------------------------------------------ pooling == each text alone

def _texts(rng, n, max_len, vocab=512):
    out = []
    for length in rng.integers(2, max_len + 1, n):
        ids = rng.integers(5, vocab, length).astype(np.int32)
        ids[0], ids[-1] = 0, 2
        out.append(ids)
    return out


def test_packed_encoding_equals_each_text_alone():
    model, params = JinaBert(CONFIG), tiny_params()
    rng = np.random.default_rng(1)
    texts = _texts(rng, 12, 20)
    packed_ = packing.pack_units(texts, units=1, rows=6, row_length=32, pad_id=1)
    ids, segments = packed_["ids"], packed_["segments"]
    apply = jax.jit(lambda i, m, s: model.apply({"params": params}, i, m, segment_ids=s))
    hidden = apply(ids[0], (segments[0] > 0).astype(np.int32), segments[0]).last_hidden_state
    packed = np.asarray(segment_mean_pool(hidden, segments[0], len(texts)))
    # reference: every text alone in its own row (no segment ids), masked mean pooling of the model
    alone_ids = np.ones((len(texts), 20), np.int32)
    alone_mask = np.zeros((len(texts), 20), np.int32)
    for i, t in enumerate(texts):
        alone_ids[i, :len(t)], alone_mask[i, :len(t)] = t, 1
    alone = np.asarray(apply(alone_ids, alone_mask, None).embedding)
    assert np.abs(packed - alone).max() <= max(_float_tolerance(np.abs(alone).max()), 1e-6)
    assert np.abs(packed - alone).max() <= 1e-5  # the bound, f32


# ---------------------------------------------------------------------------- packed step == padded step

def pack_batch(task_type, padded, units, rows, row_length=None, long_rows=0):
    """The padded batch's texts (stripped of padding) in the packed layout: the test's own conversion,
    the reference being the padded batch itself. ``row_length`` (default the padded length): rows of that
    many tokens, with ``long_rows`` of the padded length per unit for the longer texts."""
    packed_spec, spec = task_types.get(task_type, packed=True), task_types.get(task_type)
    out = {k: padded[k] for k in (*spec.scalars, *spec.text_keys.values())}
    for name, (ids_key, mask_key) in spec.views.items():
        ids, mask = np.asarray(padded[ids_key]), np.asarray(padded[mask_key])
        flat_ids, flat_mask = ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, ids.shape[-1])
        texts = [row[m > 0] for row, m in zip(flat_ids, flat_mask)]
        blocks = packing.pack_units(texts, units, rows, row_length or ids.shape[-1], pad_id=1, long_rows=long_rows,
                                    long_length=ids.shape[-1])
        out.update({key: blocks[field] for field, key in zip(task_types.PACKED_VIEW_FIELDS, packed_spec.views[name])})
        out[packed_spec.views[name][2]] = blocks["lengths"].reshape(ids.shape[:-1])
    assert set(out) == set(packed_spec.keys)
    return out


def _grads(task_type, batch, chunks=1, groups=1):
    model, params = JinaBert(CONFIG), tiny_params()
    embed = steps.make_embed_fn(model, dropout=False)
    views = steps.contrastive_views(task_type, batch)
    loss_fn = task_types.get(task_type).embedding_loss(batch, steps.StepConfig())
    rng = jax.random.key(1)
    if chunks > 1:
        fn = lambda p: gradcache.value_and_grad(embed, loss_fn, p, views, rng, num_chunks=chunks, groups=groups)
    else:
        fn = lambda p: gradcache.plain_value_and_grad(embed, loss_fn, p, views, rng)
    (loss, _), grads = jax.jit(fn)(params)
    return float(loss), grads


@pytest.mark.parametrize("task_type,long_rows", [("pairs", 0), ("retrieval", 0), ("sts", 0), ("retrieval", 4)])
def test_packed_step_equals_padded_step_and_gradcache_equals_plain(task_type, long_rows):
    padded = jax.tree.map(jnp.asarray, synthetic_batch(task_type, batch=8, length=16))
    # long_rows: rows of 10 tokens and, per unit, long rows of 16 for the texts above 10 (up to 4 per unit)
    packed = jax.tree.map(jnp.asarray, pack_batch(task_type, padded, units=4, rows=3, row_length=10 if long_rows else None,
                                                  long_rows=long_rows))
    if long_rows:
        assert (packed["negative_long_segments"] > 0).any() and (packed["negative_segments"] > 0).any()
    ref_loss, ref_grads = _grads(task_type, padded)
    norm = float(optax.global_norm(ref_grads))
    assert norm > 1e-3
    # the plain packed path once (retrieval, all three views); GradCache on packed for every type
    runs = [_grads(task_type, packed)] if task_type == "retrieval" else []
    runs.append(_grads(task_type, packed, chunks=2, groups=2))
    # Error model (see _float_tolerance): the loss is O(1) with O(1) gradients w.r.t. the embeddings, and
    # the gradient passes twice more through the same reductions (3x), relative to its norm.
    for loss, grads in runs:
        assert abs(loss - ref_loss) <= max(_float_tolerance(10 * abs(ref_loss)), 1e-6)
        assert abs(loss - ref_loss) <= 1e-5
        difference = float(optax.global_norm(jax.tree.map(jnp.subtract, grads, ref_grads)))
        assert difference <= 3 * _float_tolerance(norm)
        leaf = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
        assert leaf <= 1e-5


def _run_step(mesh, task_type, batch, chunks):
    tx = optax.sgd(1.0)  # the parameter change is the gradient
    objective = objectives.for_stage("multitask", CONFIG, steps.StepConfig(gradcache_chunks=chunks))
    state, shardings = sharded.init_state(objective.model, tx, mesh, jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                                          tiny_params(), merge=objectives.replace_encoder)
    fn = objective.make_step(task_type, tx, sharding.batch_divisor(mesh))
    compiled, _ = sharded.compile_step(fn, mesh, shardings, state, batch)
    return compiled(state, sharded.put_batch(mesh, batch), jax.random.key(3))


def test_sharded_packed_step_equals_single_device_and_padded():
    task_type = "retrieval"
    padded = synthetic_batch(task_type, batch=16, length=16)
    packed = pack_batch(task_type, padded, units=8, rows=4, row_length=10, long_rows=4)  # both blocks
    one = sharding.make_mesh(sharding.MeshConfig(data=1), devices=jax.devices()[:1])
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    ref_state, ref_metrics = _run_step(one, task_type, padded, chunks=1)
    for m, chunks in ((mesh, 2),):  # packed on one device == padded is the test above
        state, metrics = _run_step(m, task_type, packed, chunks)
        # same error model as above; 1e-5 is the bound on loss and (SGD lr 1) gradients
        np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), rtol=0, atol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5),
                     state.params, ref_state.params)


def test_packed_units_must_split_over_shards_and_chunks():
    shapes = task_types.get("pairs", packed=True).batch_shapes(
        16, {"query": 16, "passage": 16}, packing=packing.PackingConfig({"query": 8, "passage": 8}, units=4))
    assert shapes["query_ids"].shape == (4, 2, 16) and shapes["query_lengths"].shape == (16,)
    assert shapes["query_long_ids"].shape == (4, 0, 16)  # rows of the full length: no long rows
    assert steps.packed_batch_error("pairs", shapes, groups=4, chunks=1) is None
    message = steps.packed_batch_error("pairs", shapes, groups=4, chunks=2)
    assert "data.options['packing']['units']=4" in message and "multiple of 8" in message
    with pytest.raises(ValueError, match=r"tokens_per_text'\]\['passage'\] is not set"):
        task_types.get("pairs", packed=True).batch_shapes(16, {"query": 16, "passage": 16},
                                                          packing=packing.PackingConfig({"query": 8}, units=4))
    with pytest.raises(ValueError, match="16 query texts per batch do not split into .*units'\\]=3"):
        task_types.get("pairs", packed=True).batch_shapes(16, {"query": 16, "passage": 16},
                                                          packing=packing.PackingConfig({"query": 8, "passage": 8}, 3))
    assert isinstance(ConfigError("x"), ValueError)


# ------------------------------------------------------------------------------------ the batch producer

from data_helpers import tok_dir  # noqa: E402,F401 (fixture)

LENGTHS = {"query": 24, "passage": 48, "negatives": 48, "a": 24, "b": 24}
BUDGET = {"tokens_per_text": {"query": 24, "passage": 48, "negatives": 48, "a": 24, "b": 24}, "units": 2}


# queries and passages in rows of 12 / 16 tokens below the 24 / 48 of truncation, two long rows per unit of two
# texts (any two fit); negatives in rows of the full length (no long rows)
SHORT_ROWS = {**BUDGET, "row_length": {"query": 12, "passage": 16}, "long_rows": {"query": 2, "passage": 2}}


@pytest.mark.parametrize("task,budget", [("pairs_de_en", BUDGET), ("retrieval_de", BUDGET), ("sts_de", BUDGET),
                                         ("pairs_de_en", SHORT_ROWS)])
def test_producer_packs_the_texts_of_the_padded_batch(tok_dir, task, budget):
    from tasks import batching

    with batching.make_batch_iterator(task, batch_size=4, sequence_lengths=LENGTHS, prefetch=0) as it:
        padded = next(it)
    with batching.make_batch_iterator(task, batch_size=4, sequence_lengths=LENGTHS, prefetch=0,
                                      packing=budget) as it:
        packed = next(it)
    if budget is SHORT_ROWS:  # both blocks carry texts, rows are the configured length
        assert packed["passage_ids"].shape[-1] == 16 and packed["passage_long_ids"].shape[1:] == (2, 48)
        assert (packed["passage_long_segments"] > 0).any() and (packed["passage_segments"] > 0).any()
    task_type = padded["task_type"]
    spec, packed_spec = task_types.get(task_type), task_types.get(task_type, packed=True)
    assert set(packed) - {"task", "task_type"} == set(packed_spec.keys)
    for name, (ids_key, mask_key) in spec.views.items():
        p_ids, p_segments, p_lengths, long_ids, long_segments = (packed[k] for k in packed_spec.views[name])
        p_ids = np.concatenate([p_ids.reshape(2, -1), long_ids.reshape(2, -1)], axis=1)
        p_segments = np.concatenate([p_segments.reshape(2, -1), long_segments.reshape(2, -1)], axis=1)
        ids = padded[ids_key].reshape(-1, padded[ids_key].shape[-1])
        mask = padded[mask_key].reshape(ids.shape)
        per = len(ids) // 2
        assert packed[packed_spec.views[name][3]].shape[-1] == ids.shape[-1]
        for i in range(len(ids)):  # text i of the batch is segment i % per + 1 of unit i // per
            np.testing.assert_array_equal(p_ids[i // per][p_segments[i // per] == i % per + 1], ids[i][mask[i] > 0])
        np.testing.assert_array_equal(p_lengths.reshape(-1), mask.sum(1))
    for key in spec.scalars:
        np.testing.assert_array_equal(packed[key], padded[key])


def test_producer_errors_name_the_gin_key_and_numbers(tok_dir):
    from tasks import batching

    with pytest.raises(ValueError, match=r"tokens_per_text'\]\['passage'\] is not set"):
        batching.make_batch_iterator("pairs_de_en", batch_size=4, sequence_lengths=LENGTHS,
                                     packing={"tokens_per_text": {"query": 24}, "units": 2})
    with pytest.raises(ValueError, match=r"units'\]=3 pack units"):
        batching.make_batch_iterator("pairs_de_en", batch_size=4, sequence_lengths=LENGTHS,
                                     packing={**BUDGET, "units": 3})
    # a budget below the texts' lengths: the first batch fails with the sizes and the key to raise
    small = {"tokens_per_text": {"query": 2, "passage": 2}, "units": 1}
    with batching.make_batch_iterator("pairs_de_en", batch_size=8, sequence_lengths=LENGTHS, prefetch=0,
                                      packing=small) as it:
        with pytest.raises(packing.PackingError, match=r"query texts, pack unit 0 of 1: 8 texts of \d+ tokens "
                                                       r".* need \d+ rows of 24 tokens; the block has 1.*"
                                                       r"tokens_per_text'\]\['query'\]: raise it"):
            next(it)
    # rows of 4 tokens and one long row: the texts above 4 overflow it, and the message names both keys
    short = {"tokens_per_text": {"query": 24, "passage": 24}, "units": 1, "row_length": {"query": 4},
             "long_rows": {"query": 1}}
    with batching.make_batch_iterator("pairs_de_en", batch_size=8, sequence_lengths=LENGTHS, prefetch=0,
                                      packing=short) as it:
        with pytest.raises(packing.PackingError, match=r"query texts, pack unit 0 of 1: .* longer than the row of 4 "
                                                       r"tokens need \d+ long rows of 24; the block has 1.*"
                                                       r"long_rows'\]\['query'\]: raise it"):
            next(it)


def test_packing_report_sizes_blocks_that_the_real_units_fit(tok_dir, capsys):
    import ast

    from launch import inspect_data
    from tasks import batching

    lines = inspect_data.main([f"--tokenizer={tok_dir}", "--name=pairs_de_en", "--packing_report", "--length=48",
                               "--batch_size=16", "--batches=8", "--texts_per_unit=8", "--row_lengths=16,32,48"])
    assert lines == capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("query: 128 texts, framed length mean") and any(l.startswith("passage") for l in lines)
    assert sum("rows of" in l for l in lines) == 6  # three candidates per side
    config = packing.PackingConfig.from_options(ast.literal_eval(lines[-1].split(" = ", 1)[1]))
    # the same batches, padded: their units of 8 consecutive texts fit the suggested blocks, but for the
    # quantile's tail (the report sizes for 99.9% of simulated units, drawn from these very lengths)
    with batching.make_batch_iterator("pairs_de_en", batch_size=16, sequence_lengths={"query": 48, "passage": 48},
                                      prefetch=0) as it:
        batches = [next(it) for _ in range(8)]
    for side in ("query", "passage"):
        rows, row_length, long_rows = config.block(side, 8, 48)
        assert row_length in (16, 32, 48) and (long_rows == 0) == (row_length == 48)
        units = [u for b in batches for u in b[f"{side}_mask"].sum(1).reshape(2, 8)]
        fit = 0
        for unit in units:
            try:
                packing.first_fit(unit, row_length, rows, max_blocks=1, long_rows=long_rows, long_length=48)
                fit += 1
            except packing.PackingError:
                pass
        assert fit >= len(units) - 1, (side, fit, len(units))
