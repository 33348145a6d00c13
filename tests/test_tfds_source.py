"""TFDS tasks with random access (``tasks.sources.TfdsSource``, ``tasks.records.TfdsRecords``) and the test helper
that prepares a real TFDS dataset (``tests/prepared_tfds.py``): the records equal the rows of the tf.data path,
a tfrecord-prepared set falls back with a warning, and an unknown or unprepared name fails at registration
naming the gin key."""

from __future__ import annotations

import logging
import pickle
import re
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from bilingual.config import ConfigError
from tasks import batching, registry, run_data
from tasks.records import ListRecords, TfdsRecords
from data_helpers import DEMO_TRAIN, tok, tok_dir  # noqa: F401 (fixtures)
from prepared_tfds import write_prepared_tfds

WIKI = "wikipedia/20230601.de"


class TinyStsRows(tfds.core.GeneratorBasedBuilder):
    """STS-like features as TFDS sets store them: float64 label, an extra feature to drop."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "sentence1": tfds.features.Text(), "sentence2": tfds.features.Text(), "label": tf.float64,
            "idx": tf.int32}))

    def _split_generators(self, dl_manager):
        raise NotImplementedError("prepared by write_prepared_tfds only")

    def _generate_examples(self):
        raise NotImplementedError("prepared by write_prepared_tfds only")


class TinyRetrievalRows(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "question": tfds.features.Text(), "answer": tfds.features.Text(),
            "hard": tfds.features.Sequence(tfds.features.Text())}))

    def _split_generators(self, dl_manager):
        raise NotImplementedError("prepared by write_prepared_tfds only")

    def _generate_examples(self):
        raise NotImplementedError("prepared by write_prepared_tfds only")


def demo_docs(n):
    return (DEMO_TRAIN / "mlm/de.txt").read_text(encoding="utf-8").splitlines()[:n]


def wiki_rows(n):
    return [{"title": f"Artikel {i}", "text": text} for i, text in enumerate(demo_docs(n))]


def python_rows(task, split="train"):
    """The task's rows through its tf.data pipeline and preprocessors up to tokenize (seqio's path)."""
    dataset = task.source.get_dataset(split=split, shuffle=False)
    for preprocessor in task.preprocessors[:-1]:
        dataset = preprocessor(dataset)
    return [batching._python_row(row) for row in dataset.as_numpy_iterator()]


# ------------------------------------------------------------------------------------------ the helper


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_helper_prepares_a_dataset_that_tfds_reads(tmp_path, file_format):
    rows = wiki_rows(100)
    start = time.perf_counter()
    directory = write_prepared_tfds(tmp_path, WIKI, rows, file_format=file_format)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"preparing 100 rows took {elapsed:.1f} s"  # about 0.3 s unloaded
    builder = tfds.builder(WIKI, data_dir=str(tmp_path))
    assert type(builder).__name__ == "Wikipedia", "the registered builder sees the prepared files"
    assert builder.is_prepared() and str(builder.data_dir) == directory
    assert builder.info.file_format.value == file_format and builder.info.splits["train"].num_examples == 100
    decode = lambda ex: {k: v.decode("utf-8") for k, v in ex.items()}  # noqa: E731
    if file_format == "array_record":
        source = tfds.data_source(WIKI, split="train", data_dir=str(tmp_path), download=False)
        assert [decode(source[i]) for i in range(len(source))] == rows, "rows in the order given"
    else:
        got = [decode(ex) for ex in builder.as_dataset(split="train", shuffle_files=False).as_numpy_iterator()]
        assert got == rows


# ------------------------------------------------------------------------------ records vs tf.data rows


def test_sts_records_equal_the_tf_data_rows_and_tfrecord_falls_back(tmp_path, tok_dir, caplog):  # noqa: F811
    rows = [{"sentence1": f"Satz {i} über Köln", "sentence2": f"Zweiter Satz {i} 😀", "label": i / 7, "idx": i}
            for i in range(30)]
    expected = [{"a": r["sentence1"], "b": r["sentence2"], "score": float(np.float32(r["label"]))} for r in rows]
    assert expected[1]["score"] != 1 / 7, "the float32 cast is visible"
    feature_map = {"sentence1": "a", "sentence2": "b", "label": "score"}
    write_prepared_tfds(tmp_path / "ar", "tiny_sts_rows", rows)
    write_prepared_tfds(tmp_path / "tfr", "tiny_sts_rows", rows, file_format="tfrecord")
    ar = registry.register_tfds_task("tfds_sts_ar", "sts", "tiny_sts_rows", tok_dir, feature_map=feature_map,
                                     tfds_data_dir=str(tmp_path / "ar"))
    tfr = registry.register_tfds_task("tfds_sts_tfr", "sts", "tiny_sts_rows", tok_dir, feature_map=feature_map,
                                      tfds_data_dir=str(tmp_path / "tfr"))
    records = batching.records_of(ar, "train")
    assert isinstance(records, TfdsRecords) and len(records) == 30
    assert [records[i] for i in range(30)] == expected
    assert [records[i] for i in (29, 3, 17)] == [expected[i] for i in (29, 3, 17)]
    assert python_rows(ar) == expected, "the array_record source's tf.data path gives other rows"
    with caplog.at_level(logging.WARNING, logger="tasks.sources"):
        in_memory = batching.records_of(tfr, "train")
    assert isinstance(in_memory, ListRecords), "tfrecord has no random access: read into memory"
    assert [in_memory[i] for i in range(30)] == expected, "TFDS as_dataset -> rename -> cast_score"
    assert "prepared as tfrecord" in caplog.text and "--file_format=array_record" in caplog.text
    copy = pickle.loads(pickle.dumps(records))
    assert [copy[i] for i in range(30)] == expected


def test_retrieval_negatives_from_a_text_sequence(tmp_path, tok_dir):  # noqa: F811
    rows = [{"question": f"Frage {i}?", "answer": f"Antwort {i}.", "hard": [f"Falsch {i} {k} ñ" for k in range(3)]}
            for i in range(8)]
    write_prepared_tfds(tmp_path, "tiny_retrieval_rows", rows)
    task = registry.register_tfds_task("tfds_retrieval", "retrieval", "tiny_retrieval_rows", tok_dir,
                                       feature_map={"question": "query", "answer": "passage", "hard": "negatives"},
                                       tfds_data_dir=str(tmp_path))
    records = batching.records_of(task, "train")
    expected = [{"query": r["question"], "passage": r["answer"], "negatives": r["hard"]} for r in rows]
    assert [records[i] for i in range(8)] == expected == python_rows(task)
    write_prepared_tfds(tmp_path / "tfr", "tiny_retrieval_rows", rows, file_format="tfrecord")
    tfr = registry.register_tfds_task("tfds_retrieval_tfr", "retrieval", "tiny_retrieval_rows", tok_dir,
                                      feature_map={"question": "query", "answer": "passage", "hard": "negatives"},
                                      tfds_data_dir=str(tmp_path / "tfr"))
    assert python_rows(tfr) == expected, "TFDS as_dataset of the tfrecord copy"


# ------------------------------------------------------------------------------ errors at registration


def wiki_gin(data_dir, tok_dir, tfds_name=WIKI, feature_map='{"text": "text"}'):  # noqa: F811
    return f"""
register_data.tasks = [@mlm_de_wiki/register_tfds_task()]
mlm_de_wiki/register_tfds_task.name = "mlm_de_wiki"
mlm_de_wiki/register_tfds_task.task_type = "mlm"
mlm_de_wiki/register_tfds_task.tfds_name = "{tfds_name}"
mlm_de_wiki/register_tfds_task.tfds_data_dir = "{data_dir}"
mlm_de_wiki/register_tfds_task.feature_map = {feature_map}
mlm_de_wiki/register_tfds_task.tokenizer = "{tok_dir}"
"""


@pytest.mark.parametrize("case", ["unknown config", "unknown dataset", "not prepared", "feature"])
def test_errors_name_the_gin_key(tmp_path, tok_dir, case):  # noqa: F811
    import gin

    data_dir = str(tmp_path)
    kwargs, match = {
        "unknown config": ({"tfds_name": "wikipedia/20990101.de"},
                           r"^mlm_de_wiki/register_tfds_task\.tfds_name: unknown TFDS dataset 'wikipedia/20990101\.de' "
                           r"\(.*BuilderConfig 20990101\.de not found"),
        "unknown dataset": ({"tfds_name": "no_such_corpus_anywhere"},
                            r"^mlm_de_wiki/register_tfds_task\.tfds_name: unknown TFDS dataset "
                            r"'no_such_corpus_anywhere' \(Dataset no_such_corpus_anywhere not found\.\)"),
        "not prepared": ({}, rf"^mlm_de_wiki/register_tfds_task\.tfds_data_dir: TFDS dataset '{re.escape(WIKI)}' "
                             rf"is not prepared in data_dir '{re.escape(data_dir)}' \(no "
                             rf"{re.escape(data_dir)}/wikipedia/20230601\.de/1\.0\.0/dataset_info\.json\)"),
        "feature": ({"feature_map": '{"body": "text"}'},
                    r"^mlm_de_wiki/register_tfds_task\.feature_map: 'wikipedia/20230601\.de' has no feature\(s\) "
                    r"\['body'\]; it has \['text', 'title'\]"),
    }[case]
    if case == "feature":
        write_prepared_tfds(tmp_path, WIKI, wiki_rows(3))
    gin.clear_config()
    try:
        gin.parse_config(wiki_gin(data_dir, tok_dir, **kwargs))
        with pytest.raises(ConfigError, match=match):
            run_data.register_data()
    finally:
        gin.clear_config()
    assert not (tmp_path / "downloads").exists() or case == "feature", "nothing may be downloaded"


def test_python_call_is_named_by_its_task(tmp_path, tok_dir):  # noqa: F811
    with pytest.raises(ConfigError, match=r"^register_tfds_task\(name='wiki'\)\.tfds_data_dir: TFDS dataset"):
        registry.register_tfds_task("wiki", "mlm", WIKI, tok_dir, feature_map={"text": "text"},
                                    tfds_data_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------ end to end


def test_batcher_reads_a_tfds_task_end_to_end(tmp_path, tok_dir, tok):  # noqa: F811
    import gin

    rows = wiki_rows(40)
    write_prepared_tfds(tmp_path, WIKI, rows)
    gin.clear_config()
    try:
        gin.parse_config(wiki_gin(str(tmp_path), tok_dir))
        assert run_data.register_data() == ["mlm_de_wiki"]
    finally:
        gin.clear_config()
    assert isinstance(batching.records_of(__import__("seqio").get_mixture_or_task("mlm_de_wiki"), "train"),
                      TfdsRecords)
    kwargs = dict(batch_size=4, sequence_lengths={"text": 64}, shuffle=False, prefetch=0)
    with batching.make_batch_iterator("mlm_de_wiki", **kwargs) as it:
        inline = [next(it) for _ in range(3)]
    with batching.make_batch_iterator("mlm_de_wiki", num_workers=1, **kwargs) as it:  # records pickled
        workers = [next(it) for _ in range(3)]
    stream = []
    for a, b in zip(inline, workers):
        assert a["task"] == "mlm_de_wiki" and a["input_ids"].shape == (4, 64)
        for key in a:
            assert np.array_equal(a[key], b[key]), f"{key} differs with a worker process"
        ids, seg = a["targets"], a["segment_ids"]
        for r in range(4):
            for k in range(1, seg[r].max() + 1):
                stream.extend(ids[r][seg[r] == k][1:-1].tolist())
    docs = [t for row in rows for t in tok.encode(row["text"], add_special_tokens=False).ids]
    assert len(stream) > 500 and stream == docs[: len(stream)], "the documents' tokens, in order, from TFDS"
