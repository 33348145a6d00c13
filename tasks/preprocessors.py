"""tf.data preprocessors and output features of the four task types (run per example, on the host CPU).

After these, an example holds int32 token ids (and a float32 ``score`` for STS):

* mlm: ``text`` [n] -- the document's ids, *without* ``<s>``/``</s>`` and untruncated; the batcher cuts long
  documents into pieces, frames each piece ``<s> ... </s>``, packs them into rows and masks them
  (``tasks.mlm``).
* pairs: ``query`` [<= Lq], ``passage`` [<= Lp], each ``<s> ... </s>`` and truncated to the configured length
  (the ``</s>`` is kept: the text is cut, not the frame).
* retrieval: as pairs plus ``negatives`` [m, (<= Ln)] (ragged).
* sts: ``a``, ``b`` framed and truncated like pairs, ``score`` float32 scalar.

``sequence_length`` keys: ``query``, ``passage``, ``negatives``, ``a``, ``b`` (and ``text`` for MLM, used by
the batcher as the packed row length). ``DEFAULT_SEQUENCE_LENGTHS`` fills any key left out.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from tasks import tf_setup  # noqa: F401  (TensorFlow on the CPU only)

from bilingual import task_types

DEFAULT_SEQUENCE_LENGTHS = {"text": 512, "query": 128, "passage": 512, "negatives": 512, "a": 128, "b": 128}


def output_features(task_type: str, vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """The seqio features of a task type; the keys also identify the type (``task_type_of``)."""
    ids = lambda rank=1: seqio.Feature(vocabulary, add_eos=False, required=True, dtype=tf.int32, rank=rank)  # noqa: E731
    spec = task_types.get(task_type)
    features = {name: ids(2 if name == "negatives" else 1) for name in spec.sides}
    for name in spec.scalars:  # per-row values (STS score) in the dtype of the table
        features[name] = seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, required=True,
                                       dtype=tf.as_dtype(spec.arrays[name][1]), rank=0)
    return features


def task_type_of(features: Mapping[str, seqio.Feature]) -> str:
    """Inverse of ``output_features``: the task type from a task's feature names."""
    keys = set(features)
    for task_type, spec in task_types.TASK_TYPES.items():
        expected = set(spec.sides) | set(spec.scalars)
        if keys == expected:
            return task_type
    raise ValueError(f"features {sorted(keys)} match no task type {tuple(task_types.TASK_TYPES)}")


def sequence_lengths_with_defaults(sequence_length: Mapping[str, int] | None) -> dict[str, int]:
    lengths = dict(DEFAULT_SEQUENCE_LENGTHS)
    for key, value in (sequence_length or {}).items():
        if key not in lengths:
            raise ValueError(f"unknown sequence_lengths key {key!r}; known: {sorted(lengths)}")
        if not isinstance(value, int) or value < 3:
            raise ValueError(f"sequence_lengths[{key!r}] must be an int >= 3 (<s>, a token, </s>), got {value!r}")
        lengths[key] = value
    return lengths


def _frame(ids, length: int, bos: int, eos: int):
    """``<s> ids[:length-2] </s>`` for a 1-D tensor or each row of a 2-D ragged tensor."""
    if isinstance(ids, tf.RaggedTensor):
        ids = ids[:, : length - 2]
        rows = ids.nrows()
        col = lambda v: tf.RaggedTensor.from_tensor(tf.fill([rows, 1], tf.constant(v, ids.dtype)))  # noqa: E731
        return tf.concat([col(bos), ids, col(eos)], axis=1)
    ids = ids[: length - 2]
    return tf.concat([[bos], ids, [eos]], axis=0)


def tokenize(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
             sequence_length: Mapping[str, int] | None = None, batch_size: int = 256) -> tf.data.Dataset:
    """Tokenises every text feature; frames and truncates all but MLM's ``text`` (see the module doc).

    Examples are tokenised ``batch_size`` at a time (one call into the Rust tokenizer per batch, which is
    several times faster than one per example) and unbatched again; order and content are unchanged.
    """
    lengths = sequence_lengths_with_defaults(sequence_length)

    @tf.autograph.experimental.do_not_convert  # no tensor-dependent Python control flow; tracing is faster
    def fn(batch):
        out = dict(batch)
        for name, feature in output_features.items():
            if feature.dtype != tf.int32:
                continue
            vocab = feature.vocabulary
            texts = batch[name]
            if feature.rank == 2 and not isinstance(texts, tf.RaggedTensor):
                texts = tf.RaggedTensor.from_tensor(texts)  # negatives of a statically known count
            nested = feature.rank == 2  # negatives: [b, (m)] strings
            flat = texts.flat_values if nested else texts
            ids = vocab.encode_tf(flat)
            ids = tf.RaggedTensor.from_row_lengths(tf.cast(ids.flat_values, tf.int32), ids.row_lengths())
            if name != "text":
                ids = _frame(ids, lengths[name], vocab.bos_id, vocab.eos_id)
            out[name] = tf.RaggedTensor.from_row_lengths(ids, texts.row_lengths()) if nested else ids
        return out

    batched = dataset.ragged_batch(batch_size).map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return batched.unbatch()


def rename(dataset: tf.data.Dataset, mapping: Mapping[str, str]) -> tf.data.Dataset:
    """Renames features (``{old: new}``) and drops the others: for TFDS or user datasets whose feature names
    differ from ours, e.g. ``{"sentence1": "a", "sentence2": "b", "label": "score"}``."""
    mapping = dict(mapping)

    def fn(example):
        missing = set(mapping) - set(example)
        if missing:
            raise KeyError(f"rename: features {sorted(missing)} not in {sorted(example)}")
        return {new: example[old] for old, new in mapping.items()}

    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def cast_score(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """STS ``score`` to float32 (TFDS sets often store it as float64 or int)."""
    return dataset.map(lambda ex: {**ex, "score": tf.cast(ex["score"], tf.float32)},
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
