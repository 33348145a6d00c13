"""Registering tasks and mixtures: one function per source kind, usable from Python or gin.

A task is a ``seqio.Task`` whose output features say its type (``tasks.preprocessors.task_type_of``): ``mlm``,
``pairs``, ``retrieval`` or ``sts``. Templates for user data (gin, see ``gin/datasets/user_data.gin``)::

    register_pairs_task.name = "pairs_de_custom"
    register_pairs_task.files = ["gs://bucket/pairs/*.tsv"]      # TSV with header, or JSONL
    register_pairs_task.tokenizer = "/path/to/tokenizer"

Mixtures live in ``tasks.mixtures``; ``tasks.run_data.register_data`` (the gin entry point for a run's data)
calls these functions through gin. ``num_examples`` (rows of the train split) feeds size-proportional
mixture rates; when not given it is counted once by reading the files.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import gin
import seqio

from tasks import preprocessors as pp
from tasks.sources import BeirSource, FileSource, RowParser
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


def _file_task(kind: str, task_type: str, name: str, files, tokenizer, on_error: str,
               num_examples: int | None, **parser_kwargs) -> seqio.Task:
    splits = files if isinstance(files, Mapping) else {"train": files}
    counts = {"train": num_examples} if num_examples is not None else None
    source = CountingFileSource(splits, RowParser(kind, **parser_kwargs), on_error=on_error, num_examples=counts)
    return register_task(name, task_type, source, tokenizer)


@gin.configurable
def register_text_task(name: str = gin.REQUIRED, files=gin.REQUIRED, tokenizer=gin.REQUIRED, *,
                       on_error: str = "raise", num_examples: int | None = None, file_format: str | None = None,
                       columns: Mapping | None = None) -> seqio.Task:
    """MLM task over plain text (one document per line), or TSV/JSONL with a ``text`` column/key."""
    return _file_task("text", "mlm", name, files, tokenizer, on_error, num_examples, file_format=file_format,
                      columns=columns)


@gin.configurable
def register_pairs_task(name: str = gin.REQUIRED, files=gin.REQUIRED, tokenizer=gin.REQUIRED, *,
                        on_error: str = "raise", num_examples: int | None = None, file_format: str | None = None,
                        columns: Mapping | None = None, header: bool = True) -> seqio.Task:
    """(query, passage) pairs from TSV (first two columns by default) or JSONL (``query``/``passage``)."""
    return _file_task("pairs", "pairs", name, files, tokenizer, on_error, num_examples, file_format=file_format,
                      columns=columns, header=header)


@gin.configurable
def register_retrieval_task(name: str = gin.REQUIRED, files=gin.REQUIRED, tokenizer=gin.REQUIRED, *,
                            num_negatives: int = gin.REQUIRED, on_error: str = "raise",
                            num_examples: int | None = None, file_format: str | None = None,
                            columns: Mapping | None = None, header: bool = True) -> seqio.Task:
    """(query, positive, m hard negatives) from TSV ``query\\tpositive\\tneg_1..`` or JSONL."""
    return _file_task("retrieval", "retrieval", name, files, tokenizer, on_error, num_examples,
                      file_format=file_format, columns=columns, header=header, num_negatives=num_negatives)


@gin.configurable
def register_sts_task(name: str = gin.REQUIRED, files=gin.REQUIRED, tokenizer=gin.REQUIRED, *,
                      on_error: str = "raise", num_examples: int | None = None, file_format: str | None = None,
                      columns: Mapping | None = None, header: bool = True,
                      score_range: tuple[float, float] | None = (0.0, 5.0)) -> seqio.Task:
    """(a, b, score) from TSV ``sentence1\\tsentence2\\tscore`` or JSONL."""
    return _file_task("sts", "sts", name, files, tokenizer, on_error, num_examples, file_format=file_format,
                      columns=columns, header=header, score_range=score_range)


@gin.configurable
def register_beir_task(name: str = gin.REQUIRED, corpus: str = gin.REQUIRED, queries: str = gin.REQUIRED,
                       qrels: str = gin.REQUIRED, tokenizer=gin.REQUIRED, *, hard_negatives: str | None = None,
                       num_negatives: int | None = None, include_title: bool = True,
                       on_error: str = "raise") -> seqio.Task:
    """A BEIR-layout set (train qrels) as a ``pairs`` task, or a ``retrieval`` task with ``hard_negatives``."""
    files = {"corpus": corpus, "queries": queries, "qrels": qrels}
    if hard_negatives:
        files["hard_negatives"] = hard_negatives
    source = BeirSource({"train": files}, include_title=include_title, num_negatives=num_negatives,
                        on_error=on_error)
    return register_task(name, source.kind, source, tokenizer)


@gin.configurable
def register_tfds_task(name: str = gin.REQUIRED, task_type: str = gin.REQUIRED, tfds_name: str = gin.REQUIRED,
                       tokenizer=gin.REQUIRED, *, feature_map: Mapping[str, str] = gin.REQUIRED,
                       tfds_data_dir: str | None = None, splits=None) -> seqio.Task:
    """A task over a TFDS dataset (``seqio.TfdsDataSource``); ``feature_map`` renames its features to ours,
    e.g. ``{"sentence1": "a", "sentence2": "b", "label": "score"}`` for an STS set."""
    import functools

    source = seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, splits=splits)
    extra = [functools.partial(pp.rename, mapping=dict(feature_map))]
    if task_type == "sts":
        extra.append(pp.cast_score)
    return register_task(name, task_type, source, tokenizer, extra_preprocessors=extra)

