"""Byte-level BPE tokenizer: special ids, balancing, round trip, transformers loading, seqio vocabulary in tf.data."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from bilingual import tokenizer as bpe
from data_helpers import ROOT, demo_tokenizer_dir, write

TEXTS = [
    "Größere Straßen führen über die Brücke; Äpfel, Öl und Übermut.",
    "El niño pequeño comió mañana una piña en Cádiz: ¿qué más? ¡Olé!",
    "Café, naïve, façade, São Paulo, Dvořák, Łódź, Ελληνικά, 日本語.",
    "Emoji: 😀👍🏽 🇩🇪🇪🇸 and a family 👨‍👩‍👧 done.",
    "  leading and trailing spaces, tabs\tand\nnewlines  ",
    "Der Weiße Hai ist groß. " * 200,  # far longer than 512 tokens
]


@pytest.fixture(scope="module")
def tok_dir():
    return demo_tokenizer_dir()


def test_special_token_ids_and_files(tok_dir):
    tok = bpe.load(tok_dir)
    assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (pathlib.Path(tok_dir) / name).is_file(), name
    vocab = json.loads((pathlib.Path(tok_dir) / "vocab.json").read_text())
    assert vocab["<s>"] == 0 and vocab["<mask>"] == 4 and len(vocab) == tok.get_vocab_size() == 2000
    # cased: upper- and lower-case words get different ids
    assert tok.encode(" Haus", add_special_tokens=False).ids != tok.encode(" haus", add_special_tokens=False).ids


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok_dir, text):
    tok = bpe.load(tok_dir)
    ids = tok.encode(text).ids
    assert ids[0] == bpe.BOS_ID and ids[-1] == bpe.EOS_ID
    assert bpe.UNK_ID not in ids  # byte-level: every string is representable
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_nfc_normalisation(tok_dir):
    tok = bpe.load(tok_dir)
    composed, decomposed = "Bücher für Señora", "Bu\u0308cher fu\u0308r Sen\u0303ora"
    assert tok.encode(composed).ids == tok.encode(decomposed).ids


def test_transformers_autotokenizer_loads_and_matches(tok_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tok_dir)
    tok = bpe.load(tok_dir)
    assert (hf.bos_token_id, hf.pad_token_id, hf.eos_token_id, hf.unk_token_id, hf.mask_token_id) == (0, 1, 2, 3, 4)
    for text in TEXTS[:4]:
        assert hf(text)["input_ids"] == tok.encode(text).ids
        assert hf.decode(hf(text)["input_ids"], skip_special_tokens=True) == text
    batch = hf(TEXTS[:2], padding=True)
    short = int(np.argmin([len(x) for x in hf(TEXTS[:2])["input_ids"]]))
    assert batch["input_ids"][short][-1] == 1 and batch["attention_mask"][short][-1] == 0  # <pad> = 1
    # "<mask>" absorbs the space before it, as in RoBERTa
    assert hf("ein <mask> Haus")["input_ids"][2] == 4


def test_word_start_table_matches_decoded_tokens(tok_dir):
    tok = bpe.load(tok_dir)
    table = bpe.word_start_table(tok)
    for i in range(tok.get_vocab_size()):
        if i < len(bpe.SPECIAL_TOKENS):
            assert table[i]
        else:  # independent reference: the decoded token text begins with a space
            assert table[i] == tok.decode([i]).startswith(" "), (i, tok.id_to_token(i))


def test_balanced_sample_equal_characters(tmp_path):
    de = write(tmp_path / "de.txt", "".join(f"Zeile Nummer {i} mit etwas Text.\n" for i in range(400)))
    en = write(tmp_path / "en.txt", "".join(f"line {i}\n" for i in range(100)))
    down = bpe.balanced_sample({"de": [de], "en": [en]}, seed=3)
    n_en = sum(len(f"line {i}") for i in range(100))
    assert sum(map(len, down["en"])) == n_en  # the smaller language is kept whole
    assert n_en <= sum(map(len, down["de"])) < n_en + 40  # the larger one is cut to it (within one line)
    assert down == bpe.balanced_sample({"de": [de], "en": [en]}, seed=3)
    assert down != bpe.balanced_sample({"de": [de], "en": [en]}, seed=4)
    up = bpe.balanced_sample({"de": [de], "en": [en]}, balance="upsample", seed=3)
    n_de = sum(len(f"Zeile Nummer {i} mit etwas Text.") for i in range(400))
    assert sum(map(len, up["de"])) == n_de and n_de <= sum(map(len, up["en"])) < n_de + 10


def test_bad_corpus_names_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.txt", b"gut\nkaputt \xff\xfe hier\n")
    with pytest.raises(bpe.TokenizerError, match=r"bad\.txt:2: invalid UTF-8"):
        bpe.balanced_sample({"de": [bad]})
    with pytest.raises(bpe.TokenizerError, match="no file matches"):
        bpe.balanced_sample({"de": [str(tmp_path / "missing-*.txt")]})


def test_launch_script_trains_from_gin(tmp_path):
    from launch import train_tokenizer

    out = tmp_path / "tok"
    train_tokenizer.main([f"--gin_file={ROOT / 'gin/tokenizer/demo_de_en.gin'}",
                          "--gin_bindings=train_tokenizer.vocab_size = 700",
                          "--gin_bindings=train_tokenizer.max_chars_per_language = 100000",
                          "--gin_bindings=train_tokenizer.show_progress = False", f"--out={out}"])
    assert bpe.load(out).get_vocab_size() == 700
    assert "train_tokenizer.vocab_size = 700" in (out / "operative_config.gin").read_text()
    meta = json.loads((out / "training_args.json").read_text())
    assert set(meta["chars_per_language"]) == {"de", "en"}
    assert abs(meta["chars_per_language"]["de"] - meta["chars_per_language"]["en"]) < 2000
    # a URL destination (gs:// on a TPU VM; TensorFlow's in-memory file system here), loadable from there
    remote = train_tokenizer.main([f"--gin_file={ROOT / 'gin/tokenizer/demo_de_en.gin'}",
                                   "--gin_bindings=train_tokenizer.vocab_size = 400",
                                   "--gin_bindings=train_tokenizer.max_chars_per_language = 20000",
                                   "--gin_bindings=train_tokenizer.show_progress = False", "--out=ram://tok-test"])
    assert tf.io.gfile.exists(f"{remote}/vocab.json") and bpe.load(remote).get_vocab_size() == 400
    from tasks.vocabulary import ByteLevelBPEVocabulary

    assert ByteLevelBPEVocabulary(remote).encode("Haus") == bpe.load(remote).encode("Haus", add_special_tokens=False).ids


@pytest.mark.parametrize("gin_file", sorted((ROOT / "gin/tokenizer").glob("*.gin")), ids=lambda p: p.name)
def test_tokenizer_gin_files_parse(gin_file):
    import gin

    from launch import train_tokenizer  # noqa: F401  (registers the configurable)

    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config_file(str(gin_file))
    assert gin.query_parameter("train_tokenizer.vocab_size") in (8192, 61056)
    gin.clear_config()


def test_vocabulary_python_and_tf_data_ids_equal(tok_dir):
    from tasks.vocabulary import ByteLevelBPEVocabulary

    vocab = ByteLevelBPEVocabulary(tok_dir)
    assert (vocab.bos_id, vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.mask_id) == (0, 1, 2, 3, 4)
    assert vocab.vocab_size == 2000
    ds = tf.data.Dataset.from_tensor_slices(TEXTS).map(vocab.encode_tf)
    from_tf = [x.tolist() for x in ds.as_numpy_iterator()]
    reference = [bpe.load(tok_dir).encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert from_tf == reference == [list(vocab.encode(t)) for t in TEXTS]
    assert len(reference[-1]) > 512
    # batched (ragged) encode inside tf.data and decode back
    ragged = next(iter(tf.data.Dataset.from_tensor_slices(TEXTS).batch(len(TEXTS)).map(vocab.encode_tf)))
    assert ragged.to_list() == reference
    decoded = [vocab.decode_tf(tf.constant(ids)).numpy().decode("utf-8") for ids in reference]
    assert decoded == TEXTS == [vocab.decode(ids) for ids in reference]


def test_streaming_balance_and_training(tmp_path):
    rng = np.random.default_rng(0)
    words = ["Haus", "Baum", "Straße", "groß", "über", "Mädchen", "und", "der", "die", "das"]
    de = write(tmp_path / "de.txt", "".join(" ".join(rng.choice(words, 8)) + "\n" for _ in range(6000)))
    en = write(tmp_path / "en.txt", "".join(" ".join(rng.choice(["house", "tree", "the", "and"], 6)) + "\n"
                                            for _ in range(3000)))
    stats = {}
    lines = list(bpe.stream_balanced({"de": [de], "en": [en]}, seed=1, stats=stats))
    assert stats["en"] == sum(len(line) for line in open(en, encoding="utf-8").read().splitlines())  # smaller: all
    assert abs(stats["de"] / stats["en"] - 1) < 0.05  # larger: sampled to the same size in expectation
    assert len(lines) == len(list(bpe.stream_balanced({"de": [de], "en": [en]}, seed=1)))
    out = bpe.train_and_save({"de": [de], "en": [en]}, tmp_path / "tok", vocab_size=300, streaming=True,
                             show_progress=False)
    tok = bpe.load(out)
    assert tok.decode(tok.encode("Das Mädchen über dem Baum").ids, skip_special_tokens=True) == \
        "Das Mädchen über dem Baum"
    assert json.loads((out / "training_args.json").read_text())["streaming"] is True


def test_tokenizer_corpora_go_through_the_reader_layer(tmp_path):
    """A BOM opening a corpus file is not text; invalid UTF-8 names the file and line (bilingual.rows)."""
    from bilingual.tokenizer import TokenizerError, read_lines

    (tmp_path / "bom.txt").write_bytes("\ufeffErste Zeile\nzweite\n".encode("utf-8"))
    assert list(read_lines(str(tmp_path / "bom.txt"))) == [(1, "Erste Zeile"), (2, "zweite")]
    (tmp_path / "bad.txt").write_bytes(b"gut\n\xff\n")
    with pytest.raises(TokenizerError, match=r"bad.txt:2: invalid UTF-8"):
        list(read_lines(str(tmp_path / "bad.txt")))
