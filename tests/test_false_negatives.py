"""In-batch false negatives: text keys in the batches, the masks in both InfoNCE losses, the de-duplicating
sampler, and the count on the bundled multi-task data.

The reference for the masked losses is an independent numpy InfoNCE that compares the raw strings (after
``normalize_text``) and *deletes* the columns of texts equal to the positive: masking must give exactly the
loss of the batch without those false negatives.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from scipy.special import logsumexp

from bilingual import losses, sharding
from bilingual.text_identity import distinct_keys, normalize_text, text_keys
from data_helpers import tok_dir  # noqa: F401  (fixture)
from tasks import batch_jobs, batching, demo

TAU = 0.05
# Embeddings of a text are a function of the text: equal texts (after normalisation) get equal vectors.
QUERIES = ["Wo liegt Berlin?", "Was ist ALiBi?", "wo liegt  berlin?", "Wie alt ist Köln?", "Warum?",
           "Was ist Gin?", "Köln", "Was kostet Brot?"]
PASSAGES = ["Berlin liegt an der Spree.", "ALiBi ist ein Positionsbias.", "Berlin liegt an der Spree.",
            "Köln ist 2000 Jahre alt.", "Darum.", "Gin ist ein Konfigurationssystem.", "Warum?",
            "BERLIN liegt an der Spree."]
NEGATIVES = [["Darum.", "Köln ist 2000 Jahre alt."], ["Hamburg liegt an der Elbe.", "Nichts."],
             ["Rom.", "Paris."], ["Wo liegt Berlin?", "Brot kostet Geld."], ["ALiBi ist ein Positionsbias.", "X."],
             ["Y.", "Z."], ["Köln", "Darum."], ["Wien.", "Prag."]]


def embeddings_of(texts, dim=16):
    """A fixed random vector per normalised text (same text, same vector), float32."""
    table = {}
    out = []
    for t in texts:
        key = normalize_text(t)
        if key not in table:
            table[key] = np.random.RandomState(len(table) + 7).randn(dim)
        out.append(table[key])
    return np.asarray(out, np.float32)


def _cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)) @ (b / np.linalg.norm(b, axis=-1, keepdims=True)).T


def reference_losses(queries, passages, negatives, q_emb, p_emb, n_emb):
    """(bi-directional InfoNCE, InfoNCE with negatives) with every false negative deleted, from the strings."""
    same = lambda a, b: normalize_text(a) == normalize_text(b)
    b = len(queries)
    flat_neg = [t for row in negatives for t in row]
    s_qp, s_qn = _cos(q_emb, p_emb) / TAU, _cos(q_emb, n_emb.reshape(-1, n_emb.shape[-1])) / TAU

    def excluded(i, j):  # passage j (j != i) is no negative of query i
        return j != i and (same(passages[j], passages[i]) or same(passages[j], queries[i]) or
                           same(queries[j], queries[i]))

    forward = backward = forward_neg = 0.0
    for i in range(b):
        keep = [j for j in range(b) if not excluded(i, j)]
        forward += -(s_qp[i, i] - logsumexp(s_qp[i, keep]))
        # query j is no negative of passage i when it equals query i or passage i, or its passage is passage
        # i's text: excluded(j, i), the same relation read from passage i's side
        keep_q = [j for j in range(b) if not excluded(j, i)]
        backward += -(s_qp[i, i] - logsumexp(s_qp[keep_q, i]))
        keep_n = [k for k, t in enumerate(flat_neg) if not (same(t, queries[i]) or same(t, passages[i]))]
        forward_neg += -(s_qp[i, i] - logsumexp(np.concatenate([s_qp[i, keep], s_qn[i, keep_n]])))
    return (forward + backward) / b, (forward_neg + backward) / b


def _batch():
    # one vector table for all texts, so that a query equal to a passage gets the passage's vector
    table = embeddings_of(QUERIES + PASSAGES + [t for row in NEGATIVES for t in row])
    q, p, n = table[:8], table[8:16], table[16:].reshape(8, 2, -1)
    keys = (text_keys(QUERIES), text_keys(PASSAGES), text_keys([t for r in NEGATIVES for t in r]).reshape(8, 2, 2))
    return q, p, n, keys


def test_keys_follow_normalised_text():
    keys = text_keys(["Berlin liegt an der Spree.", "BERLIN  liegt an der\tSpree.", "Berlin liegt an der Spree"])
    assert keys.shape == (3, 2) and keys.dtype == np.int32
    assert (keys[0] == keys[1]).all() and not (keys[0] == keys[2]).all()
    assert (text_keys([b"Haus"]) == text_keys(["haus"])).all()
    assert len({tuple(k) for k in distinct_keys(100)}) == 100


def test_masked_losses_equal_the_batch_without_its_false_negatives():
    q, p, n, (qk, pk, nk) = _batch()
    expected_pairs, expected_negatives = reference_losses(QUERIES, PASSAGES, NEGATIVES, q, p, n)
    pairs, pair_metrics = losses.bidirectional_info_nce(q, p, TAU, query_keys=qk, passage_keys=pk)
    retrieval, metrics = losses.info_nce_with_negatives(q, p, n, TAU, query_keys=qk, passage_keys=pk,
                                                        negative_keys=nk)
    # f32 log-softmax over <= 24 logits of magnitude <= 1/TAU = 20: a few ulp of 20 per term, far below 1e-5
    np.testing.assert_allclose(float(pairs), expected_pairs, rtol=1e-5)
    np.testing.assert_allclose(float(retrieval), expected_negatives, rtol=1e-5)
    # Planted: rows 0, 2, 7 share a passage (and 0, 2 a query), query 4 is passage 6, negatives repeat queries
    # and positives; the expected counts come from the strings.
    same = lambda a, b: normalize_text(a) == normalize_text(b)
    pair_count = sum(1 for i in range(8) for j in range(8) if j != i and (
        same(PASSAGES[j], PASSAGES[i]) or same(PASSAGES[j], QUERIES[i]) or same(QUERIES[j], QUERIES[i])))
    neg_count = sum(1 for i in range(8) for t in sum(NEGATIVES, []) if same(t, QUERIES[i]) or same(t, PASSAGES[i]))
    assert pair_count >= 7 and neg_count >= 4
    assert float(pair_metrics["masked_false_negatives"]) == pair_count
    assert float(metrics["masked_false_negatives"]) == pair_count + neg_count
    # without keys the same batch pushes texts away from themselves: a different (higher) loss
    unmasked, _ = losses.bidirectional_info_nce(q, p, TAU)
    assert float(unmasked) > float(pairs) + 0.1


def test_a_duplicated_passage_row_costs_nothing_extra():
    """Rows (q_a, p) and (q_b, p) in one batch: each row's loss is its loss in the batch without the other
    row's copy of p, which the mask removes."""
    q, p, n, (qk, pk, nk) = _batch()
    rows = [0, 1, 3, 4]
    base_q, base_p = q[rows], p[rows]
    dup_q = np.concatenate([base_q, q[5:6]])                 # a fifth row whose passage is row 0's
    dup_p = np.concatenate([base_p, p[0:1]])
    dup_qk = np.concatenate([qk[rows], qk[5:6]])
    dup_pk = np.concatenate([pk[rows], pk[0:1]])
    loss, metrics = losses.bidirectional_info_nce(dup_q, dup_p, TAU, query_keys=dup_qk, passage_keys=dup_pk)
    assert float(metrics["masked_false_negatives"]) == 2   # (0, 4) and (4, 0)
    sims = _cos(dup_q, dup_p) / TAU
    # reference: row 0 without column 4, row 4 without column 0, the same for the passage-to-query side
    drop = {0: [4], 4: [0]}
    forward = [-(sims[i, i] - logsumexp(np.delete(sims[i], drop.get(i, [])))) for i in range(5)]
    backward = [-(sims[i, i] - logsumexp(np.delete(sims[:, i], drop.get(i, [])))) for i in range(5)]
    np.testing.assert_allclose(float(loss), np.mean(forward) + np.mean(backward), rtol=1e-5)


@pytest.mark.parametrize("name", ["pairs", "negatives"])
def test_sharded_masked_loss_equals_single_device(name):
    """Keys sharded with their rows over 8 devices: the masks span the global batch as the similarities do."""
    rng = np.random.RandomState(3)
    texts = [f"text {i}" for i in rng.randint(0, 12, 16 * 4)]  # many repeats across the 8 shards
    qk, pk = text_keys(texts[:16]), text_keys(texts[16:32])
    nk = text_keys(texts[32:]).reshape(16, 2, 2)
    table = {t: rng.randn(8) for t in set(texts)}
    q, p = (np.asarray([table[t] for t in ts], np.float32) for ts in (texts[:16], texts[16:32]))
    n = np.asarray([table[t] for t in texts[32:]], np.float32).reshape(16, 2, 8)
    fn = {"pairs": lambda q, p, n, qk, pk, nk: losses.bidirectional_info_nce(q, p, TAU, qk, pk),
          "negatives": lambda q, p, n, qk, pk, nk: losses.info_nce_with_negatives(q, p, n, TAU, qk, pk, nk)}[name]
    grad_fn = jax.jit(jax.value_and_grad(lambda *a: fn(*a)[0], argnums=(0, 1, 2)))
    count = jax.jit(lambda *a: fn(*a)[1]["masked_false_negatives"])
    args = (q, p, n, qk, pk, nk)
    single, single_count = grad_fn(*args), count(*args)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=8))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    sharded_args = [put(x) for x in args]
    assert sharded_args[3].addressable_shards[0].data.shape == (2, 2)
    sharded = grad_fn(*sharded_args)
    assert float(single_count) > 8 and float(count(*sharded_args)) == float(single_count)
    # the same sums in another order: rtol of a few ulp of the <= 48-term log-sum-exp
    np.testing.assert_allclose(float(sharded[0]), float(single[0]), rtol=1e-6)
    for a, b in zip(sharded[1], single[1]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_masked_entries_get_no_gradient():
    q, p, n, (qk, pk, nk) = _batch()
    mask, _ = losses.false_negative_masks(jnp.asarray(qk), jnp.asarray(pk))

    def loss_of_sims(sims):
        # the loss of the similarity matrix itself: a masked entry must not move the loss
        labels = jnp.arange(8)
        masked = jnp.where(mask, -1e30, sims)
        return (-jnp.mean(jax.nn.log_softmax(masked, 1)[labels, labels])
                - jnp.mean(jax.nn.log_softmax(masked, 0)[labels, labels]))

    grad = np.asarray(jax.grad(loss_of_sims)(jnp.asarray(_cos(q, p) / TAU, jnp.float32)))
    assert np.all(grad[np.asarray(mask)] == 0) and np.all(grad[~np.asarray(mask)] != 0)


# ----------------------------------------------------------------------------------- producer and sampler

def test_dedup_deal_separates_shared_texts_and_keeps_batch_sizes():
    texts = [{1}, {2}, {1}, {3}, {1}, {4}, {5}, {2}]    # text 1 three times, text 2 twice, in a window of 4 x 2
    deal = batch_jobs.dedup_deal(texts, 2)
    assert sorted(i for b in deal for i in b) == list(range(8)) and all(len(b) == 2 for b in deal)
    for b in deal:
        shared = [t for t in set().union(*(texts[i] for i in b)) if sum(t in texts[i] for i in b) > 1]
        assert not shared, (deal, b)
    # impossible to separate (one text in every example): still a full deal, every batch of 2
    assert [len(b) for b in batch_jobs.dedup_deal([{9}] * 6, 2)] == [2, 2, 2]


def test_batches_carry_keys_of_their_texts_and_dedup_lowers_the_count(tok_dir):  # noqa: F811
    demo.register_demo_tasks(tok_dir)
    lengths = {"query": 32, "passage": 64, "negatives": 64}
    records = batching.records_of(__import__("seqio").get_mixture_or_task("retrieval_de"), "train")
    by_key = {}
    for row in (records[i] for i in range(len(records))):
        for t in [row["query"], row["passage"], *row["negatives"]]:
            by_key.setdefault(tuple(text_keys([t])[0]), set()).add(normalize_text(t))
    assert all(len(v) == 1 for v in by_key.values())  # no collision among the bundled texts
    counts = {}
    for window in (1, 4):
        it = batching.make_batch_iterator("retrieval_de", batch_size=16, sequence_lengths=lengths, num_epochs=1,
                                          prefetch=0, dedup_window=window)
        masked, seen = 0, []
        for batch in it:
            assert batch["query_key"].shape == (16, 2) and batch["negative_key"].shape[::2] == (16, 2)
            for key in ("query_key", "passage_key", "negative_key"):
                assert all(tuple(k) in by_key for k in batch[key].reshape(-1, 2))
            pair_mask, negative_mask = losses.false_negative_masks(batch["query_key"], batch["passage_key"],
                                                                   batch["negative_key"])
            masked += int(np.sum(pair_mask)) + int(np.sum(negative_mask))
            seen += [tuple(k) for k in batch["query_key"]]
        counts[window] = (masked, sorted(seen))
    # the deal moves examples between batches of a window but reads the same examples
    assert counts[1][1] == counts[4][1]
    assert counts[1][0] > 0 and counts[4][0] < counts[1][0]  # measured: 9 -> 0 at batch 16


def test_dedup_batches_resume_mid_window(tok_dir):  # noqa: F811
    demo.register_demo_tasks(tok_dir)
    lengths = {"query": 32, "passage": 64}
    make = lambda: batching.make_batch_iterator("pairs_de", batch_size=8, sequence_lengths=lengths, prefetch=0,
                                                dedup_window=3)
    with make() as it:
        full = [next(it) for _ in range(5)]
    with make() as it:
        [next(it) for _ in range(2)]
        state = it.get_state()
    with make() as it:
        it.set_state(state)
        rest = [next(it) for _ in range(3)]
    for a, b in zip(full[2:], rest):
        assert all(np.array_equal(a[k], b[k]) for k in a if isinstance(a[k], np.ndarray))
    # the same batches from 2 worker processes (each job deals its window itself; a worker caches it)
    with batching.make_batch_iterator("pairs_de", batch_size=8, sequence_lengths=lengths, dedup_window=3,
                                      num_workers=2) as it:
        from_workers = [next(it) for _ in range(5)]
    for a, b in zip(full, from_workers):
        assert all(np.array_equal(a[k], b[k]) for k in a if isinstance(a[k], np.ndarray))
    with batching.make_batch_iterator("pairs_de", batch_size=8, sequence_lengths=lengths, prefetch=0) as plain:
        with pytest.raises(ValueError, match="dedup_window"):
            plain.set_state(state)
    with pytest.raises(ValueError, match=r"data.options\['dedup_window'\]"):
        batching.make_batch_iterator("pairs_de", batch_size=8, dedup_window=0)


def test_inspect_data_counts_the_masked_pairs_of_the_bundled_multitask_mixture(tok_dir, capsys):  # noqa: F811
    from launch import inspect_data

    lines = inspect_data.main(["--tokenizer", tok_dir, "--name", "multitask_de", "--false_negatives",
                               "--batch_size", "32", "--length", "64"])
    assert "retrieval_de" in lines[0] and "sts" not in lines[0].split(":", 1)[1]
