"""Export and import of fine-tuned ``bilingual.heads`` models in the reference ``JinaBertFor*`` layouts.

    classification, regression   JinaBertForSequenceClassification  bert.* (+ bert.pooler.* with CLS pooling),
                                                                    classifier.{weight,bias}
    token_classification         JinaBertForTokenClassification     bert.*, classifier.{weight,bias}
    question_answering           JinaBertForQuestionAnswering       bert.*, qa_outputs.{weight,bias} [2, H]

For a sequence classifier the directory holds::

    config.json        the encoder's JinaBERT fields (hf_config) plus architectures
                       ["JinaBertForSequenceClassification"], num_labels, id2label / label2id, problem_type
                       ("single_label_classification" or "regression"), classifier_pooling ("cls" / "mean"),
                       classifier_dropout, and auto_map with AutoModelForSequenceClassification
    model.safetensors  bert.* (the encoder export's names, prefixed), bert.pooler.dense.* with CLS pooling,
                       classifier.weight [num_labels, H], classifier.bias [num_labels]
    configuration_bert.py, modeling_bert.py   the shipped PyTorch code (auto_map="local")
    tokenizer files, README.md

and loads offline with ``transformers.AutoModelForSequenceClassification.from_pretrained(dir,
trust_remote_code=True)`` (and so with ``sentence_transformers.CrossEncoder``, for pair classifiers).
``classifier_pooling`` is the shipped code's key; the reference code has no such key and always pools with
the CLS pooler, so ``auto_map="upstream"`` is accepted for CLS pooling only (and not for the token and QA
heads, whose published classes this project has not checked). The token and QA exports are the same without
``problem_type``/``classifier_pooling`` and with their own ``architectures`` and ``AutoModelFor*`` entry.
Host-side (numpy), no torch.
"""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bilingual import hf_layout
from bilingual.config import ConfigError, EncoderConfig
from bilingual.export import hf_config, hf_state
from bilingual.export.hf_export import ExportError, write_model_dir
from bilingual.export.hf_import import (_IGNORED_SUFFIXES, HFImportError, _layout_from_names, read_tensors)
from bilingual.heads import HeadConfig, encoder_config_for_head, model_for_head

ARCHITECTURE = "JinaBertForSequenceClassification"
ARCHITECTURES = {"classification": ARCHITECTURE, "regression": ARCHITECTURE,
                 "token_classification": "JinaBertForTokenClassification",
                 "question_answering": "JinaBertForQuestionAnswering"}
AUTO_CLASSES = {ARCHITECTURE: "AutoModelForSequenceClassification",
                "JinaBertForTokenClassification": "AutoModelForTokenClassification",
                "JinaBertForQuestionAnswering": "AutoModelForQuestionAnswering"}
PROBLEM_TYPES = {"classification": "single_label_classification", "regression": "regression"}


def head_reference_shapes(config: EncoderConfig, head: HeadConfig) -> dict[str, tuple[int, ...]]:
    """``{name: PyTorch shape}`` of every parameter of the Flax head model (``bert.*``, ``classifier.*`` or
    ``qa_outputs.*``).

    Traced abstractly from ``heads.model_for_head``, so every parameter the model has is accounted for.
    """
    ids = jnp.zeros((1, 2), jnp.int32)
    model = model_for_head(config, head)
    shapes = flax.linen.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids)["params"]))
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        shape = tuple(leaf.shape)
        out[hf_layout.flax_path_to_name(path)] = shape[::-1] if path[-1] == "kernel" else shape
    return out


def _label_names(head: HeadConfig, labels: Optional[Sequence[str]]) -> list[str]:
    if head.task == "question_answering":
        if labels is not None:
            raise ExportError("labels: a question-answering head has no label names (its outputs are start, end)")
        return ["LABEL_0", "LABEL_1"]  # transformers' defaults for the two outputs
    if labels is None:
        return [f"LABEL_{i}" for i in range(head.num_labels)]
    labels = [str(label) for label in labels]
    if len(labels) != head.num_labels:
        raise ExportError(f"labels has {len(labels)} names but HeadConfig.num_labels={head.num_labels}")
    if len(set(labels)) != len(labels):
        raise ExportError(f"labels must be distinct (label2id maps names to ids), got {labels}")
    return labels


def classifier_hf_config(config: EncoderConfig, head: HeadConfig, labels: Sequence[str], *, dtype: str,
                         auto_map_kind: str) -> dict:
    """The ``config.json`` dict of a head export (``labels``: one name per output)."""
    architecture = ARCHITECTURES[head.task]
    if auto_map_kind == "upstream" and head.task not in PROBLEM_TYPES:
        raise ExportError(
            f"auto_map='upstream' is not offered for HeadConfig.task={head.task!r}: this project has checked only "
            f"the published {ARCHITECTURE} against its heads. Export with auto_map='local' (the shipped code "
            f"has {architecture})")
    if auto_map_kind == "upstream" and head.pooling != "cls":
        raise ExportError(
            "auto_map='upstream' cannot describe a mean-pooling classifier: the published "
            f"{ARCHITECTURE} always classifies the CLS pooler output. Export with auto_map='local' (the shipped "
            "code reads classifier_pooling) or fine-tune with HeadConfig.pooling='cls'")
    try:
        values = hf_config.to_hf_config(encoder_config_for_head(config, head), masked_lm=False, dtype=dtype,
                                        auto_map_kind=auto_map_kind)
    except ValueError as err:
        raise ExportError(str(err)) from err
    values["architectures"] = [architecture]
    auto_class = AUTO_CLASSES[architecture]
    if auto_class not in values["auto_map"]:
        values["auto_map"][auto_class] = f"modeling_bert.{architecture}"  # local only (upstream refused above)
    values.update({
        "num_labels": len(labels),
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "classifier_dropout": head.dropout,
    })
    if head.task in PROBLEM_TYPES:
        values["problem_type"] = PROBLEM_TYPES[head.task]
        values["classifier_pooling"] = head.pooling
    return values


def _model_card(config: EncoderConfig, head: HeadConfig, labels: Sequence[str], name: str, dtype: str) -> str:
    pooled = ("the BERT tanh pooler on the first token" if head.pooling == "cls"
              else "the masked mean of the last hidden states")
    if head.task == "regression":
        what = f"a regression head (one score per input, e.g. STS-B similarity of a sentence pair) on {pooled}"
    elif head.task == "classification":
        what = f"a classification head over {head.num_labels} labels ({', '.join(labels)}) on {pooled}"
    elif head.task == "token_classification":
        what = f"a token-classification head over {head.num_labels} labels ({', '.join(labels)})"
    else:
        what = "an extractive question-answering head (start and end logits per token)"
    pipeline = {"classification": "text-classification", "regression": "text-classification",
                "token_classification": "token-classification", "question_answering": "question-answering"}[head.task]
    auto_class = AUTO_CLASSES[ARCHITECTURES[head.task]]
    return f"""---
pipeline_tag: {pipeline}
tags:
- jina-bert
- {pipeline}
---

# {name}

A JinaBERT encoder ({config.num_layers} layers, hidden size {config.hidden_size}, inputs up to
{config.max_length} tokens) fine-tuned with the `bilingual` JAX/Flax code base, with {what}.
Weights are stored as {dtype}. Loading needs `trust_remote_code=True`.

Sentence pairs (and question-context pairs) are packed into one sequence (`tokenizer(first, second)`).

```python
from transformers import {auto_class}, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")
model = {auto_class}.from_pretrained("path/to/this/directory", trust_remote_code=True)
inputs = tokenizer(["Wie ist das Wetter heute?"], ["How is the weather today?"], return_tensors="pt", padding=True)
outputs = model(**inputs)
```
"""


def export_classifier(config: EncoderConfig, head: HeadConfig, params, out_dir, *, tokenizer_dir,
                      labels: Optional[Sequence[str]] = None, dtype: str = "float32", auto_map: str = "local",
                      model_name: Optional[str] = None, overwrite: bool = False) -> pathlib.Path:
    """Write a fine-tuned head model (``params`` of ``heads.model_for_head(config, head)``:
    ``{"bert": ..., "classifier" | "qa_outputs": ...}``, numpy or jax arrays) to ``out_dir``, as
    ``ARCHITECTURES[head.task]`` (any of the four head tasks).

    Args:
      labels: one name per output (``id2label``); default ``LABEL_0 .. LABEL_{n-1}``; none for QA.
      dtype, auto_map, model_name, overwrite: as ``hf_export.export_hf``; ``auto_map="upstream"`` only for a
        sequence classifier with CLS pooling (the published code has no mean-pooling classifier).
    Written to a staging directory and renamed into place, so a failed export leaves nothing behind.
    Raises ``ExportError`` / ``StateDictMismatch`` naming what is wrong.
    """
    if dtype not in hf_config.EXPORT_DTYPES:
        raise ExportError(f"dtype must be one of {hf_config.EXPORT_DTYPES}, got {dtype!r}")
    if auto_map not in hf_config.AUTO_MAP_KINDS:
        raise ExportError(f"auto_map must be one of {hf_config.AUTO_MAP_KINDS}, got {auto_map!r}")
    names = _label_names(head, labels)
    values = classifier_hf_config(config, head, names, dtype=dtype, auto_map_kind=auto_map)
    tensors = hf_layout.to_state_dict(params)
    hf_state.check_names_and_shapes(tensors, head_reference_shapes(config, head), "export_classifier parameters")

    out_dir = pathlib.Path(out_dir).absolute()
    card = _model_card(config, head, names, model_name or out_dir.name, dtype)
    write_model_dir(out_dir, overwrite=overwrite, tensors=tensors, dtype=dtype, config_values=values,
                    auto_map=auto_map, tokenizer_dir=tokenizer_dir, vocab_size=config.vocab_size,
                    extra=lambda staging: (staging / "README.md").write_text(card))
    return out_dir


def _head_from_hf_config(values: dict, config: EncoderConfig, architecture: str,
                         source: str) -> tuple[HeadConfig, list[str]]:
    id2label = values.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            order = sorted(id2label, key=int)
        except ValueError as err:
            raise HFImportError(f"{source}: id2label keys must be integers, got {sorted(id2label)}") from err
        if [int(k) for k in order] != list(range(len(order))):
            raise HFImportError(f"{source}: id2label ids must be 0..n-1, got {order}")
        labels = [str(id2label[k]) for k in order]
    else:
        labels = [f"LABEL_{i}" for i in range(int(values.get("num_labels", 2)))]
    if "num_labels" in values and int(values["num_labels"]) != len(labels):
        raise HFImportError(f"{source}: num_labels={values['num_labels']} but id2label has {len(labels)} entries")
    if architecture == ARCHITECTURE:
        problem = values.get("problem_type") or ("regression" if len(labels) == 1 else "single_label_classification")
        tasks = {p: t for t, p in PROBLEM_TYPES.items()}
        if problem not in tasks:
            raise HFImportError(f"{source}: problem_type {problem!r} is not supported (bilingual heads do "
                                f"{tuple(tasks)})")
        task = tasks[problem]
    else:
        task = next(t for t, a in ARCHITECTURES.items() if a == architecture)
    if task == "question_answering":
        if len(labels) != 2:
            raise HFImportError(f"{source}: a question-answering model has 2 outputs (start, end), num_labels is "
                                f"{len(labels)}")
        labels = []
    dropout = values.get("classifier_dropout")
    try:
        head = HeadConfig(task=task, num_labels=len(labels) or 2,
                          pooling=values.get("classifier_pooling") or "cls",
                          dropout=float(config.hidden_dropout if dropout is None else dropout))
    except ConfigError as err:
        raise HFImportError(f"{source}: {err}") from err
    return head, labels


def import_classifier(directory) -> tuple[EncoderConfig, HeadConfig, dict, list[str]]:
    """``(encoder config, head config, params, labels)`` from a ``JinaBertForSequenceClassification``,
    ``JinaBertForTokenClassification`` or ``JinaBertForQuestionAnswering`` directory (ours, or one written by
    the reference code: no ``classifier_pooling`` key means CLS pooling). ``labels`` is ``[]`` for QA.

    ``params`` is ``{"bert": ..., "classifier" | "qa_outputs": ...}`` as float32 numpy, ready for
    ``heads.model_for_head(config, head).apply``. Every tensor must be consumed and every parameter filled
    (``StateDictMismatch`` lists the differences), e.g. a CLS classifier without ``bert.pooler.dense.*``.
    ``HeadConfig.pooling`` of a token or QA head comes back as the default (those heads do not pool).
    """
    directory = pathlib.Path(directory)
    source_config = str(directory / "config.json")
    values = hf_config.read_hf_config(directory)
    architectures = values.get("architectures") or []
    known = [a for a in architectures if a in AUTO_CLASSES]
    if len(known) != 1:
        raise HFImportError(f"{source_config}: architectures is {architectures}, not one of "
                            f"{sorted(AUTO_CLASSES)}; for an encoder or masked-LM export use "
                            "bilingual.export.hf_import.import_hf")
    config = hf_config.from_hf_config(values, source_config)
    head, labels = _head_from_hf_config(values, config, known[0], source_config)
    tensors, source = read_tensors(directory)
    for name in [n for n in tensors if n.endswith(_IGNORED_SUFFIXES)]:
        del tensors[name]
    layout = _layout_from_names(tensors, hf_config.stated_layer_layout(values, source_config), source)
    config = config.replace(
        layer_layout=hf_config.FLAX_LAYOUT_OF[layout],
        qk_layernorm=(config.qk_layernorm or layout == hf_config.QK_POST_NORM_LAYOUT
                      or any(".attention.self.layer_norm_q." in n for n in tensors)),
        add_pooler=False)  # the head decides (heads.encoder_config_for_head)
    hf_state.check_names_and_shapes(tensors, head_reference_shapes(config, head), source)
    bad = sorted(n for n, v in tensors.items() if not np.all(np.isfinite(np.asarray(v, np.float32))))
    if bad:
        raise HFImportError(f"{source}: non-finite values (nan/inf) in {', '.join(bad)}")
    params = hf_layout.from_state_dict({n: np.asarray(v, np.float32) for n, v in tensors.items()})
    return config, head, params, labels
