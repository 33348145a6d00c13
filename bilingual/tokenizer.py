"""Byte-level BPE tokenizer for a language pair, trained with Hugging Face ``tokenizers``.

The recipe follows ``shared/spec/MODEL.md``: RoBERTa-style byte-level BPE, cased, with the special tokens
``<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4`` (in that order, so the ids are fixed), trained on a corpus in
which the two languages are balanced by sampling. The saved directory is a regular Hugging Face tokenizer
(``tokenizer.json``, ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``)
that ``transformers.AutoTokenizer.from_pretrained(dir)`` loads, so an exported model carries it unchanged;
``tokenizer.json`` is written with its BPE merges as ``"left right"`` strings, the form both tokenizers 0.19
(transformers 4.x) and 0.20+ read (``portable_tokenizer_json``).

Text is NFC-normalised before byte-level pre-tokenisation (ours: composed and decomposed umlauts/accents get
the same ids; RoBERTa itself has no normaliser).

Balancing: every language contributes the same number of characters. By default that is the size of the
smallest language (``balance="downsample"``: larger languages are subsampled line by line with a fixed seed);
``balance="upsample"`` instead repeats lines of the smaller languages up to the size of the largest.
``max_chars_per_language`` caps every language (useful for a 61k vocabulary on a very large corpus), and
``streaming=True`` balances in two passes over the files without holding them in memory.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import pathlib
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = range(5)
DEFAULT_VOCAB_SIZE = 61056
DEFAULT_MODEL_MAX_LENGTH = 8192
WORD_START_MARKER = "\u0120"  # "Ġ": the byte-level encoding of a leading space


class TokenizerError(ValueError):
    """Bad tokenizer input or a tokenizer directory that does not follow the contract above."""


def expand_paths(patterns: Sequence[str] | str) -> list[str]:
    """Expands globs; local paths through ``glob``, URLs such as ``gs://`` through ``tf.io.gfile``."""
    if isinstance(patterns, str):
        patterns = [patterns]
    paths: list[str] = []
    for pattern in patterns:
        if "://" in pattern:
            import tensorflow as tf  # only for remote file systems; import is slow

            matched = sorted(tf.io.gfile.glob(pattern))
        else:
            matched = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matched:
            raise TokenizerError(f"no file matches {pattern!r}")
        paths.extend(matched)
    return paths


def read_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yields ``(line_number, text)`` of a UTF-8 text file (1-based), without the newline, through the one
    reader layer (``bilingual.rows``: local or ``gs://``, a leading BOM dropped).

    Raises ``TokenizerError`` naming the file and line on invalid UTF-8 or a missing file.
    """
    from bilingual import rows

    try:
        yield from rows.read_lines(path)
    except rows.DataError as err:
        raise TokenizerError(str(err)) from None


def balanced_sample(corpora: Mapping[str, Sequence[str]], *, balance: str = "downsample",
                    max_chars_per_language: int | None = None, seed: int = 0) -> dict[str, list[str]]:
    """Reads the non-empty lines of each language and samples them to equal character counts.

    Args:
      corpora: language code -> file paths or globs (plain text, one document per line).
      balance: ``"downsample"`` (to the smallest language) or ``"upsample"`` (to the largest, by repetition).
      max_chars_per_language: optional cap applied after balancing.
      seed: fixes the line sample.

    Returns:
      language -> sampled lines (in random order). Every language gets about the same number of characters
      (equal up to one line).
    """
    if balance not in ("downsample", "upsample"):
        raise TokenizerError(f"balance must be 'downsample' or 'upsample', got {balance!r}")
    if not corpora:
        raise TokenizerError("corpora is empty: give at least one language -> files")
    lines = {}
    for lang, patterns in corpora.items():
        lines[lang] = [t for path in expand_paths(patterns) for _, t in read_lines(path) if t.strip()]
        if not lines[lang]:
            raise TokenizerError(f"language {lang!r}: the files {list(patterns)} hold no non-empty line")
    sizes = {lang: sum(map(len, v)) for lang, v in lines.items()}
    target = min(sizes.values()) if balance == "downsample" else max(sizes.values())
    if max_chars_per_language:
        target = min(target, max_chars_per_language)
    rng = np.random.default_rng(seed)
    out = {}
    for lang in sorted(lines):
        pool = lines[lang]
        picked: list[str] = []
        chars = 0
        while chars < target:
            for i in rng.permutation(len(pool)):  # repeats only when upsampling
                if chars >= target:
                    break
                picked.append(pool[i])
                chars += len(pool[i])
        out[lang] = picked
        log.info("tokenizer corpus: %s %d of %d characters (%d lines)", lang, chars, sizes[lang], len(picked))
    return out


def stream_balanced(corpora: Mapping[str, Sequence[str]], *, max_chars_per_language: int | None = None,
                    seed: int = 0, stats: dict | None = None) -> Iterator[str]:
    """Balanced lines without holding the corpus in memory (for corpora of many GB).

    A first pass counts the characters of every language; the second yields each non-empty line with
    probability ``target / size`` of its language (seeded), where ``target`` is the smallest language's size
    (capped by ``max_chars_per_language``). The balance is then exact in expectation (within a fraction of a
    percent for large corpora) rather than to the line. Languages are streamed one after the other, which does
    not matter for BPE (the trainer counts words over everything before merging). ``stats`` (if given)
    receives the characters yielded per language.
    """
    paths = {lang: expand_paths(patterns) for lang, patterns in corpora.items()}
    sizes = {lang: sum(len(t) for path in files for _, t in read_lines(path) if t.strip())
             for lang, files in paths.items()}
    empty = [lang for lang, n in sizes.items() if n == 0]
    if empty:
        raise TokenizerError(f"languages {empty} have no non-empty line in {[corpora[k] for k in empty]}")
    target = min(sizes.values())
    if max_chars_per_language:
        target = min(target, max_chars_per_language)
    rng = np.random.default_rng(seed)
    for lang in sorted(paths):
        keep = target / sizes[lang]
        kept = 0
        for path in paths[lang]:
            for _, text in read_lines(path):
                if text.strip() and rng.random() < keep:
                    kept += len(text)
                    yield text
        log.info("tokenizer corpus (streamed): %s %d of %d characters", lang, kept, sizes[lang])
        if stats is not None:
            stats[lang] = kept


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE pipeline with the RoBERTa post-processor (``<s> A </s>``)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, *, min_frequency: int = 2,
              show_progress: bool = True, length: int | None = None) -> Tokenizer:
    """Trains byte-level BPE on ``texts``; the five special tokens get ids 0..4."""
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise TokenizerError(f"vocab_size must exceed {len(SPECIAL_TOKENS) + 256} (specials + 256 bytes), "
                             f"got {vocab_size}")
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer, length=length)
    # as in RoBERTa, "<mask>" absorbs the space before it, so "ein <mask> Haus" masks the word with its space
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
    tok.post_processor = processors.RobertaProcessing(("</s>", EOS_ID), ("<s>", BOS_ID), trim_offsets=True,
                                                      add_prefix_space=False)
    for i, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != i:
            raise TokenizerError(f"special token {token} got id {tok.token_to_id(token)}, expected {i}")
    return tok


# tokenizer_config.json classes that only transformers >= 5 knows, and the 4.x name of the same fast tokenizer
# (transformers 5 defines PreTrainedTokenizerFast as an alias of TokenizersBackend).
_V5_ONLY_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable_tokenizer_json(data: dict) -> dict:
    """``tokenizer.json`` content in the form that tokenizers 0.19 (transformers 4.x) and 0.20+ all read.

    tokenizers 0.20 started writing BPE merges as ``[left, right]`` pairs; 0.19 and older read only the
    ``"left right"`` strings (and fail with "data did not match any variant of untagged enum ModelWrapper"),
    while 0.20+ still reads both. The string form is unambiguous only if no merge part contains a space;
    byte-level BPE (this project's, RoBERTa's) maps the space byte to ``Ġ``, so that always holds for it.
    Raises ``TokenizerError`` for a tokenizer whose merges cannot be written as strings. Everything else is
    returned unchanged (a copy).
    """
    data = json.loads(json.dumps(data))
    model = data.get("model") or {}
    merges = model.get("merges")
    if model.get("type") == "BPE" and merges:
        strings = []
        for merge in merges:
            if isinstance(merge, str):
                strings.append(merge)
                continue
            left, right = merge
            if " " in left or " " in right:
                raise TokenizerError(f"BPE merge {merge!r} contains a space: it has no form that tokenizers < 0.20 "
                                     "reads (only the [left, right] form of tokenizers >= 0.20)")
            strings.append(f"{left} {right}")
        model["merges"] = strings
    return data


def portable_tokenizer_config(config: dict) -> dict:
    """``tokenizer_config.json`` content that transformers 4.x and 5.x both load: a class name only
    transformers 5 has (``TokenizersBackend``, what 5.x's ``save_pretrained`` writes for a plain fast tokenizer)
    becomes ``PreTrainedTokenizerFast``, the same class under the name both know."""
    config = dict(config)
    name = config.get("tokenizer_class")
    if name in _V5_ONLY_TOKENIZER_CLASSES:
        config["tokenizer_class"] = _V5_ONLY_TOKENIZER_CLASSES[name]
    return config


def make_portable(directory: str | os.PathLike) -> None:
    """Rewrites ``tokenizer.json`` and ``tokenizer_config.json`` in ``directory`` (those present) in their
    portable forms (``portable_tokenizer_json`` / ``portable_tokenizer_config``)."""
    directory = pathlib.Path(directory)
    for name, convert in (("tokenizer.json", portable_tokenizer_json),
                          ("tokenizer_config.json", portable_tokenizer_config)):
        path = directory / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            converted = convert(data)
            if converted != data:
                path.write_text(json.dumps(converted, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save(tok: Tokenizer, out_dir: str | os.PathLike, *, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
         metadata: Mapping | None = None) -> pathlib.Path:
    """Writes the Hugging Face tokenizer files into ``out_dir`` (created if needed).

    ``metadata`` (for example the training corpus and seed) goes into ``training_args.json`` beside them.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # in the merges form that tokenizers 0.19 (transformers 4.x) reads as well as 0.20+
    (out / "tokenizer.json").write_text(
        json.dumps(portable_tokenizer_json(json.loads(tok.to_str())), indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8")
    tok.model.save(str(out), None)  # vocab.json + merges.txt, for slow-tokenizer users
    config = {
        "tokenizer_class": "RobertaTokenizer",
        "model_max_length": model_max_length,
        "bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
        "cls_token": "<s>", "sep_token": "</s>",
        "mask_token": {"content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False,
                       "single_word": False, "special": True},
        "add_prefix_space": False, "trim_offsets": True, "errors": "replace",
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    specials = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                "cls_token": "<s>", "sep_token": "</s>", "mask_token": config["mask_token"]}
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    if metadata is not None:
        (out / "training_args.json").write_text(json.dumps(dict(metadata), indent=2, ensure_ascii=False) + "\n")
    return out


def load(path: str | os.PathLike) -> Tokenizer:
    """Loads ``path/tokenizer.json`` (or a ``tokenizer.json`` file; ``gs://`` and other ``tf.io.gfile`` URLs
    work) and checks the special-token ids."""
    path = str(path)
    if "://" in path:
        import tensorflow as tf

        file = path if path.endswith(".json") else f"{path.rstrip('/')}/tokenizer.json"
        try:
            if not tf.io.gfile.exists(file):
                raise TokenizerError(f"{file}: no tokenizer.json (train one with `python -m launch.train_tokenizer`)")
            with tf.io.gfile.GFile(file, "r") as f:
                tok = Tokenizer.from_str(f.read())
        except tf.errors.OpError as err:  # an unreachable or forbidden bucket: say which file, in one line
            raise TokenizerError(f"{file}: cannot be read ({err.message.splitlines()[0]})") from None
    else:
        p = pathlib.Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.exists():
            raise TokenizerError(f"{file}: no tokenizer.json (train one with `python -m launch.train_tokenizer`)")
        tok = Tokenizer.from_file(str(file))
    for i, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != i:
            raise TokenizerError(f"{file}: special token {token} has id {tok.token_to_id(token)}, expected {i}")
    return tok


def load_for_encoding(path: str | os.PathLike) -> Tokenizer:
    """``load(path)`` set up for raw encoding: no post-processor (no ``<s>``/``</s>`` added), no truncation,
    no padding. The input pipeline frames, cuts and pads ids itself."""
    tok = load(path)
    tok.post_processor = None
    tok.no_truncation()
    tok.no_padding()
    return tok


def word_start_table(tok: Tokenizer) -> np.ndarray:
    """Boolean [vocab_size]: True where a token begins a word (its text starts with ``Ġ``).

    The special tokens are marked True too, so the token after ``<s>`` (first word of a document, which has
    no leading space) is found as a word start by looking at the previous token being special.
    """
    vocab = tok.get_vocab()
    table = np.zeros(max(vocab.values()) + 1, bool)
    for token, i in vocab.items():
        table[i] = token.startswith(WORD_START_MARKER) or token in SPECIAL_TOKENS
    return table


def train_and_save(corpora: Mapping[str, Sequence[str]], out_dir: str | os.PathLike, *,
                   vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2, balance: str = "downsample",
                   max_chars_per_language: int | None = None, seed: int = 0,
                   model_max_length: int = DEFAULT_MODEL_MAX_LENGTH, show_progress: bool = True,
                   streaming: bool = False) -> pathlib.Path:
    """Balances the corpus, trains, and saves. Returns the output directory.

    ``streaming=True`` uses ``stream_balanced`` (two passes over the files, constant memory apart from the
    BPE word counts; ``balance`` must be ``"downsample"``); otherwise the lines are read into memory and
    sampled exactly (``balanced_sample``), which suits corpora up to a few GB.
    """
    if streaming:
        if balance != "downsample":
            raise TokenizerError("streaming supports balance='downsample' only")
        chars: dict[str, int] = {}
        texts = stream_balanced(corpora, max_chars_per_language=max_chars_per_language, seed=seed, stats=chars)
        tok = train_bpe(texts, vocab_size, min_frequency=min_frequency, show_progress=show_progress)
    else:
        sample = balanced_sample(corpora, balance=balance, max_chars_per_language=max_chars_per_language,
                                 seed=seed)
        rng = np.random.default_rng(seed + 1)
        lines = [t for lang in sorted(sample) for t in sample[lang]]
        lines = [lines[i] for i in rng.permutation(len(lines))]
        tok = train_bpe(lines, vocab_size, min_frequency=min_frequency, show_progress=show_progress,
                        length=len(lines))
        chars = {k: sum(map(len, v)) for k, v in sample.items()}
    if tok.get_vocab_size() < vocab_size:
        log.warning("the corpus supports only %d of the %d requested tokens (no pair left with frequency >= %d); "
                    "the model's vocab_size may stay larger (unused rows), or train on more text",
                    tok.get_vocab_size(), vocab_size, min_frequency)
    meta = {"corpora": {k: list(v) for k, v in corpora.items()}, "vocab_size": vocab_size,
            "actual_vocab_size": tok.get_vocab_size(), "min_frequency": min_frequency, "balance": balance,
            "max_chars_per_language": max_chars_per_language, "seed": seed, "streaming": streaming,
            "chars_per_language": chars}
    return save(tok, out_dir, model_max_length=model_max_length, metadata=meta)
