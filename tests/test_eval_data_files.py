"""Loaders of the uniform evaluation formats: good files parse, bad ones name the file and line."""

import json

import numpy as np
import pytest

from bilingual.evaluation.data_files import load_bitext, load_labelled, load_pair_labels, load_retrieval, load_sts
from bilingual.rows import DataError


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_sts_loader(tmp_path):
    f = _write(tmp_path / "sts.tsv", 'sentence1\tsentence2\tscore\nA "quoted" one.\tB\t2.5\nC\tD\t5\n')
    data = load_sts(f)
    assert data.sentences1 == ['A "quoted" one.', "C"] and data.sentences2 == ["B", "D"]
    np.testing.assert_array_equal(data.values, [2.5, 5.0])


@pytest.mark.parametrize("body, message", [
    ("A\tB\t5.5\n", r"sts.tsv:2: score 5.5 outside the range \[0.0, 5.0\]"),
    ("A\tB\t-1\n", r"sts.tsv:2: score -1.0 outside"),
    ("A\tB\tfive\n", r"sts.tsv:2: score 'five' is not a number"),
    ("A\tB\t1\nC\tD\n", r"sts.tsv:3: 2 tab-separated columns, expected 3"),
    ("", r"sts.tsv: no data rows"),
])
def test_sts_loader_errors(tmp_path, body, message):
    f = _write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\n" + body)
    with pytest.raises(DataError, match=message):
        load_sts(f)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope.tsv: no such file"):
        load_sts(tmp_path / "nope.tsv")


@pytest.mark.parametrize("loader, name, text, message", [
    (load_sts, "bad.tsv", "a\tb\tc\nx\ty\t1\n", r"bad.tsv:1: header .* lacks column\(s\) \['sentence1'"),
    (load_pair_labels, "bad.tsv", "sentence1\tsentence2\tlabel\nA\tB\tmaybe\n", r"bad.tsv:2: label 'maybe'"),
    (load_pair_labels, "one.tsv", "sentence1\tsentence2\tlabel\nA\tB\t1\n", r"one.tsv: all pairs have label 1"),
    (load_bitext, "e.tsv", "de\ten\nHallo\t \n", r"e.tsv:2: empty text in 'en'"),
    (load_labelled, "sib2.tsv", "category\ttext\nx\ty\n", r"sib2.tsv:1: header"),
])
def test_bad_file_is_named_with_its_line(tmp_path, loader, name, text, message):
    with pytest.raises(DataError, match=message):
        loader(_write(tmp_path / name, text))


def test_pair_labels_loader(tmp_path):
    paws = _write(tmp_path / "paws.tsv", "sentence1\tsentence2\tlabel\tid\nA\tB\t1\t7\nC\tD\t0\t8\n")
    data = load_pair_labels(paws)
    assert data.sentences1 == ["A", "C"] and data.values.tolist() == [1, 0]
    qnli = _write(tmp_path / "qnli.tsv", "question\tsentence\tlabel\nQ?\tS.\tentailment\nQ2?\tT.\tnot_entailment\n")
    data = load_pair_labels(qnli)
    assert data.sentences1 == ["Q?", "Q2?"] and data.sentences2 == ["S.", "T."] and data.values.tolist() == [1, 0]
    id_first = _write(tmp_path / "idfirst.tsv", "id\tlabel\tpremise\thypothesis\n7\t1\tP.\tH.\n8\t0\tQ.\tI.\n")
    data = load_pair_labels(id_first)
    assert data.sentences1 == ["P.", "Q."] and data.sentences2 == ["H.", "I."] and data.values.tolist() == [1, 0]


def test_bitext_loaders(tmp_path):
    tsv = _write(tmp_path / "de-en.tsv", "de\ten\tindex_id\tsplit\nHallo\tHello\t1\ttest\nJa\tYes\t2\ttest\n")
    data = load_bitext(tsv)
    assert (data.source, data.target, data.source_name, data.target_name) == (["Hallo", "Ja"], ["Hello", "Yes"], "de", "en")
    de = _write(tmp_path / "x.de", "Hallo\nJa\n")
    en = _write(tmp_path / "x.en", "Hello\nYes\n")
    assert load_bitext(de, en).target == ["Hello", "Yes"]
    short = _write(tmp_path / "short.en", "Hello\n")
    with pytest.raises(DataError, match=r"bitext line counts differ: .*x.de has 2 lines, .*short.en has 1"):
        load_bitext(de, short)


def test_labelled_loader(tmp_path):
    f = _write(tmp_path / "sib.tsv", "label\ttext\tindex_id\ntravel\tGo there.\t3\nsports\tPlay.\t4\n")
    data = load_labelled(f)
    assert data.labels == ["travel", "sports"] and data.texts == ["Go there.", "Play."]


def _beir(tmp_path, corpus, queries, qrels):
    c = _write(tmp_path / "corpus-de.jsonl", "".join(json.dumps(r) + "\n" for r in corpus))
    q = _write(tmp_path / "queries-de.jsonl", "".join(json.dumps(r) + "\n" for r in queries))
    r = _write(tmp_path / "qrels-test.tsv", "query-id\tcorpus-id\tscore\n" + "".join("\t".join(map(str, x)) + "\n" for x in qrels))
    return c, q, r


def test_retrieval_loader(tmp_path):
    files = _beir(tmp_path, [{"_id": "d1", "title": "T", "text": "one"}, {"_id": "d2", "title": "", "text": "two"}],
                  [{"_id": "q1", "text": "first?", "answers": ["x"]}, {"_id": "q2", "text": "unjudged?"}],
                  [("q1", "d1", 1), ("q1", "d2", 0)])
    data = load_retrieval(*files)
    assert data.corpus == {"d1": "T one", "d2": "two"}
    assert data.queries == {"q1": "first?"}  # q2 has no positive judgement
    assert data.qrels == {"q1": {"d1": 1}}


def test_retrieval_loader_errors(tmp_path):
    with pytest.raises(DataError, match=r"corpus-de.jsonl: empty corpus"):
        load_retrieval(*_beir(tmp_path, [], [{"_id": "q", "text": "?"}], [("q", "d", 1)]))
    with pytest.raises(DataError, match=r"qrels-test.tsv:3: corpus id 'dX' is not in .*corpus-de.jsonl"):
        load_retrieval(*_beir(tmp_path, [{"_id": "d", "text": "t"}], [{"_id": "q", "text": "?"}],
                              [("q", "d", 1), ("q", "dX", 1)]))
    with pytest.raises(DataError, match=r"qrels-test.tsv:2: query id 'qX' is not in .*queries-de.jsonl"):
        load_retrieval(*_beir(tmp_path, [{"_id": "d", "text": "t"}], [{"_id": "q", "text": "?"}], [("qX", "d", 1)]))
    with pytest.raises(DataError, match=r"corpus-de.jsonl:2: duplicate corpus id 'd'"):
        load_retrieval(*_beir(tmp_path, [{"_id": "d", "text": "t"}, {"_id": "d", "text": "u"}],
                              [{"_id": "q", "text": "?"}], [("q", "d", 1)]))
    c, q, r = _beir(tmp_path, [{"_id": "d", "text": "t"}], [{"_id": "q", "text": "?"}], [("q", "d", 1)])
    _write(r, "q\td\t1\nq\td\t1\n")  # no header line
    with pytest.raises(DataError, match=r"qrels-test.tsv:1: expected a header line"):
        load_retrieval(c, q, r)
    _write(r, "query-id\tcorpus-id\tscore\nq\td\t1\n")
    _write(c, '{"_id": "d", "text": "t"}\n{"_id": "e", "text": \n')
    with pytest.raises(DataError, match=r"corpus-de.jsonl:2: invalid JSON"):
        load_retrieval(c, q, r)
    _write(c, '{"_id": "d"}\n')
    with pytest.raises(DataError, match=r"corpus-de.jsonl:1: record lacks key\(s\) \['text'\]"):
        load_retrieval(c, q, r)
