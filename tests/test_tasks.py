"""Sources, preprocessors, MLM masking/packing and the batch contract of each task type."""

from __future__ import annotations

import csv
import logging

import jax
import numpy as np
import pytest
import tensorflow as tf

from bilingual import tokenizer as bpe
from bilingual.rows import SKIPPED_ROWS, DataError
from bilingual.text_identity import text_keys
from tasks import batching, demo, mlm, registry, run_data, sources
from data_helpers import DEMO_TRAIN, demo_tokenizer_dir, tok, tok_dir, write  # noqa: F401 (fixtures)

LENGTHS = {"text": 128, "query": 24, "passage": 48, "negatives": 40, "a": 20, "b": 20}


def ids_of(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def framed(tok, text, length):
    return [0] + ids_of(tok, text)[: length - 2] + [2]


def read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]


# ---------------------------------------------------------------------------------------------- MLM masking


@pytest.fixture(scope="module")
def mlm_batches(tok_dir):
    it = batching.make_batch_iterator("mlm_de", batch_size=40, seed=1, sequence_lengths=LENGTHS)
    return [next(it) for _ in range(4)]  # 4 * 40 * 128 = 20,480 tokens


def test_mlm_masking_rate_whole_words_and_80_10_10(mlm_batches, tok):
    targets = np.concatenate([b["targets"] for b in mlm_batches])
    inputs = np.concatenate([b["input_ids"] for b in mlm_batches])
    weights = np.concatenate([b["loss_weights"] for b in mlm_batches])
    assert targets.size == 20480 and weights.dtype == np.float32
    assert set(np.unique(weights)) <= {0.0, 1.0}
    selected = weights == 1.0
    special = targets < 5
    assert not selected[special].any(), "special tokens or padding selected"
    assert (inputs[special] == targets[special]).all()
    assert (inputs[~selected] == targets[~selected]).all(), "a token outside the selection changed"
    rate = selected.sum() / (~special).sum()
    assert 0.28 <= rate <= 0.32, rate
    # whole words, from the token strings (independent of the word-start table): a word starts at a "Ġ" token
    # or right after a special token; every word is selected entirely or not at all
    tokens = np.vectorize(tok.id_to_token)(targets)
    for r in range(targets.shape[0]):
        word = []
        for j in range(targets.shape[1] + 1):
            starts = j == targets.shape[1] or special[r, j] or tokens[r, j].startswith("Ġ") or special[r, j - 1]
            if starts and word:
                assert len({bool(selected[r, k]) for k in word}) == 1, (r, word, tokens[r, word])
                word = []
            if j < targets.shape[1] and not special[r, j]:
                word.append(j)
    masked = (inputs == 4) & selected
    kept = (inputs == targets) & selected
    replaced = selected & ~masked & ~kept
    n = selected.sum()
    assert abs(masked.sum() / n - 0.8) < 0.02
    assert abs(replaced.sum() / n - 0.1) < 0.02
    assert abs(kept.sum() / n - 0.1) < 0.02  # unchanged tokens carry loss weight 1 too
    assert (inputs[replaced] >= 5).all() and (inputs[replaced] < 2000).all()
    # whole words are not too short to matter: some selected words span several tokens
    assert (selected[:, 1:] & selected[:, :-1] & ~np.vectorize(lambda t: t.startswith("Ġ"))(tokens[:, 1:])).any()


def test_packing_conserves_tokens_and_segments(tok_dir, tok):
    it = batching.make_batch_iterator("mlm_en", batch_size=8, seed=0, sequence_lengths={"text": 64},
                                      shuffle=False)
    batches = [next(it) for _ in range(3)]
    docs = [ids_of(tok, line) for line in (DEMO_TRAIN / "mlm/en.txt").read_text(encoding="utf-8").splitlines()]
    stream = []
    for b in batches:
        ids, seg, mask = b["targets"], b["segment_ids"], b["attention_mask"]
        assert ids.shape == seg.shape == mask.shape == (8, 64)
        assert (mask == (seg > 0)).all() and (ids[seg == 0] == 1).all() and (b["input_ids"][seg == 0] == 1).all()
        for r in range(8):
            used = int((seg[r] > 0).sum())
            assert (seg[r, :used] > 0).all(), "padding only at the end"
            assert list(np.unique(seg[r, :used])) == list(range(1, seg[r, :used].max() + 1))
            assert (np.diff(seg[r, :used]) >= 0).all()
            for k in range(1, seg[r].max() + 1):
                piece = ids[r][seg[r] == k]
                assert piece[0] == 0 and piece[-1] == 2 and not np.isin(piece[1:-1], [0, 1, 2]).any()
                assert len(piece) <= 64
                stream.extend(piece[1:-1].tolist())
            assert 64 - used <= mlm.MIN_PIECE + 1, "a row closed with more padding than a minimum piece"
    # every token, in order, no loss, no duplicate: the pieces are the first documents of the file, cut where
    # they cross a row boundary
    flat = [t for d in docs for t in d]
    assert len(stream) > 1000 and stream == flat[: len(stream)]


def test_long_documents_are_split_into_pieces(tok_dir, tok):
    it = batching.make_batch_iterator("mlm_de", batch_size=4, seed=0, sequence_lengths={"text": 32},
                                      shuffle=False)
    b = next(it)
    first = ids_of(tok, (DEMO_TRAIN / "mlm/de.txt").read_text(encoding="utf-8").splitlines()[0])
    assert len(first) > 4 * 30
    # each row holds one 30-token chunk of the first document, framed <s> ... </s>
    for r in range(4):
        assert b["targets"][r].tolist() == [0] + first[30 * r: 30 * (r + 1)] + [2]
    assert it.get_state()["tasks"]["mlm_de"] == {"epoch": 0, "position": 0, "offset": 120}


def test_whole_word_mask_hand_case():
    # <s> A B' C </s> <pad>: words {A, B'} (B' continues A) and {C}: rate 0.5 of 3 tokens -> one word
    word_start = np.array([True] * 5 + [True, False, True])  # ids 5 "ĠA"-like, 6 continuation, 7 start
    ids = np.array([[0, 5, 6, 7, 2, 1]])
    seen = set()
    for s in range(40):
        out = bpe_mask(ids, word_start, s)
        sel = tuple(out["selected"][0].tolist())
        assert sel in {(False, True, True, False, False, False), (False, False, False, True, False, False)}
        seen.add(sel)
    assert len(seen) == 2


def bpe_mask(ids, word_start, seed):
    return mlm.whole_word_mask(ids, word_start, np.random.default_rng(seed), rate=0.5, mask_id=4, num_special=5,
                               vocab_size=8)


# ---------------------------------------------------------------------------------------------- tuple tasks


def test_sts_batch_matches_reference(tok_dir, tok):
    it = batching.make_batch_iterator("sts_de", batch_size=6, sequence_lengths=LENGTHS, shuffle=False)
    b = next(it)
    assert b["task"] == "sts_de" and b["task_type"] == "sts"
    rows = read_tsv(DEMO_TRAIN / "sts/de.tsv")[:6]
    for i, (s1, s2, score) in enumerate(rows):
        for key, text in (("a", s1), ("b", s2)):
            ref = framed(tok, text, 20)
            assert b[f"{key}_ids"][i].tolist() == ref + [1] * (20 - len(ref))
            assert b[f"{key}_mask"][i].tolist() == [1] * len(ref) + [0] * (20 - len(ref))
        assert b["score"][i] == np.float32(score)
    assert b["score"].dtype == np.float32 and b["a_ids"].dtype == np.int32


def test_retrieval_batch_matches_reference_and_truncation_keeps_eos(tok_dir, tok):
    it = batching.make_batch_iterator("retrieval_de", batch_size=3, sequence_lengths=LENGTHS, shuffle=False)
    b = next(it)
    assert b["negative_ids"].shape == b["negative_mask"].shape == (3, 3, 40)
    assert b["query_ids"].shape == (3, 24) and b["passage_ids"].shape == (3, 48)
    for i, row in enumerate(read_tsv(DEMO_TRAIN / "retrieval/de.tsv")[:3]):
        assert b["query_ids"][i][b["query_mask"][i] == 1].tolist() == framed(tok, row[0], 24)
        assert b["passage_ids"][i].tolist() == framed(tok, row[1], 48)  # long paragraph: cut to 48, ends </s>
        for k in range(3):
            ref = framed(tok, row[2 + k], 40)
            assert b["negative_ids"][i, k].tolist() == ref + [1] * (40 - len(ref))
            assert b["negative_mask"][i, k].tolist() == [1] * len(ref) + [0] * (40 - len(ref))


def test_pairs_batch_contract(tok_dir, tok):
    b = next(batching.make_batch_iterator("pairs_de_en", batch_size=5, sequence_lengths=LENGTHS, shuffle=False))
    assert set(b) == {"query_ids", "query_mask", "passage_ids", "passage_mask", "query_key", "passage_key", "task",
                      "task_type"}
    rows = read_tsv(DEMO_TRAIN / "pairs/de-en.tsv")[:5]
    de, en = rows[0]
    assert (b["query_key"] == text_keys([r[0] for r in rows])).all()  # the keys of the raw (untruncated) texts
    assert (b["passage_key"] == text_keys([r[1] for r in rows])).all()
    assert b["query_ids"][0][b["query_mask"][0] == 1].tolist() == framed(tok, de, 24)
    assert b["passage_ids"][0][b["passage_mask"][0] == 1].tolist() == framed(tok, en, 48)


# ---------------------------------------------------------------------------------------------- sources


@pytest.mark.parametrize("content,match", [
    ("sentence1\tsentence2\tscore\nEin Satz.\tNoch einer.\t4.0\nNur eine Spalte\n", r"sts\.tsv:3: 1 tab-separated"),
    ("sentence1\tsentence2\tscore\nEin Satz.\tNoch einer.\tviel\n", r"sts\.tsv:2: score 'viel' is not a number"),
    ("sentence1\tsentence2\tscore\nEin Satz.\t  \t1\n", r"sts\.tsv:2: empty text in 'b'"),
    ("sentence1\tsentence2\tscore\nEin Satz.\tZwei.\tnan\n", r"sts\.tsv:2: score 'nan' is not finite"),
    ("sentence1\tsentence2\tscore\nEin Satz.\tZwei.\t7\n", r"sts\.tsv:2: score 7.0 outside"),
    (b"sentence1\tsentence2\tscore\nGr\xfc\xdfe\tZwei.\t1\n", r"sts\.tsv:2: invalid UTF-8"),
    ("satz1\tsatz2\tnote\nA\tB\t1\n", r"sts\.tsv:1: header .* has no column 'sentence1'"),
])
def test_malformed_rows_name_file_and_line(tmp_path, content, match):
    path = write(tmp_path / "sts.tsv", content)
    columns = {"a": "sentence1", "b": "sentence2", "score": "score"} if "satz1" in str(content) else None
    parser = sources.RowParser("sts", score_range=(0, 5), columns=columns)
    with pytest.raises(DataError, match=match):
        list(parser.rows(path))


def test_malformed_row_is_the_data_error_in_the_batcher_and_in_seqio(tmp_path, tok_dir):
    path = write(tmp_path / "pairs.jsonl", '{"query": "a", "passage": "b"}\n{"query": "c"}\n')
    task = registry.register_pairs_task("bad_pairs", path, tok_dir)
    it = batching.make_batch_iterator("bad_pairs", batch_size=2, shuffle=False)
    match = r"^.*pairs\.jsonl:2: record lacks key\(s\) \['passage'\]"
    with pytest.raises(DataError, match=match) as err:
        next(it)
    assert (err.value.path, err.value.line) == (str(path), 2)
    registry.register_pairs_task("bad_pairs", path, tok_dir)  # a fresh source: its rows are indexed again
    with pytest.raises(DataError, match=match):  # seqio's own interface indexes the same rows
        task.get_dataset({"query": 8, "passage": 8}, shuffle=False)


def test_skip_mode_logs_count(tmp_path, tok_dir, caplog):
    content = "q\tp\nfrage eins\tantwort eins\nkaputt\n\tleer\nfrage zwei\tantwort zwei\n"
    path = write(tmp_path / "pairs.tsv", content)
    parser = sources.RowParser("pairs")
    with caplog.at_level(logging.WARNING, logger="tasks.sources"):
        rows = list(parser.rows(path, on_error="skip"))
    assert [r["query"] for r in rows] == ["frage eins", "frage zwei"]
    assert "pairs.tsv: skipped 2 malformed row(s); first: " in caplog.text and "pairs.tsv:3" in caplog.text
    assert SKIPPED_ROWS[path] == 2


def test_jsonl_glob_and_retrieval_negatives(tmp_path, tok_dir, tok):
    for k in range(2):
        write(tmp_path / f"part-{k}.jsonl", "".join(
            f'{{"query": "Frage {k}-{i}", "positive": "Antwort {i}", "negatives": ["n1 {i}", "n2 {i}", "n3"]}}\n'
            for i in range(3)))
    registry.register_retrieval_task("glob_retrieval", str(tmp_path / "part-*.jsonl"), tok_dir, num_negatives=2)
    b = next(batching.make_batch_iterator("glob_retrieval", batch_size=6, shuffle=False,
                                          sequence_lengths={"negatives": 8}))
    queries = [tok.decode(row.tolist(), skip_special_tokens=True) for row in b["query_ids"]]
    assert queries == [f"Frage {k}-{i}" for k in range(2) for i in range(3)]
    assert b["negative_ids"].shape == (6, 2, 8)  # the first num_negatives negatives are kept
    assert tok.decode(b["negative_ids"][4, 1].tolist(), skip_special_tokens=True) == "n2 1"
    few = write(tmp_path / "few.jsonl", '{"query": "q", "positive": "p", "negatives": ["x"]}\n')
    with pytest.raises(DataError, match=r"few\.jsonl:1: 1 negatives, the task needs 2"):
        list(sources.RowParser("retrieval", num_negatives=2).rows(few))


def test_tfds_source_with_local_builder(tmp_path, tok_dir, tok):
    import tensorflow_datasets as tfds

    class TinyStsForTest(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "sentence1": tfds.features.Text(), "sentence2": tfds.features.Text(), "label": tf.float64}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(10):
                yield i, {"sentence1": f"Satz Nummer {i}.", "sentence2": f"Zweiter Satz {i}.", "label": i / 2}

    TinyStsForTest(data_dir=str(tmp_path)).download_and_prepare()
    registry.register_tfds_task("tfds_sts", "sts", "tiny_sts_for_test:1.0.0", tok_dir, tfds_data_dir=str(tmp_path),
                                feature_map={"sentence1": "a", "sentence2": "b", "label": "score"})
    it = batching.make_batch_iterator("tfds_sts", batch_size=10, shuffle=False, num_epochs=1,
                                      sequence_lengths={"a": 16, "b": 16})
    b = next(it)
    got = sorted((tok.decode(a.tolist(), skip_special_tokens=True), float(s)) for a, s in zip(b["a_ids"], b["score"]))
    assert got == sorted((f"Satz Nummer {i}.", i / 2) for i in range(10))
    assert b["task_type"] == "sts" and b["score"].dtype == np.float32


def test_beir_source_pairs_and_hard_negatives(tmp_path, tok_dir, tok):
    corpus = write(tmp_path / "corpus.jsonl", "".join(
        f'{{"_id": "d{i}", "title": "Titel {i}", "text": "Dokument {i}."}}\n' for i in range(5)))
    queries = write(tmp_path / "queries.jsonl", "".join(f'{{"_id": "q{i}", "text": "Frage {i}?"}}\n'
                                                        for i in range(3)))
    qrels = write(tmp_path / "qrels-train.tsv", "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td3\t1\nq2\td4\t0\n")
    negs = write(tmp_path / "negatives.jsonl", '{"query-id": "q0", "negatives": ["d0", "d1", "d2"]}\n'
                                               '{"query-id": "q1", "negatives": ["d4", "d2"]}\n')
    registry.register_beir_task("beir_pairs", corpus, queries, qrels, tok_dir)
    b = next(batching.make_batch_iterator("beir_pairs", batch_size=2, shuffle=False))
    assert b["task_type"] == "pairs"
    got = [(tok.decode(q.tolist(), skip_special_tokens=True), tok.decode(p.tolist(), skip_special_tokens=True))
           for q, p in zip(b["query_ids"], b["passage_ids"])]
    assert got == [("Frage 0?", "Titel 0 Dokument 0."), ("Frage 1?", "Titel 3 Dokument 3.")]  # score 0 dropped
    registry.register_beir_task("beir_retrieval", corpus, queries, qrels, tok_dir, hard_negatives=negs,
                                num_negatives=2)
    b = next(batching.make_batch_iterator("beir_retrieval", batch_size=2, shuffle=False,
                                          sequence_lengths={"negatives": 16}))
    negatives = [[tok.decode(n.tolist(), skip_special_tokens=True) for n in row] for row in b["negative_ids"]]
    assert negatives == [["Titel 1 Dokument 1.", "Titel 2 Dokument 2."],  # the positive d0 is not a negative
                         ["Titel 4 Dokument 4.", "Titel 2 Dokument 2."]]
    bad = write(tmp_path / "qrels-bad.tsv", "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td9\t1\n")
    with pytest.raises(DataError, match=r"qrels-bad\.tsv:3: corpus id 'd9' not in"):
        list(sources.BeirSource({"train": {"corpus": corpus, "queries": queries, "qrels": bad}}).rows("train"))


def test_user_data_gin_template_registers_working_tasks(tmp_path, tok_dir, tok):
    import gin

    from data_helpers import ROOT

    for lang in ("de", "en"):
        write(tmp_path / f"{lang}/a.txt", f"Ein Text auf {lang}.\nNoch ein Dokument.\n")
    write(tmp_path / "pairs/p.tsv", "a\tb\nFrage\tAntwort\n")
    write(tmp_path / "retrieval/r.tsv", "q\tp\tn1\tn2\tn3\n" + "Frage\tAntwort\tx\ty\tz\n" * 10)
    write(tmp_path / "sts/de-train.tsv", "s1\ts2\tscore\n" + "A\tB\t3.5\n" * 10 + "kaputt\n")
    text = (ROOT / "gin/datasets/user_data.gin").read_text().replace("/data/", f"{tmp_path}/")
    gin.clear_config()
    gin.parse_config([text, f'TOKENIZER = "{tok_dir}"'])
    names = run_data.register_data()
    gin.clear_config()
    assert names == ["mlm_de_mine", "mlm_en_mine", "pairs_de_mine", "retrieval_de_mine", "sts_de_mine",
                     "mlm_de_en_mine", "multitask_de_mine"]
    it = batching.make_batch_iterator("multitask_de_mine", batch_size=1, sequence_lengths={"negatives": 8})
    types = [next(it)["task_type"] for _ in range(8)]
    assert set(types) == {"retrieval", "sts"}  # rates by size: 10 rows each (the malformed STS row skipped)
    assert it.tasks[0].num_input_examples("train") == it.tasks[1].num_input_examples("train") == 10
    b = next(batching.make_batch_iterator("mlm_de_en_mine", batch_size=2, sequence_lengths={"text": 16}))
    assert b["task"] in ("mlm_de_mine", "mlm_en_mine") and b["input_ids"].shape == (2, 16)


def test_demo_gin_parses(tok_dir):
    import gin

    from data_helpers import ROOT

    gin.clear_config()
    gin.parse_config_files_and_bindings([str(ROOT / "gin/datasets/demo.gin")], [f'DEMO_TOKENIZER = "{tok_dir}"'])
    names = run_data.register_data()
    gin.clear_config()
    assert set(demo.TASKS + demo.MIXTURES) == set(names)


@pytest.mark.parametrize("name,negatives", [("mlm_es", None), ("retrieval_es", 3)])
def test_batches_match_declared_shapes(tok_dir, name, negatives):
    it = batching.make_batch_iterator(name, batch_size=3, sequence_lengths=LENGTHS)
    b = next(it)
    declared = batching.batch_shapes(b["task_type"], 3, LENGTHS, num_negatives=negatives)
    assert {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in b.items() if k not in ("task", "task_type")} \
        == declared
    assert b["task_type"] == it.task_types[name]


def test_fill_row_hand_case():
    docs = [np.arange(10, 15), np.arange(20, 60), np.arange(70, 73), np.arange(100, 200)]  # 5, 40, 3, 100
    state = {"doc": 0, "offset": 0}

    def rest():
        return docs[state["doc"]][state["offset"]:]

    def consume(n):
        state["offset"] += n
        if state["offset"] == len(docs[state["doc"]]):
            state["doc"], state["offset"] = state["doc"] + 1, 0

    # row of 24: doc 0 whole (7), then 15 tokens of doc 1 fit (15 < MIN_PIECE=16): the row closes instead
    row = mlm.fill_row(rest, consume, 24, 0, 2)
    assert [p.tolist() for p in row] == [[0, *range(10, 15), 2]]
    row = mlm.fill_row(rest, consume, 24, 0, 2)  # an empty row always takes a piece: 22 tokens of doc 1
    assert [p.tolist() for p in row] == [[0, *range(20, 42), 2]]
    row = mlm.fill_row(rest, consume, 30, 0, 2)  # the remaining 18 of doc 1, doc 2 (3), then 3 free: closed
    assert [p.tolist() for p in row] == [[0, *range(42, 60), 2], [0, 70, 71, 72, 2]]
    row = mlm.fill_row(rest, consume, 40, 0, 2)  # doc 3 is cut at the row end (38 >= MIN_PIECE)
    assert [p.tolist() for p in row] == [[0, *range(100, 138), 2]] and state == {"doc": 3, "offset": 38}


def test_inspect_data_prints_decoded_batches(tok_dir, capsys):
    from launch import inspect_data

    lines = inspect_data.main([f"--tokenizer={tok_dir}", "--name=pairs_de_en", "--batches=1", "--batch_size=2",
                               "--length=32"])
    german = [de for de, _ in read_tsv(DEMO_TRAIN / "pairs/de-en.tsv")]
    assert lines[0].startswith("task pairs_de_en (pairs), query_ids (2, 32)")
    queries = [line.removeprefix("  query   ") for line in lines if line.startswith("  query   ")]
    assert len(queries) == 2 and all(any(de.startswith(q) for de in german) for q in queries)
    lines = inspect_data.main([f"--tokenizer={tok_dir}", "--name=mlm_en", "--batches=1", "--length=64"])
    assert "[<mask>|" in "\n".join(lines) and "selected" in lines[1]
