"""Single-task batches, task frequencies, restore-then-continue, and host sharding of the batch iterator."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bilingual import tokenizer as bpe
from tasks import batching, demo, mixtures, registry
from data_helpers import demo_tokenizer_dir, tok, tok_dir, write  # noqa: F401 (fixtures)


def decode_rows(tok, ids):
    return [tok.decode(row.tolist(), skip_special_tokens=True) for row in ids]


@pytest.fixture(scope="module")
def tagged_tasks(tok_dir, tmp_path_factory):
    """Three STS tasks whose sentences are tagged with the task's letter; sizes 300, 600, 900."""
    d = tmp_path_factory.mktemp("tagged")
    names = {}
    for tag, n in (("x", 300), ("y", 600), ("z", 900)):
        rows = "".join(f"{tag} {i}\t{tag} zwei {i}\t{i % 6}\n" for i in range(n))
        path = write(d / f"{tag}.tsv", "sentence1\tsentence2\tscore\n" + rows)
        registry.register_sts_task(f"tag_{tag}", path, tok_dir)
        names[tag] = f"tag_{tag}"
    mixtures.register_mixture("tagged_by_size", list(names.values()))
    return names


def test_every_batch_from_one_task_and_frequencies(tok, tagged_tasks):
    it = batching.make_batch_iterator("tagged_by_size", batch_size=1, seed=7, sequence_lengths={"a": 8, "b": 8})
    counts = {t: 0 for t in tagged_tasks}
    for _ in range(2000):
        b = next(it)
        tag = decode_rows(tok, b["a_ids"])[0].split()[0]
        assert b["task"] == tagged_tasks[tag] and b["task_type"] == "sts"
        counts[tag] += 1
    expected = {"x": 1 / 6, "y": 2 / 6, "z": 3 / 6}  # proportional to size by default
    for tag, p in expected.items():
        assert abs(counts[tag] / 2000 - p) < 3.5 * np.sqrt(p * (1 - p) / 2000), counts


def test_batches_never_mix_tasks(tok, tagged_tasks):
    it = batching.make_batch_iterator("tagged_by_size", batch_size=16, seed=1, sequence_lengths={"a": 8, "b": 8},
                                      rates={"tag_x": 1.0, "tag_y": 1.0, "tag_z": 1.0})
    seen = set()
    for _ in range(40):
        b = next(it)
        tags = {s.split()[0] for s in decode_rows(tok, b["a_ids"]) + decode_rows(tok, b["b_ids"])}
        assert tags == {b["task"][-1]}, (tags, b["task"])
        seen.add(b["task"])
    assert seen == set(tagged_tasks.values())


def test_explicit_rates_and_zero_rate(tagged_tasks):
    it = batching.make_batch_iterator("tagged_by_size", batch_size=1, rates={"tag_x": 3.0, "tag_y": 1.0})
    picks = [it.task_for_step(s).name for s in range(2000)]
    assert "tag_z" not in picks
    assert abs(picks.count("tag_x") / 2000 - 0.75) < 3.5 * np.sqrt(0.75 * 0.25 / 2000)
    with pytest.raises(ValueError, match="not in"):
        batching.make_batch_iterator("tagged_by_size", rates={"tag_q": 1.0})


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], str):
            assert a[k] == b[k]
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_restore_then_continue_equals_uninterrupted(tok_dir):
    # an MLM task (documents cut across rows), a retrieval and an STS task (epochs: test_restore_across_epochs)
    mixtures.register_mixture("restore_mix", {"mlm_de": 2.0, "retrieval_de": 1.0, "tag_x": 1.0})
    # with seed 3 the draws are mlm_de x4, tag_x, mlm_de x2, retrieval_de, ...: cut 2 stops inside a document,
    # cut 7 with three tasks part-way through
    kwargs = dict(batch_size=4, seed=3, sequence_lengths={"text": 48, "query": 16, "passage": 32,
                                                          "negatives": 32, "a": 8, "b": 8})
    reference = batching.make_batch_iterator("restore_mix", **kwargs)
    batches, states = [], []
    for _ in range(14):
        batches.append(next(reference))
        states.append(json.loads(json.dumps(reference.get_state())))  # what a checkpoint would store
    resumed_any_piece = False
    for cut in (2, 7):
        state = states[cut - 1]
        resumed_any_piece |= state["tasks"].get("mlm_de", {}).get("offset", 0) > 0
        fresh = batching.make_batch_iterator("restore_mix", **kwargs)
        fresh.set_state(state)
        for k in range(cut, 14):
            assert_batches_equal(next(fresh), batches[k])
    assert resumed_any_piece, "the test should resume in the middle of a document"
    assert {b["task"] for b in batches} == {"mlm_de", "retrieval_de", "tag_x"}


def test_restore_across_epochs(tok_dir, tmp_path):
    path = write(tmp_path / "p.tsv", "q\tp\n" + "".join(f"frage {i}\tantwort {i}\n" for i in range(10)))
    registry.register_pairs_task("ten_pairs", path, tok_dir)
    kwargs = dict(batch_size=3, seed=5, sequence_lengths={"query": 8, "passage": 8})
    reference = batching.make_batch_iterator("ten_pairs", **kwargs)
    batches, states = [], []
    for _ in range(12):  # 36 examples = 3.6 epochs
        batches.append(next(reference))
        states.append(reference.get_state())
    assert reference.get_state()["tasks"]["ten_pairs"]["epoch"] == 3
    epoch0 = np.concatenate([b["query_ids"] for b in batches[:3]])[:9]
    epoch1 = np.concatenate([b["query_ids"] for b in batches[3:7]])[1:10]
    assert not np.array_equal(epoch0, epoch1[:9]), "each epoch has its own order"
    fresh = batching.make_batch_iterator("ten_pairs", **kwargs)
    fresh.set_state(states[4])  # after 5 batches: epoch 1, 5 examples in
    assert states[4]["tasks"]["ten_pairs"] == {"epoch": 1, "position": 15, "offset": 0}
    for k in range(5, 12):
        assert_batches_equal(next(fresh), batches[k])


def test_state_of_another_iterator_is_rejected(tok_dir):
    it = batching.make_batch_iterator("sts_de", batch_size=2, seed=0)
    other = batching.make_batch_iterator("sts_de", batch_size=2, seed=1)
    with pytest.raises(ValueError, match="seed"):
        other.set_state(it.get_state())


@pytest.mark.parametrize("num_files", [1, 4], ids=["rows", "files"])
def test_two_hosts_read_disjoint_shards_that_cover_the_data(tok, tok_dir, tmp_path, num_files):
    rows = [f"frage {i}" for i in range(37)]
    for f in range(num_files):
        write(tmp_path / f"part-{f}.tsv", "q\tp\n" + "".join(f"{q}\tantwort\n" for q in rows[f::num_files]))
    registry.register_pairs_task("sharded_pairs", str(tmp_path / "part-*.tsv"), tok_dir)
    mixtures.register_mixture("sharded_mix", {"sharded_pairs": 1.0, "sts_en": 1.0})
    per_host = []
    for host in range(2):
        it = batching.make_batch_iterator("sharded_pairs", batch_size=1, seed=0, shard_index=host, num_shards=2,
                                          num_epochs=1, sequence_lengths={"query": 8, "passage": 8})
        seen = []
        with pytest.raises(StopIteration):
            while True:
                seen.extend(decode_rows(tok, next(it)["query_ids"]))
        per_host.append(seen)
    assert set(per_host[0]).isdisjoint(per_host[1])
    assert sorted(per_host[0] + per_host[1]) == sorted(rows)
    assert min(map(len, per_host)) >= 37 // 2 - (9 if num_files == 4 else 0)
    # the task drawn at each step is the same on both hosts (the global batch stays single-task)
    hosts = [batching.make_batch_iterator("sharded_mix", batch_size=1, shard_index=h, num_shards=2) for h in (0, 1)]
    assert [hosts[0].task_for_step(s).name for s in range(200)] == [hosts[1].task_for_step(s).name
                                                                   for s in range(200)]


def test_close_keeps_the_position(tok_dir):
    kwargs = dict(batch_size=2, seed=4, sequence_lengths={"text": 32})
    reference = batching.make_batch_iterator("mlm_de_en", **kwargs)
    batches = [next(reference) for _ in range(4)]
    with batching.make_batch_iterator("mlm_de_en", **kwargs) as it:
        for k in range(4):
            assert_batches_equal(next(it), batches[k])
            it.close()  # the next batch re-opens the pipelines at the saved position


def test_process_exits_with_live_iterators(tok_dir, tmp_path):
    # an MLM mixture iterator left open at exit used to deadlock interpreter shutdown (tf.data prefetch into
    # Python generators); the atexit hook releases the pipelines
    import subprocess
    import sys

    from data_helpers import ROOT

    script = write(tmp_path / "live.py", (
        "from tasks import demo, batching\n"
        f"demo.register_demo_tasks({tok_dir!r})\n"
        "it = batching.make_batch_iterator('mlm_de_en', batch_size=8, sequence_lengths={'text': 128})\n"
        "for _ in range(3):\n    next(it)\nprint('ok')\n"))
    done = subprocess.run([sys.executable, script], cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_mixture_of_mixtures_shares_its_rate_in_its_own_proportions(tagged_tasks):
    """{inner(x, y by size): 1, z: 1}: inner's half goes to x:y = 300:600, so x 1/6, y 2/6, z 1/2 (exact
    arithmetic on the sizes of the fixture); by size, the inner mixture counts 300 + 600 examples."""
    mixtures.register_mixture("tag_inner", ["tag_x", "tag_y"])
    mixtures.register_mixture("tag_outer", {"tag_inner": 1.0, "tag_z": 1.0})
    tasks, rates = mixtures.resolve("tag_outer")
    assert [t.name for t in tasks] == ["tag_x", "tag_y", "tag_z"]
    total = sum(rates.values())
    assert {t: r / total for t, r in rates.items()} == pytest.approx({"tag_x": 1 / 6, "tag_y": 2 / 6, "tag_z": 0.5},
                                                                      rel=1e-12)
    mixtures.register_mixture("tag_outer_size", ["tag_inner", "tag_z"])
    assert mixtures.MIXTURES["tag_outer_size"].task_rates() == {"tag_inner": 900.0, "tag_z": 900.0}
    with pytest.raises(ValueError, match="names itself"):
        mixtures.register_mixture("tag_self", ["tag_self", "tag_x"])
