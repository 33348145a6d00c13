"""Registering tasks and mixtures: one function per source kind, usable from Python or gin.

A task is a ``seqio.Task`` whose output features say its type (``tasks.preprocessors.task_type_of``): ``mlm``,
``pairs``, ``retrieval`` or ``sts``. Templates for user data (gin, see ``gin/datasets/user_data.gin``)::

    register_pairs_task.name = "pairs_de_custom"
    register_pairs_task.files = ["gs://bucket/pairs/*.tsv"]      # TSV with header, or JSONL
    register_pairs_task.tokenizer = "/path/to/tokenizer"

Files may be TSV / JSONL / text, parquet or Arrow (a ``datasets.Dataset.save_to_disk`` directory stands for
its files), or ArrayRecord (``launch.prepare_data``), local or ``gs://`` (``tasks.records``).
``register_tfds_task`` reads a TFDS dataset already prepared in ``tfds_data_dir`` (by index when prepared
as ArrayRecord)::

    mlm_de_wiki/register_tfds_task.name = "mlm_de_wiki"
    mlm_de_wiki/register_tfds_task.task_type = "mlm"
    mlm_de_wiki/register_tfds_task.tfds_name = "wikipedia/20230601.de"
    mlm_de_wiki/register_tfds_task.tfds_data_dir = "gs://bucket/tfds"
    mlm_de_wiki/register_tfds_task.feature_map = {"text": "text"}

Registration (which happens before anything compiles) checks what it can without reading rows: every
split's file patterns match files of one kind, BEIR files exist, a TFDS name is known and prepared in its
data_dir and has the mapped features; else a ``bilingual.config.ConfigError`` naming the gin key (e.g.
``mlm_de/register_text_task.files``; called from Python outside gin: ``register_text_task(name='...')``)
and the path or name.

Mixtures live in ``tasks.mixtures``; ``tasks.run_data.register_data`` (the gin entry point for a run's data)
calls these functions through gin. ``num_examples`` (rows of the train split) feeds size-proportional
mixture rates; when not given it is counted once by reading the files.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import gin
import seqio
import tensorflow as tf

from bilingual.config import ConfigError
from tasks import preprocessors as pp
from tasks.row_parser import DEFAULT_JSON_KEYS
from tasks.sources import (BeirSource, FileSource, RowParser, TfdsNotPrepared, TfdsSource, UnknownTfdsName,
                           prepared_tfds_builder, task_kind)
from tasks.vocabulary import ByteLevelBPEVocabulary

log = logging.getLogger(__name__)
SHUFFLE_BUFFER = 10_000
_VOCABS: dict[str, ByteLevelBPEVocabulary] = {}


def vocabulary(tokenizer: str | ByteLevelBPEVocabulary) -> ByteLevelBPEVocabulary:
    """One shared vocabulary object per tokenizer path (tokenizer directories are loaded once)."""
    if isinstance(tokenizer, ByteLevelBPEVocabulary):
        return tokenizer
    return _VOCABS.setdefault(str(tokenizer), ByteLevelBPEVocabulary(tokenizer))


class CountingFileSource(FileSource):
    """A ``FileSource`` whose ``num_input_examples`` is given or, on first request, counted by reading."""

    def __init__(self, *args, num_examples: Mapping[str, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._counts = dict(num_examples or {})

    def num_input_examples(self, split: str) -> int:
        if split not in self._counts:
            self._counts[split] = len(self.records(split))
        return self._counts[split]


def register_task(name: str, task_type: str, source: seqio.DataSource, tokenizer, *,
                  extra_preprocessors: Sequence = (), replace: bool = True) -> seqio.Task:
    """Registers ``name`` (replacing a previous registration unless ``replace=False``).

    ``extra_preprocessors`` run before tokenisation (e.g. ``functools.partial(preprocessors.rename, ...)``
    for TFDS feature names).
    """
    if replace and name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name, source=source, output_features=pp.output_features(task_type, vocabulary(tokenizer)),
        preprocessors=[*extra_preprocessors, pp.tokenize], shuffle_buffer_size=SHUFFLE_BUFFER)


def gin_key(configurable: str, name: str) -> str:
    """How an error names the registration being made: its gin scope (``mlm_de/register_text_task``), the
    configurable when gin binds it unscoped, or ``register_text_task(name='...')`` when called from Python."""
    scope = gin.current_scope_str()
    if scope:
        return f"{scope}/{configurable}"
    try:
        gin.query_parameter(f"{configurable}.name")
        return configurable
    except ValueError:  # not bound in gin: a call from Python
        return f"{configurable}(name={name!r})"


def _file_task(configurable: str, kind: str, task_type: str, name: str, files, tokenizer, on_error: str,
               num_examples: int | None, **parser_kwargs) -> seqio.Task:
    key = gin_key(configurable, name)
    splits = files if isinstance(files, Mapping) else {"train": files}
    counts = {"train": num_examples} if num_examples is not None else None
    source = CountingFileSource(splits, RowParser(kind, **parser_kwargs), on_error=on_error, num_examples=counts)
    source.check_files(f"{key}.files", name)
    return register_task(name, task_type, source, tokenizer)


@gin.configurable
def register_text_task(name: str = gin.REQUIRED, files=gin.REQUIRED, tokenizer=gin.REQUIRED, *,
                       on_error: str = "raise", num_examples: int | None = None, file_format: str | None = None,
                       columns: Mapping | None = None) -> seqio.Task:
    """MLM task over plain text (one document per line), or TSV/JSONL with a ``text`` column/key."""
    return _file_task("register_text_task", "text", "mlm", name, files, tokenizer, on_error, num_examples,
                      file_format=file_format, columns=columns)


@gin.configurable
def register_pairs_task(name: str = gin.REQUIRED, files=gin.REQUIRED, tokenizer=gin.REQUIRED, *,
                        on_error: str = "raise", num_examples: int | None = None, file_format: str | None = None,
                        columns: Mapping | None = None, header: bool = True) -> seqio.Task:
    """(query, passage) pairs from TSV (first two columns by default) or JSONL (``query``/``passage``)."""
    return _file_task("register_pairs_task", "pairs", "pairs", name, files, tokenizer, on_error, num_examples,
                      file_format=file_format, columns=columns, header=header)


@gin.configurable
def register_retrieval_task(name: str = gin.REQUIRED, files=gin.REQUIRED, tokenizer=gin.REQUIRED, *,
                            num_negatives: int = gin.REQUIRED, on_error: str = "raise",
                            num_examples: int | None = None, file_format: str | None = None,
                            columns: Mapping | None = None, header: bool = True) -> seqio.Task:
    """(query, positive, m hard negatives) from TSV ``query\\tpositive\\tneg_1..`` or JSONL."""
    return _file_task("register_retrieval_task", "retrieval", "retrieval", name, files, tokenizer, on_error,
                      num_examples, file_format=file_format, columns=columns, header=header,
                      num_negatives=num_negatives)


@gin.configurable
def register_sts_task(name: str = gin.REQUIRED, files=gin.REQUIRED, tokenizer=gin.REQUIRED, *,
                      on_error: str = "raise", num_examples: int | None = None, file_format: str | None = None,
                      columns: Mapping | None = None, header: bool = True,
                      score_range: tuple[float, float] | None = (0.0, 5.0)) -> seqio.Task:
    """(a, b, score) from TSV ``sentence1\\tsentence2\\tscore`` or JSONL."""
    return _file_task("register_sts_task", "sts", "sts", name, files, tokenizer, on_error, num_examples,
                      file_format=file_format, columns=columns, header=header, score_range=score_range)


@gin.configurable
def register_beir_task(name: str = gin.REQUIRED, corpus: str = gin.REQUIRED, queries: str = gin.REQUIRED,
                       qrels: str = gin.REQUIRED, tokenizer=gin.REQUIRED, *, hard_negatives: str | None = None,
                       num_negatives: int | None = None, include_title: bool = True,
                       on_error: str = "raise") -> seqio.Task:
    """A BEIR-layout set (train qrels) as a ``pairs`` task, or a ``retrieval`` task with ``hard_negatives``."""
    files = {"corpus": corpus, "queries": queries, "qrels": qrels}
    if hard_negatives:
        files["hard_negatives"] = hard_negatives
    key = gin_key("register_beir_task", name)
    for field, path in files.items():
        try:
            found = tf.io.gfile.exists(path)
        except tf.errors.OpError as err:  # e.g. a bucket without access
            raise ConfigError(f"{key}.{field}: cannot read {path!r} ({err.message.splitlines()[0]})") from None
        if not found:
            raise ConfigError(f"{key}.{field}: no file {path!r} (task {name!r}, split 'train')")
    source = BeirSource({"train": files}, include_title=include_title, num_negatives=num_negatives,
                        on_error=on_error)
    return register_task(name, source.kind, source, tokenizer)


@gin.configurable
def register_tfds_task(name: str = gin.REQUIRED, task_type: str = gin.REQUIRED, tfds_name: str = gin.REQUIRED,
                       tokenizer=gin.REQUIRED, *, feature_map: Mapping[str, str] = gin.REQUIRED,
                       tfds_data_dir: str | None = None, splits=None) -> seqio.Task:
    """A task over a TFDS dataset prepared in ``tfds_data_dir`` (``tasks.sources.TfdsSource``: read by index
    when prepared as ArrayRecord, else read into memory once); ``feature_map`` renames its features to ours,
    e.g. ``{"sentence1": "a", "sentence2": "b", "label": "score"}`` for an STS set, ``{"text": "text"}`` for
    Wikipedia. ``splits``: our split -> TFDS split (``{"train": "train[:90%]"}``) or a list of split names.

    At registration, an unknown name, a dataset not prepared in ``tfds_data_dir`` (nothing is downloaded), a
    split it lacks or a ``feature_map`` naming features it lacks is a ``ConfigError`` naming the gin key."""
    import functools

    key = gin_key("register_tfds_task", name)
    try:
        builder = prepared_tfds_builder(tfds_name, tfds_data_dir)
    except UnknownTfdsName as err:
        raise ConfigError(f"{key}.tfds_name: {err}; data_dir {tfds_data_dir!r} (task {name!r})") from None
    except TfdsNotPrepared as err:
        raise ConfigError(f"{key}.tfds_data_dir: {err} (task {name!r})") from None
    kind = task_kind(task_type)
    if kind not in DEFAULT_JSON_KEYS:
        raise ConfigError(f"{key}.task_type: {task_type!r} is not one of mlm, pairs, retrieval, sts")
    features = sorted(builder.info.features.keys())
    missing = sorted(set(feature_map) - set(features))
    if missing:
        raise ConfigError(f"{key}.feature_map: {tfds_name!r} has no feature(s) {missing}; it has {features}")
    if set(feature_map.values()) != set(DEFAULT_JSON_KEYS[kind]):
        raise ConfigError(f"{key}.feature_map: maps to {sorted(set(feature_map.values()))}, a {task_type} task "
                          f"needs exactly {sorted(DEFAULT_JSON_KEYS[kind])}")
    for split, tfds_split in (splits.items() if isinstance(splits, Mapping) else ((s, s) for s in splits or ())):
        try:
            builder.info.splits[tfds_split]
        except (KeyError, ValueError) as err:
            raise ConfigError(f"{key}.splits: {tfds_name!r} has no split {tfds_split!r} for {split!r} "
                              f"({err}); it has {sorted(builder.info.splits)}") from None
    versioned = tfds_name if ":" in tfds_name else f"{tfds_name}:{builder.version}"  # seqio needs the version
    source = TfdsSource(versioned, tfds_data_dir, splits, feature_map=feature_map, kind=kind)
    extra = [functools.partial(pp.rename, mapping=dict(feature_map))]
    if task_type == "sts":
        extra.append(pp.cast_score)
    return register_task(name, task_type, source, tokenizer, extra_preprocessors=extra)
