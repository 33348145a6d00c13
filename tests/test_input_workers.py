"""The input workers: Python tokenisation equals the seqio preprocessing, the batches do not depend on the
number of worker processes or on prefetching, and a resume at a far position is exact (``tasks.batching``)."""

from __future__ import annotations

import csv
import multiprocessing
import time

import numpy as np
import pytest
import seqio

from tasks import batching, registry
from tasks.batch_jobs import ExampleOrder
from data_helpers import tok, tok_dir, write  # noqa: F401 (fixtures)

PAD = 1


def assert_batches_equal(a, b, what=""):
    assert a.keys() == b.keys(), f"{what}: keys {sorted(a)} != {sorted(b)}"
    for key in a:
        if isinstance(a[key], str):
            assert a[key] == b[key], f"{what}: {key} {a[key]!r} != {b[key]!r}"
        else:
            assert a[key].dtype == b[key].dtype, f"{what}: {key} dtype {a[key].dtype} != {b[key].dtype}"
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what}: {key}")


def take(it, n):
    try:
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def padded(rows, length):
    """Right-pads id lists with <pad> (the batch contract): ids and mask [len(rows), length]."""
    ids = np.full((len(rows), length), PAD, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return ids, mask


# ------------------------------------------------------------------------------ Python tokens == seqio's


@pytest.mark.parametrize("name,sides,lengths", [
    ("pairs_de_en", {"query": ("query_ids", "query_mask"), "passage": ("passage_ids", "passage_mask")},
     {"query": 12, "passage": 20}),  # short lengths: many rows are cut, </s> kept
    ("sts_de", {"a": ("a_ids", "a_mask"), "b": ("b_ids", "b_mask")}, {"a": 14, "b": 14}),
])
def test_batcher_tokens_equal_seqio_preprocessing(tok_dir, name, sides, lengths):
    batch_size, batches = 8, 3
    got = take(batching.make_batch_iterator(name, batch_size=batch_size, sequence_lengths=lengths, shuffle=False,
                                            prefetch=0), batches)
    task = seqio.get_mixture_or_task(name)
    examples = list(task.get_dataset(lengths, shuffle=False).take(batch_size * batches).as_numpy_iterator())
    assert len(examples) == batch_size * batches
    truncated = 0
    for j, batch in enumerate(got):
        chunk = examples[j * batch_size:(j + 1) * batch_size]
        for side, (ids_key, mask_key) in sides.items():
            rows = [ex[side].tolist() for ex in chunk]
            assert all(r[0] == 0 and r[-1] == 2 and len(r) <= lengths[side] for r in rows), "seqio rows unframed"
            truncated += sum(len(r) == lengths[side] for r in rows)
            ids, mask = padded(rows, lengths[side])
            np.testing.assert_array_equal(batch[ids_key], ids, err_msg=f"batch {j} {ids_key}: batcher != seqio")
            np.testing.assert_array_equal(batch[mask_key], mask, err_msg=f"batch {j} {mask_key}")
        if "score" in chunk[0]:
            np.testing.assert_array_equal(batch["score"], np.array([ex["score"] for ex in chunk], np.float32))
            assert batch["score"].dtype == np.float32
    assert truncated > 0, "the lengths should cut some texts (to compare truncation too)"


# ------------------------------------------------------------------------------ workers and prefetch


def _workers_started(count: int, timeout: float = 60.0) -> bool:
    """Whether ``count`` worker processes are alive within ``timeout`` s: grain starts them one after the
    other, and on a loaded machine the first batch can come from the first worker before the second is up."""
    deadline = time.monotonic() + timeout
    while len(multiprocessing.active_children()) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_mlm_batches_equal_with_and_without_workers(tok_dir):
    kwargs = dict(batch_size=4, seed=2, sequence_lengths={"text": 64})
    inline = batching.make_batch_iterator("mlm_de_en", num_workers=0, **kwargs)
    reference = take(inline, 6)
    states = inline.get_state()
    assert {b["task"] for b in reference} == {"mlm_de", "mlm_en"}, "the mixture should draw both tasks"
    workers = batching.make_batch_iterator("mlm_de_en", num_workers=2, **kwargs)
    try:
        first = next(workers)
        assert _workers_started(2), "num_workers=2 started no worker processes"
        for k, batch in enumerate([first] + [next(workers) for _ in range(5)]):
            assert_batches_equal(batch, reference[k], f"mlm batch {k}, 2 workers vs none")
        assert workers.get_state() == states, "the state after 6 batches differs with workers"
    finally:
        workers.close()
    assert not multiprocessing.active_children(), "close() left worker processes running"
    no_prefetch = take(batching.make_batch_iterator("mlm_de_en", num_workers=0, prefetch=0, **kwargs), 6)
    for k, batch in enumerate(no_prefetch):
        assert_batches_equal(batch, reference[k], f"mlm batch {k}, prefetch 0 vs 2")


def test_contrastive_batches_equal_with_and_without_workers(tok_dir):
    kwargs = dict(batch_size=6, seed=9, sequence_lengths={"query": 16, "passage": 24})
    reference = take(batching.make_batch_iterator("pairs_de_en", num_workers=0, **kwargs), 5)
    with batching.make_batch_iterator("pairs_de_en", num_workers=2, worker_buffer=1, **kwargs) as it:
        for k in range(5):
            assert_batches_equal(next(it), reference[k], f"pairs batch {k}, 2 workers vs none")
            assert _workers_started(2), "num_workers=2 started no worker processes"
        # a resume may change the worker count: restore the state after batch 2 into the worker iterator
        inline = batching.make_batch_iterator("pairs_de_en", num_workers=0, **kwargs)
        take(inline, 2)
        it.set_state(inline.get_state())
        for k in range(2, 5):
            assert_batches_equal(next(it), reference[k], f"pairs batch {k} after a restore into 2 workers")
    no_prefetch = take(batching.make_batch_iterator("pairs_de_en", num_workers=0, prefetch=0, **kwargs), 5)
    for k, batch in enumerate(no_prefetch):
        assert_batches_equal(batch, reference[k], f"pairs batch {k}, prefetch 0 vs 2")


# ------------------------------------------------------------------------------ resume


@pytest.fixture()
def small_pairs(tok_dir, tmp_path):
    """A pairs task of 7 rows (text files read independently of the batcher); returns (name, rows, path)."""
    rows = [(f"Frage {i} über {'Köln ' * (i % 3)}".strip(), f"Antwort {i} 😀") for i in range(7)]
    path = write(tmp_path / "seven.tsv", "de\ten\n" + "".join(f"{q}\t{p}\n" for q, p in rows))
    with open(path, encoding="utf-8", newline="") as f:
        read_back = [tuple(r) for r in list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]]
    assert read_back == rows
    registry.register_pairs_task("seven_pairs", path, tok_dir)
    return "seven_pairs", rows, path


def test_resume_far_into_the_run_is_exact(tok, small_pairs):
    name, rows, _ = small_pairs
    n, batch_size, seed, length = len(rows), 3, 13, 16
    kwargs = dict(batch_size=batch_size, seed=seed, sequence_lengths={"query": length, "passage": length})
    position = 5 * n + 7  # 42: epoch 6 begins at position 42
    steps = position // batch_size
    assert steps * batch_size == position
    template = batching.make_batch_iterator(name, **kwargs).get_state()
    state = {**template, "step": steps, "tasks": {name: {"position": position, "offset": 0}},
             "records": {name: n}}
    resumed = batching.make_batch_iterator(name, **kwargs)
    resumed.set_state(state)
    after = take(resumed, 4)
    # the reference: which record each position reads (ExampleOrder), the file's row, the tokenizer
    order = ExampleOrder(n, seed, name)
    for k, batch in enumerate(after):
        first = position + k * batch_size
        records = [order.record(p) for p in range(first, first + batch_size)]
        for side, col in (("query", 0), ("passage", 1)):
            ids, mask = padded([[0, *tok.encode(rows[r][col], add_special_tokens=False).ids[:length - 2], 2]
                                for r in records], length)
            np.testing.assert_array_equal(batch[f"{side}_ids"], ids,
                                          err_msg=f"batch {k} after the resume: {side} is not records {records}")
            np.testing.assert_array_equal(batch[f"{side}_mask"], mask)
    assert resumed.get_state()["tasks"][name] == {"position": position + 4 * batch_size, "offset": 0,
                                                  "epoch": (position + 4 * batch_size) // n}
    # the same batches as an uninterrupted run advanced to that point
    uninterrupted = take(batching.make_batch_iterator(name, prefetch=0, **kwargs), steps + 4)
    for k in range(4):
        assert_batches_equal(after[k], uninterrupted[steps + k], f"batch {steps + k}, resumed vs uninterrupted")
    epochs = {order.epoch(p) for p in range(position, position + 4 * batch_size)}
    assert epochs == {6, 7}, "the batches after the resume should cross an epoch boundary"


def test_state_of_another_shard_count_is_rejected(small_pairs):
    name = small_pairs[0]
    two = batching.make_batch_iterator(name, batch_size=2, shard_index=0, num_shards=2)
    take(two, 1)
    one = batching.make_batch_iterator(name, batch_size=2)
    with pytest.raises(ValueError, match="num_shards"):
        one.set_state(two.get_state())


def test_state_of_changed_data_is_rejected(small_pairs, tok_dir):
    name, rows, path = small_pairs
    it = batching.make_batch_iterator(name, batch_size=2)
    take(it, 2)
    state = it.get_state()
    assert state["records"] == {name: 7}
    with open(path, "a", encoding="utf-8") as f:
        f.write("Noch eine Frage\tOne more answer\n")
    registry.register_pairs_task(name, path, tok_dir)  # a fresh source: the rows are indexed again
    fresh = batching.make_batch_iterator(name, batch_size=2)
    with pytest.raises(ValueError, match=r"data changed.*\(7, 8\)"):
        fresh.set_state(state)
