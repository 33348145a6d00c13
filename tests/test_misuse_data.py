"""Misuse probes of the data readers and ``Encoder.encode``: nothing lost, nothing silently wrong.

A UTF-8 byte order mark opening a file is dropped (TSV, JSONL, plain text) and kept anywhere else; a TSV row
with more columns than its header (or, headerless, than its reader needs) is a malformed row naming file and
line, never cut short; ``Encoder.encode`` takes a str or a sequence of str and nothing else.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_helpers import write
from tokenizer_fixture import build_tokenizer
from bilingual import JinaBert, get_config, rows
from bilingual.encoder_api import Encoder
from bilingual.evaluation import data_files
from bilingual.rows import DataError
from tasks import finetune_data, sources

BOM = "\ufeff"
TAB_IN_TEXT = r"3 tab-separated columns, expected 2 \(a tab inside a text\?\)"


# ------------------------------------------------------------------------------------ byte order mark


def test_bom_opening_a_file_is_dropped_in_every_format(tmp_path):
    tsv = write(tmp_path / "pairs.tsv", BOM + "de\ten\nHallo\tHello\n")
    assert rows.read_headed_tsv(tsv) == (["de", "en"], [(2, ["Hallo", "Hello"])])
    parser = sources.RowParser("pairs", columns={"query": "de", "passage": "en"})
    assert list(parser.rows(tsv)) == [{"query": "Hallo", "passage": "Hello"}]
    headerless = write(tmp_path / "bare.tsv", BOM + "Hallo\tHello\n")
    assert list(sources.RowParser("pairs", header=False).rows(headerless)) == [{"query": "Hallo", "passage": "Hello"}]
    jsonl = write(tmp_path / "pairs.jsonl", BOM + '{"query": "q", "passage": "p"}\n')
    assert [r for _, r in rows.read_jsonl(jsonl)] == [{"query": "q", "passage": "p"}]
    text = write(tmp_path / "mlm.txt", BOM + "Erster Satz.\nZweiter.\n")
    assert list(rows.read_lines(text)) == [(1, "Erster Satz."), (2, "Zweiter.")]
    assert [r["text"] for r in sources.RowParser("text").rows(text)] == ["Erster Satz.", "Zweiter."]


def test_bom_elsewhere_is_text(tmp_path):
    # The public SQAC and XQuAD files hold such marks inside texts; they are data, not file marks.
    text = write(tmp_path / "mlm.txt", f"{BOM}a\n{BOM}b\nc{BOM}d\n")
    assert [t for _, t in rows.read_lines(text)] == ["a", f"{BOM}b", f"c{BOM}d"]
    tsv = write(tmp_path / "p.tsv", f"de\ten\n{BOM}x\ty\n")
    assert rows.read_headed_tsv(tsv)[1] == [(2, [f"{BOM}x", "y"])]


def test_bom_in_headers_of_eval_and_finetune_files(tmp_path):
    sts = write(tmp_path / "de-test.tsv", BOM + "sentence1\tsentence2\tscore\nA\tB\t1.5\nC\tD\t4\n")
    assert data_files.load_sts(sts).sentences1 == ["A", "C"]
    labelled = write(tmp_path / "de-train.tsv", BOM + "label\ttext\nsports\tTor!\nhealth\tGesund.\n")
    assert data_files.load_labelled(labelled).labels == ["sports", "health"]
    spec = finetune_data.TaskSpec(name="t", head="classification", inputs="text", language="de",
                                  train=labelled, dev=labelled, test=labelled, labels=("health", "sports"))
    assert finetune_data.load_examples(labelled, spec).labels.tolist() == [1, 0]


# ------------------------------------------------------------------------------- extra TSV columns


def test_a_tab_inside_a_text_is_an_error_not_a_cut(tmp_path):
    headed = write(tmp_path / "pairs.tsv", "query\tpassage\nq1\tp1\nq2\tp2 with\ta tab\n")
    with pytest.raises(DataError, match=r"pairs\.tsv:3: " + TAB_IN_TEXT):
        list(sources.RowParser("pairs").rows(headed))
    bare = write(tmp_path / "bare.tsv", "q1\tp1\nq2\tp2 with\ta tab\n")
    with pytest.raises(DataError, match=r"bare\.tsv:2: " + TAB_IN_TEXT):
        list(sources.RowParser("pairs", header=False).rows(bare))
    sts = write(tmp_path / "sts.tsv", "a\tb\n1\t2\n")  # headerless STS needs exactly 3 columns
    with pytest.raises(DataError, match=r"sts\.tsv:1: 2 tab-separated columns, expected 3$"):
        list(sources.RowParser("sts", header=False).rows(sts))


def test_extra_columns_are_skipped_and_counted_with_on_error_skip(tmp_path, caplog):
    path = write(tmp_path / "skip.tsv", "query\tpassage\nq1\tp1\nq2\tp\t2\nq3\tp3\n")
    got = list(sources.RowParser("pairs").rows(path, on_error="skip"))
    assert [r["query"] for r in got] == ["q1", "q3"]
    assert rows.SKIPPED_ROWS[path] == 1 and "skip.tsv:3: 3 tab-separated columns" in caplog.text


def test_retrieval_negatives_are_open_ended_only_without_a_header(tmp_path):
    bare = write(tmp_path / "bare.tsv", "q\tp\tn1\tn2\tn3\n")
    parser = sources.RowParser("retrieval", header=False, num_negatives=2)
    assert list(parser.rows(bare)) == [{"query": "q", "passage": "p", "negatives": ["n1", "n2"]}]
    headed = write(tmp_path / "headed.tsv", "query\tpositive\tnegative_1\tnegative_2\nq\tp\tn1\tn2\tn3\n")
    with pytest.raises(DataError, match=r"headed\.tsv:2: 5 tab-separated columns, expected 4"):
        list(sources.RowParser("retrieval", num_negatives=2).rows(headed))
    with pytest.raises(ValueError, match="negatives column must come after every other"):
        list(sources.RowParser("retrieval", header=False, num_negatives=1,
                               columns={"query": 2, "passage": 1, "negatives": 0}).rows(bare))


def test_beir_qrels_with_an_extra_column(tmp_path):
    corpus = write(tmp_path / "corpus.jsonl", '{"_id": "d1", "text": "Doc."}\n')
    queries = write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "Query?"}\n')
    qrels = write(tmp_path / "qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\textra\n")
    source = sources.BeirSource({"test": {"corpus": corpus, "queries": queries, "qrels": qrels}})
    with pytest.raises(DataError, match=r"qrels\.tsv:2: 4 tab-separated columns, expected 3"):
        list(source.rows("test"))


def test_eval_and_finetune_loaders_reject_extra_columns(tmp_path):
    sts = write(tmp_path / "de-test.tsv", "sentence1\tsentence2\tscore\nA\tB\t1.5\nC\tD\twith tab\t4\n")
    with pytest.raises(DataError, match=r"de-test\.tsv:3: 4 tab-separated columns, expected 3 \(a tab"):
        data_files.load_sts(sts)
    spec = finetune_data.TaskSpec(name="t", head="regression", inputs="pair", language="de", train=sts,
                                  dev=sts, test=sts, metric="spearman")
    with pytest.raises(DataError, match=r"de-test\.tsv:3: 4 tab-separated columns"):
        finetune_data.load_examples(sts, spec)


# ------------------------------------------------------------------------------ Encoder.encode input


@pytest.fixture(scope="module")
def encoder():
    config = get_config("tiny", vocab_size=1024)
    params = nn.meta.unbox(JinaBert(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    return Encoder(config, params, build_tokenizer())


@pytest.mark.parametrize("texts,name", [
    ({"a": 1, "b": 2}, "dict"), ({"a", "b"}, "set"), (None, "NoneType"), (b"bytes", "bytes"),
    ((t for t in ["a", "b"]), "generator"), (np.array([["a", "b"]]), "2-D numpy array"), (7, "int"),
])
def test_encode_rejects_what_is_not_a_sequence_of_str(encoder, texts, name):
    with pytest.raises(TypeError, match=rf"texts is (a )?{name}.*expected a str or a (1-D )?sequence of str"):
        encoder.encode(texts)


def test_encode_accepts_str_and_sequences(encoder):
    as_list = encoder.encode(["Hallo", "Hola"])
    np.testing.assert_array_equal(encoder.encode(("Hallo", "Hola")), as_list)
    np.testing.assert_array_equal(encoder.encode(np.array(["Hallo", "Hola"])), as_list)
    np.testing.assert_allclose(encoder.encode("Hola"), as_list[1], atol=1e-6)  # a batch of one: other shape
    with pytest.raises(TypeError, match=r"texts\[2\] is NoneType, expected str"):
        encoder.encode(["a", "b", None])


@pytest.mark.parametrize("kwargs,error,match", [
    ({"batch_size": 0}, ValueError, r"batch_size must be >= 1, got 0"),
    ({"batch_size": 2.5}, TypeError, r"batch_size must be an integer, got float 2.5"),
    ({"batch_size": True}, TypeError, r"batch_size must be an integer, got True"),
    ({"max_length": 1}, ValueError, r"max_length must be in \[2, 8192\]"),
    ({"max_length": 64.0}, TypeError, r"max_length must be an integer, got float"),
])
def test_encode_rejects_bad_sizes_naming_the_argument(encoder, kwargs, error, match):
    with pytest.raises(error, match=match):
        encoder.encode(["a"], **kwargs)
