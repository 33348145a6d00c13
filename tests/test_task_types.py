"""The task-type table: real batches match their entries, FLOPs equal a hand count, losses equal numpy."""

import jax
import numpy as np
import pytest

from bilingual import task_types
from bilingual.config import EncoderConfig
from bilingual.text_identity import distinct_keys
from bilingual.training.steps import StepConfig
from tasks import batching
from data_helpers import tok_dir  # noqa: F401 (fixture)
from numpy_reference import info_nce, info_nce_with_negatives, sts_loss

LENGTHS = {"text": 32, "query": 12, "passage": 20, "negatives": 16, "a": 10, "b": 10}
DEMO_TASK = {"mlm": "mlm_de", "pairs": "pairs_de_en", "retrieval": "retrieval_de", "sts": "sts_de"}
NEGATIVES = 3  # tasks.demo.NUM_NEGATIVES


def test_table_covers_the_task_types():
    assert tuple(task_types.TASK_TYPES) == ("mlm", "pairs", "retrieval", "sts") == tuple(DEMO_TASK)
    with pytest.raises(ValueError, match="unknown task type 'nli'; expected one of"):
        task_types.get("nli")


@pytest.mark.parametrize("task_type", list(DEMO_TASK))
def test_produced_batch_has_exactly_the_entrys_keys_shapes_and_dtypes(tok_dir, task_type):
    spec = task_types.get(task_type)
    with batching.make_batch_iterator(DEMO_TASK[task_type], batch_size=3, sequence_lengths=LENGTHS) as it:
        batch = next(it)
    assert batch["task_type"] == task_type
    arrays = {k: v for k, v in batch.items() if k not in ("task", "task_type")}
    assert list(arrays) == list(spec.keys)
    assert {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in arrays.items()} == \
        spec.batch_shapes(3, LENGTHS, NEGATIVES if task_type == "retrieval" else None)
    for ids_key, mask_key in spec.views.values():  # every view is framed <s> ... </s> and padded with <pad>
        ids, mask = arrays[ids_key].reshape(-1, arrays[ids_key].shape[-1]), arrays[mask_key]
        assert (ids[:, 0] == 0).all() and (ids[mask.reshape(ids.shape) == 0] == 1).all()


def test_check_batch_rejects_what_the_table_does_not_hold():
    spec = task_types.get("retrieval")
    lengths = {"query": 4, "passage": 5, "negatives": 6}
    good = {k: np.zeros(s.shape, s.dtype) for k, s in spec.batch_shapes(2, lengths, 3).items()}
    spec.check_batch(good, 2, lengths)
    with pytest.raises(ValueError, match="keys"):
        spec.check_batch({**good, "score": np.zeros(2, np.float32)}, 2, lengths)
    with pytest.raises(ValueError, match="'query_mask' is int64"):
        spec.check_batch({**good, "query_mask": good["query_mask"].astype(np.int64)}, 2, lengths)
    with pytest.raises(ValueError, match="'negative_mask'"):  # num_negatives read off negative_ids: 3, not 2
        spec.check_batch({**good, "negative_mask": good["negative_mask"][:, :2]}, 2, lengths)
    with pytest.raises(ValueError, match="'passage_ids'"):
        spec.check_batch(good, 2, {**lengths, "passage": 7})
    with pytest.raises(ValueError, match="need num_negatives"):
        spec.batch_shapes(2, lengths)
    with pytest.raises(ValueError, match="one length"):
        task_types.get("sts").batch_shapes(2, {"a": 4, "b": 5})


def test_sts_batches_need_one_length(tok_dir):
    with batching.make_batch_iterator("sts_de", batch_size=2, sequence_lengths={"a": 10, "b": 12}) as it:
        with pytest.raises(ValueError, match=r"set sequence_lengths\['a'\] == sequence_lengths\['b'\]"):
            next(it)


# ------------------------------------------------------------------------------------------------ FLOPs

H, HEADS, LAYERS, INTER, VOCAB = 8, 2, 2, 12, 40
MODEL = EncoderConfig(vocab_size=VOCAB, hidden_size=H, num_layers=LAYERS, num_heads=HEADS, intermediate_size=INTER)


def matmul(m, n, k):
    """FLOPs of ``[m, k] @ [k, n]``."""
    return 2 * m * n * k


def encoder_by_hand(rows, length):
    tokens = rows * length
    per_layer = (4 * matmul(tokens, H, H)                          # q, k, v, attention output
                 + matmul(tokens, 2 * INTER, H)                   # [gate | linear] = gated_layers(h)
                 + matmul(tokens, H, INTER)                       # wo
                 + 2 * rows * HEADS * matmul(length, length, H // HEADS))  # q k^T and p v per head
    return LAYERS * per_layer


def test_flops_equal_a_hand_count():
    def flops(task_type, step, rows, lengths, negatives=None):
        spec = task_types.get(task_type)
        return spec.train_flops(MODEL, step, spec.batch_shapes(rows, lengths, negatives))

    head = lambda positions: matmul(positions, H, H) + matmul(positions, VOCAB, H)  # noqa: E731 (transform, decoder)
    assert flops("mlm", StepConfig(), 4, {"text": 16}) == 3 * (encoder_by_hand(4, 16) + head(4 * 16))
    assert flops("mlm", StepConfig(max_predictions=5), 4, {"text": 16}) == 3 * (encoder_by_hand(4, 16) + head(4 * 5))
    pairs = encoder_by_hand(6, 12) + encoder_by_hand(6, 20)
    assert flops("pairs", StepConfig(), 6, {"query": 12, "passage": 20}) == 3 * pairs
    assert flops("pairs", StepConfig(gradcache_chunks=2), 6, {"query": 12, "passage": 20}) == 4 * pairs
    retrieval = pairs + encoder_by_hand(6 * 3, 16)  # the B * m negatives of Ln tokens
    assert flops("retrieval", StepConfig(), 6, {"query": 12, "passage": 20, "negatives": 16}, 3) == 3 * retrieval
    assert flops("sts", StepConfig(), 6, {"a": 10, "b": 10}) == 3 * 2 * encoder_by_hand(6, 10)
    # one hand-evaluated number: 2 layers x (4*2*64*8*8 + 2*64*24*8 + 2*64*8*12 + 2*4*2*2*16*16*4)
    assert encoder_by_hand(4, 16) == 2 * (32768 + 24576 + 12288 + 32768)


# ------------------------------------------------------------------------------------------------ losses


def embeddings(*shapes, seed):
    rng = np.random.RandomState(seed)
    return [rng.randn(*s).astype(np.float32) for s in shapes]


@pytest.mark.parametrize("tau", [0.05, 0.1])
def test_pairs_and_retrieval_losses_equal_numpy(tau):
    config = StepConfig(temperature=tau)
    q, p, n = embeddings((6, 16), (6, 16), (6 * 3, 16), seed=1)
    pairs = task_types.get("pairs")

    def with_distinct_keys(spec, shapes):  # every text different: nothing masked, the plain InfoNCE
        return {**shapes, **{k: distinct_keys(*shapes[k].shape[:-1], name=k) for k in spec.text_keys.values()}}

    batch = with_distinct_keys(pairs, pairs.batch_shapes(6, {"query": 5, "passage": 7}))
    loss, metrics = pairs.embedding_loss(batch, config)({"query": q, "passage": p})
    np.testing.assert_allclose(float(loss), info_nce(q, p, tau) + info_nce(p, q, tau), rtol=1e-5)
    assert 0 <= float(metrics["in_batch_accuracy"]) <= 1 and float(metrics["masked_false_negatives"]) == 0
    # the batch's keys reach the loss: two rows with one passage text mask each other's copy
    batch["passage_key"] = batch["passage_key"].copy()
    batch["passage_key"][4] = batch["passage_key"][1]
    _, metrics = pairs.embedding_loss(batch, config)({"query": q, "passage": p})
    assert float(metrics["masked_false_negatives"]) == 2
    _, metrics = pairs.embedding_loss(batch, StepConfig(temperature=tau, mask_false_negatives=False))(
        {"query": q, "passage": p})
    assert "masked_false_negatives" not in metrics
    retrieval = task_types.get("retrieval")
    shapes = with_distinct_keys(retrieval, retrieval.batch_shapes(6, {"query": 5, "passage": 7, "negatives": 9}, 3))
    loss, _ = retrieval.embedding_loss(shapes, config)({"query": q, "passage": p, "negative": n})  # views: [B*m, H]
    np.testing.assert_allclose(float(loss), info_nce_with_negatives(q, p, n.reshape(6, 3, 16), tau), rtol=1e-5)


@pytest.mark.parametrize("kind", ["pearson", "mse"])
def test_sts_loss_equals_numpy(kind):
    a, noise = embeddings((10, 8), (10, 8), seed=2)
    b = a + noise  # cosines spread over (0, 1); gold scores correlated with them
    gold = (np.argsort(np.argsort(np.sum(a * b, 1))) / 2).astype(np.float32)
    loss, metrics = task_types.get("sts").embedding_loss({"score": gold}, StepConfig(sts_loss=kind))({"a": a, "b": b})
    np.testing.assert_allclose(float(loss), sts_loss(a, b, gold, kind), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["sts_pearson"]), -sts_loss(a, b, gold, "pearson"), rtol=1e-5)


def test_mlm_has_no_embedding_loss():
    spec = task_types.get("mlm")
    assert spec.views == {} and spec.loss.__name__ == "mlm_loss"
    with pytest.raises(ValueError, match="mlm_loss"):
        spec.embedding_loss({}, StepConfig())
