"""Shared helpers for the data tests: one small tokenizer trained once per test process on bundled data."""

from __future__ import annotations

import functools
import pathlib
import tempfile

import pytest

from bilingual import tokenizer as bpe

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEMO_TRAIN = ROOT / "data" / "demo" / "train"


@functools.lru_cache(maxsize=None)
def demo_tokenizer_dir() -> str:
    """A 2,000-token German-English-Spanish tokenizer trained on the bundled MLM text (about 2 s)."""
    out = pathlib.Path(tempfile.mkdtemp(prefix="bilingual-test-tok-"))
    corpora = {lang: [str(DEMO_TRAIN / f"mlm/{lang}.txt")] for lang in ("de", "en", "es")}
    bpe.train_and_save(corpora, out, vocab_size=2000, max_chars_per_language=300_000, show_progress=False)
    return str(out)


def write(path: pathlib.Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tok_dir():
    """The demo tokenizer, with the demo tasks and mixtures registered for it."""
    from tasks import demo

    path = demo_tokenizer_dir()
    demo.register_demo_tasks(path)
    return path


@pytest.fixture(scope="module")
def tok(tok_dir):
    return bpe.load(tok_dir)
