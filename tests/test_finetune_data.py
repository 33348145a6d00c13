"""Fine-tuning data: TSV loaders (formats, bad lines named), the zero-shot transfer guard, tokenised
pairs against the tokenizer's own single-text encodings, and seeded bucketed batches."""

import pathlib
import shutil

import numpy as np
import pytest

from bilingual.rows import DataError
from tasks import finetune_data as fd
from tokenizer_fixture import build_tokenizer

BUNDLED = fd.BUNDLED_DATA_ROOT


def write(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def spec(**overrides) -> fd.TaskSpec:
    base = dict(name="t", head="classification", inputs="text", language="en", train="x", dev="x", test="x",
                labels=("a", "b"))
    return fd.TaskSpec(**{**base, **overrides})


# ---------------------------------------------------------------------------------------- formats


def test_classification_file_with_extra_column(tmp_path):
    path = write(tmp_path / "en-train.tsv", ["label\ttext\tindex_id", "b\tSecond text.\t7", "a\tFirst.\t3"])
    ex = fd.load_examples(path, spec())
    assert ex.texts == ["Second text.", "First."] and ex.pairs is None
    assert ex.labels.tolist() == [1, 0] and ex.lines == [2, 3]


@pytest.mark.parametrize("header,labels,expected", [
    ("sentence1\tsentence2\tlabel\tid", ("0", "1"), [1, 0]),
    ("question\tsentence\tlabel", ("not_entailment", "entailment"), [1, 0]),
    ("premise\thypothesis\tlabel", ("no", "yes"), [1, 0]),
])
def test_pair_classification_formats(tmp_path, header, labels, expected):
    rows = [f"A one.\tB one.\t{labels[1]}", f"A two.\tB two.\t{labels[0]}"]
    if header.endswith("id"):
        rows = [r + f"\t{i}" for i, r in enumerate(rows)]
    path = write(tmp_path / "de-dev.tsv", [header] + rows)
    ex = fd.load_examples(path, spec(inputs="pair", labels=labels))
    assert ex.texts == ["A one.", "A two."] and ex.pairs == ["B one.", "B two."]
    assert ex.labels.tolist() == expected


def test_sts_targets_are_scores_over_five(tmp_path):
    path = write(tmp_path / "de-train.tsv", ["sentence1\tsentence2\tscore", "a\tb\t5.0", "c\td\t1.2", "e\tf\t0"])
    ex = fd.load_examples(path, spec(head="regression", inputs="pair", labels=None, metric="spearman"))
    np.testing.assert_allclose(ex.labels, [1.0, 0.24, 0.0], rtol=1e-6)
    assert ex.labels.dtype == np.float32 and ex.pairs == ["b", "d", "f"]


@pytest.mark.parametrize("lines,kind,message", [
    (["label\ttext", "a\tok", "c\tbad label"], "text", ":3: label 'c' is not one of"),
    (["label\ttext", "a\tok", "a\ttoo\tmany"], "text", r":3: 3 tab-separated columns, expected 2 \(a tab"),
    (["label\ttext", "a\t  "], "text", ":2: empty text"),
    (["text\tcategory", "x\ta"], "text", ":1: header"),
    (["sentence1\tsentence2\tscore", "a\tb\t4", "a\tb\tfive"], "sts", ":3: score 'five' is not a number"),
    (["sentence1\tsentence2\tscore", "a\tb\t5.5"], "sts", ":2: score 5.5 outside the range"),
])
def test_bad_lines_are_named(tmp_path, lines, kind, message):
    path = write(tmp_path / "en-train.tsv", lines)
    task = spec() if kind == "text" else spec(head="regression", inputs="pair", labels=None, metric="spearman")
    with pytest.raises(DataError, match=message) as err:
        fd.load_examples(path, task)
    assert str(path) in str(err.value)


def test_user_task_without_label_list_takes_the_train_labels(tmp_path):
    for split in ("train", "dev", "test"):
        write(tmp_path / f"de-{split}.tsv", ["premise\thypothesis\tlabel", f"a {split}\tb\tneutral",
                                             f"c {split}\td\tentailment", f"e {split}\tf\tcontradiction"])
    task = spec(inputs="pair", labels=None, language="de", train="de-train.tsv", dev="de-dev.tsv",
                test="de-test.tsv")
    data = fd.load_task(task, tmp_path)
    assert data.labels == ("contradiction", "entailment", "neutral")
    assert data.train.labels.tolist() == [2, 1, 0]


def test_train_and_dev_rows_equal_to_a_test_row_are_dropped(tmp_path):
    header = "sentence1\tsentence2\tscore"
    write(tmp_path / "de-train.tsv", [header, "Ein Hund.\tA dog.\t4", "Eine Katze.\tA cat.\t3", "x\ty\t1"])
    write(tmp_path / "de-dev.tsv", [header, "ein  HUND.\ta dog.\t2", "Ein Hund.\tA cat.\t2"])
    write(tmp_path / "de-test.tsv", [header, "Ein Hund.\tA dog.\t4", "x\ty\t1"])
    task = spec(head="regression", inputs="pair", labels=None, metric="spearman", language="de",
                train="de-train.tsv", dev="de-dev.tsv", test="de-test.tsv")
    data = fd.load_task(task, tmp_path)
    assert data.dropped == {"train": 2, "dev": 1}
    assert data.train.texts == ["Eine Katze."] and data.dev.pairs == ["A cat."] and len(data.test) == 2


def test_task_spec_errors_name_the_field():
    with pytest.raises(DataError, match="metric"):
        spec(head="regression", metric="accuracy")
    with pytest.raises(DataError, match="dev_fraction"):
        spec(dev=None)
    with pytest.raises(DataError, match="unknown fine-tuning task"):
        fd.get_tasks(["glue-cola"])


def test_every_benchmark_task_loads_from_the_bundled_subsets():
    for task in fd.get_tasks():
        data = fd.load_task(task, BUNDLED)
        assert min(len(data.train), len(data.dev), len(data.test)) >= 60, task.name
        if task.head == "classification":
            assert set(np.unique(data.train.labels)) == set(range(len(data.labels))), task.name


def test_held_out_dev_shares_no_first_text_with_train():
    data = fd.load_task(fd.BENCHMARK_TASKS["sqac-qnli-es"], BUNDLED)
    assert data.dev_source.startswith("20%")
    train_q = {fd._normalise(t) for t in data.train.texts}
    assert not train_q & {fd._normalise(t) for t in data.dev.texts}
    assert len(data.train) + len(data.dev) == 400
    assert 0.1 < len(data.dev) / 400 < 0.3


def test_limit_rows_is_a_fixed_subset():
    data = fd.load_task(fd.BENCHMARK_TASKS["stsb-de"], BUNDLED)
    a, b = fd.limit_rows(data, 50, 20, 30), fd.limit_rows(data, 50, 20, 30)
    assert len(a.train) == 50 and len(a.dev) == 20 and len(a.test) == 30
    assert a.train.texts == b.train.texts and a.train.lines == sorted(a.train.lines)


# -------------------------------------------------------------------------------- transfer guard


def _copy_sib(tmp_path) -> pathlib.Path:
    shutil.copytree(BUNDLED / "sib200", tmp_path / "sib200")
    return tmp_path


def test_transfer_task_loads_when_clean():
    data = fd.load_task(fd.BENCHMARK_TASKS["sib200-en2de"], BUNDLED)
    assert data.spec.transfer and data.train.path.endswith("en-train.tsv") and data.test.path.endswith("de-test.tsv")


def test_transfer_rejects_a_target_language_file_by_its_name(tmp_path):
    task = fd.BENCHMARK_TASKS["sib200-en2de"]
    import dataclasses

    slipped = dataclasses.replace(task, train="sib200/de-train.tsv")
    with pytest.raises(DataError, match="tagged \\['de'\\].*target language 'de'"):
        fd.load_task(slipped, BUNDLED)
    slipped_dev = dataclasses.replace(task, dev="sib200/de-dev.tsv")
    with pytest.raises(DataError, match="dev file"):
        fd.load_task(slipped_dev, BUNDLED)


def test_transfer_rejects_german_rows_under_an_english_name(tmp_path):
    root = _copy_sib(tmp_path)
    shutil.copy(root / "sib200" / "de-train.tsv", root / "sib200" / "en-train.tsv")  # the name lies
    with pytest.raises(DataError, match="read as the target language 'de'"):
        fd.load_task(fd.BENCHMARK_TASKS["sib200-en2de"], root)


def test_transfer_rejects_a_few_mixed_in_target_rows(tmp_path):
    root = _copy_sib(tmp_path)
    german = (root / "sib200" / "de-train.tsv").read_text(encoding="utf-8").splitlines()[1:13]  # 12 of 222 rows
    with (root / "sib200" / "en-train.tsv").open("a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in german))
    with pytest.raises(DataError, match=r"en-train.tsv: 1[0-2] of 222 train texts .* target language"):
        fd.load_task(fd.BENCHMARK_TASKS["sib200-en2de"], root)


def test_transfer_rejects_text_shared_with_the_target_test_set(tmp_path):
    root = _copy_sib(tmp_path)
    test_row = (root / "sib200" / "de-test.tsv").read_text(encoding="utf-8").splitlines()[5]
    with (root / "sib200" / "en-dev.tsv").open("a", encoding="utf-8") as f:
        f.write(test_row + "\n")  # one German row (under the 2% share) that is a test sentence
    with pytest.raises(DataError, match=r"en-dev.tsv:62: 1 dev text\(s\) .* also occur in the target test"):
        fd.load_task(fd.BENCHMARK_TASKS["sib200-en2de"], root)


@pytest.mark.parametrize("text,expected", [
    ("The cat sat on the mat and it was happy.", "en"),
    ("Der Hund läuft über die Wiese und bellt nicht.", "de"),
    ("El perro corre por el prado con los niños.", "es"),
    ("Tokio 2020", None),
])
def test_guess_language(text, expected):
    assert fd.guess_language(text) == expected


# ------------------------------------------------------------------------------ tokens and batches


def test_pairs_are_one_sequence_like_the_post_processor():
    tok = build_tokenizer().backend_tokenizer
    examples = fd.Examples(["Ein Hund läuft.", "Kurz"], ["A dog runs.", "Short and a bit longer"],
                           np.array([1, 0]), "mem", [2, 3])
    split = fd.tokenize(examples, tok, max_length=64)
    for row, (a, b) in enumerate(zip(examples.texts, examples.pairs)):
        ids_a = tok.encode(a, add_special_tokens=False).ids
        ids_b = tok.encode(b, add_special_tokens=False).ids
        assert split.ids[row].tolist() == [0] + ids_a + [2, 2] + ids_b + [2]
    single = fd.tokenize(fd.Examples(["Ein Hund läuft."], None, np.array([0]), "mem", [2]), tok, 64)
    assert single.ids[0].tolist() == [0] + tok.encode("Ein Hund läuft.", add_special_tokens=False).ids + [2]


def test_truncation_keeps_both_sides_of_a_pair():
    tok = build_tokenizer().backend_tokenizer
    long = "Der Hund läuft über die Wiese. " * 20
    split = fd.tokenize(fd.Examples([long], ["A dog."], np.array([0]), "mem", [2]), tok, max_length=16)
    ids = split.ids[0].tolist()
    short = tok.encode("A dog.", add_special_tokens=False).ids  # longest-first: the long side is cut
    assert len(ids) == 16 and ids[0] == 0 and ids.count(2) == 3
    assert ids[-len(short) - 3:] == [2, 2] + short + [2]


def _split(n=37, seed=0):
    rng = np.random.default_rng(seed)
    ids = [np.concatenate([[0], rng.integers(5, 50, int(k)), [2]]).astype(np.int32) for k in rng.integers(3, 120, n)]
    return fd.TokenizedSplit(ids, np.arange(n, dtype=np.int64), max_length=128)


def test_eval_batches_cover_every_row_once_with_weighted_padding():
    split = _split()
    seen = []
    for batch in fd.iterate_batches(split, 8):
        assert batch["input_ids"].shape[1] in (64, 128) and batch["input_ids"].shape[0] == 8
        real = batch["index"] >= 0
        assert (batch["weights"] == real).all()
        for row in np.flatnonzero(real):
            i = batch["index"][row]
            n = len(split.ids[i])
            assert batch["input_ids"][row, :n].tolist() == split.ids[i].tolist()
            assert batch["attention_mask"][row].sum() == n and (batch["input_ids"][row, n:] == 1).all()
            assert batch["labels"][row] == i
        assert (batch["token_type_ids"] == 0).all()
        seen += batch["index"][real].tolist()
    assert sorted(seen) == list(range(len(split)))


def test_train_batches_are_seeded_per_epoch():
    split = _split(64)
    order = lambda epoch, seed=0: [b["index"].tolist() for b in fd.iterate_batches(
        split, 8, shuffle=True, seed=seed, epoch=epoch, drop_remainder=True)]
    assert order(1) == order(1)
    assert order(1) != order(2) and order(1) != order(1, seed=1)
    assert sorted(sum(order(3), [])) == list(range(64))
    dropped = [b["index"] for b in fd.iterate_batches(_split(37), 8, shuffle=True, drop_remainder=True)]
    assert len(dropped) == 4 and all((i >= 0).all() for i in dropped)
