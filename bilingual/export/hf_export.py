"""Write a bilingual encoder as a Hugging Face model directory in the public JinaBERT layout.

The directory holds::

    config.json                     published JinaBERT fields, auto_map to the code below (or upstream)
    model.safetensors               reference names and PyTorch shapes, float32 / float16 / bfloat16
                                    (jina-bert-implementation or jina-bert-v2-qk-post-norm names)
    configuration_bert.py           the project's PyTorch JinaBERT (auto_map="local" only)
    modeling_bert.py
    tokenizer.json, ...             copied from the tokenizer directory given, in the form tokenizers 0.19+
                                    and transformers 4.40+ / 5.x all read (``_make_tokenizer_portable``)
    modules.json                    sentence-transformers: Transformer -> mean Pooling -> Normalize
    sentence_bert_config.json, 1_Pooling/config.json, 2_Normalize/, config_sentence_transformers.json
    README.md                       a short model card

and loads offline with ``transformers.AutoModel.from_pretrained(dir, trust_remote_code=True)`` and
``sentence_transformers.SentenceTransformer(dir, trust_remote_code=True)``. Runs on the host (numpy); no
torch needed to export.

A Matryoshka model (``matryoshka_dims``) records its nested sizes in config.json (``matryoshka_dimensions``,
descending) and in the model card, with the ``SentenceTransformer(dir, truncate_dim=d)`` usage. The
sentence-transformers files are the same as without: sentence-transformers has no field for a list of nested
sizes (its ``config_sentence_transformers.json`` ``truncate_dim`` would truncate every load by default, so it
is not written). Its ``Normalize`` module runs before ``truncate_dim`` cuts the vector, so a cut embedding is
re-normalised with ``encode(..., normalize_embeddings=True)`` (cosine similarity is the same either way).
Without ``matryoshka_dims`` every file is exactly what it was before the option existed.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import warnings
from typing import Optional, Sequence

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from bilingual.config import EncoderConfig
from bilingual.export import hf_config, hf_state

HF_CODE_DIR = pathlib.Path(__file__).parent / "hf_code"
CODE_FILES = ("configuration_bert.py", "modeling_bert.py")
# Files the export writes itself; a tokenizer directory's copies of these are not taken.
_OWN_FILES = {"config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "README.md",
              *CODE_FILES}
_TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json")
# Every name an export may write in its directory; an export replaces these and nothing else.
OWNED_NAMES = frozenset({*_OWN_FILES, "1_Pooling", "2_Normalize", *_TOKENIZER_MARKERS, "special_tokens_map.json",
                         "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model",
                         "sentencepiece.bpe.model", "spiece.model",
                         "onnx"})  # onnx/: written by onnx_export from these weights; stale once they change
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


class ExportError(ValueError):
    """Bad export input (tokenizer, parameters, options); the message names what is wrong."""


def _tokenizer_files(tokenizer_dir: pathlib.Path, vocab_size: int) -> list[pathlib.Path]:
    """The files to copy from ``tokenizer_dir``, after checking it is a tokenizer that fits the model."""
    if not tokenizer_dir.is_dir():
        raise ExportError(f"tokenizer directory {tokenizer_dir} does not exist")
    if not any((tokenizer_dir / name).is_file() for name in _TOKENIZER_MARKERS):
        raise ExportError(f"{tokenizer_dir} has neither tokenizer.json nor tokenizer_config.json: not a "
                          "Hugging Face tokenizer directory (save one with tokenizer.save_pretrained(dir))")
    tokenizer_json = tokenizer_dir / "tokenizer.json"
    if tokenizer_json.is_file():
        from tokenizers import Tokenizer

        size = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size(with_added_tokens=True)
        if size > vocab_size:
            raise ExportError(f"{tokenizer_json} has {size} tokens but the model's vocab_size is {vocab_size}: "
                              "ids beyond the embedding table would fail at run time")
    return [path for path in sorted(tokenizer_dir.iterdir())
            if path.is_file() and path.name not in _OWN_FILES and not path.name.endswith(".safetensors")]


def _check_output(out_dir: pathlib.Path, owned: set[str], overwrite: bool) -> None:
    """Refuses a non-directory ``out_dir``, and one holding any of ``owned`` unless ``overwrite``."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} exists and is not a directory")
    present = sorted(name for name in owned if os.path.lexists(out_dir / name))
    if present and not overwrite:
        raise ExportError(f"output directory {out_dir} already holds files an export writes ({', '.join(present)}); "
                          "choose a new one or pass overwrite=True (--overwrite) to replace them (other files "
                          "there are kept)")


def _install(staging: pathlib.Path, out_dir: pathlib.Path, owned: set[str]) -> None:
    """Move everything in ``staging`` into ``out_dir``, first setting aside whatever of ``owned`` (and of the
    new names) is there; an error midway puts the old files back. Nothing else in ``out_dir`` is touched."""
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    new = sorted(p.name for p in staging.iterdir())
    old = sorted(name for name in owned | set(new) if os.path.lexists(out_dir / name))
    aside = staging / f".replaced-{os.getpid()}"  # inside staging: removed with it
    aside.mkdir()
    try:
        for name in old:
            os.rename(out_dir / name, aside / name)
        for name in new:
            os.rename(staging / name, out_dir / name)
    except BaseException:
        for name in new:
            if not os.path.lexists(staging / name) and os.path.lexists(out_dir / name):
                os.rename(out_dir / name, staging / name)
        for name in old:
            if os.path.lexists(aside / name):
                os.rename(aside / name, out_dir / name)
        raise
    shutil.rmtree(staging)


def write_model_dir(out_dir: pathlib.Path, *, overwrite: bool, tensors: dict, dtype: str, config_values: dict,
                    auto_map: str, tokenizer_dir, vocab_size: int, extra=None) -> None:
    """Write ``model.safetensors`` (``tensors`` cast to ``dtype``), ``config.json``, the shipped code
    (``auto_map="local"``) and the tokenizer files into a staging directory beside ``out_dir``, call
    ``extra(staging)`` for the caller's own files, then move them into ``out_dir``.

    The export owns the files it writes plus every name in ``OWNED_NAMES`` (so an earlier export's files that
    this one does not write, e.g. the shipped code after ``auto_map="upstream"``, are not left stale); nothing
    else in ``out_dir`` (a cloned repository's ``.git/``, notes) is ever touched. Without ``overwrite`` an
    ``out_dir`` holding an owned file is refused. Nothing is left behind on error.
    """
    tokenizer_files = _tokenizer_files(pathlib.Path(tokenizer_dir), vocab_size)
    owned = set(OWNED_NAMES) | {path.name for path in tokenizer_files}
    _check_output(out_dir, owned, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        target = _NUMPY_DTYPES[dtype]
        stored = {name: np.ascontiguousarray(np.asarray(value, np.float32).astype(target))
                  for name, value in sorted(tensors.items())}
        save_file(stored, str(staging / "model.safetensors"), metadata={"format": "pt"})
        _write_json(staging / "config.json", config_values)
        if auto_map == "local":
            for name in CODE_FILES:
                shutil.copy2(HF_CODE_DIR / name, staging / name)
        for path in tokenizer_files:
            shutil.copy2(path, staging / path.name)
        _make_tokenizer_portable(staging)
        if extra is not None:
            extra(staging)
        _install(staging, out_dir, owned | {p.name for p in staging.iterdir()})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _make_tokenizer_portable(directory: pathlib.Path) -> None:
    """Rewrite the copied ``tokenizer.json`` / ``tokenizer_config.json`` in the forms that transformers 4.40+
    (tokenizers 0.19) and 5.x (tokenizers 0.20+) both load (``bilingual.tokenizer.make_portable``: merges as
    ``"left right"`` strings, no 5.x-only tokenizer class). A tokenizer whose merges have no such form (a
    merge part containing a space; never so for byte-level BPE) is kept as it is, loadable by tokenizers >= 0.20
    only, with a warning."""
    from bilingual import tokenizer as tokenizer_lib

    try:
        tokenizer_lib.make_portable(directory)
    except tokenizer_lib.TokenizerError as err:
        warnings.warn(f"tokenizer.json kept in the tokenizers >= 0.20 form (transformers 4.x with tokenizers "
                      f"0.19 cannot load it): {err}", stacklevel=3)


def _write_json(path: pathlib.Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n")


def write_sentence_transformers_files(out_dir: pathlib.Path, config: EncoderConfig) -> None:
    """modules.json (Transformer -> mean Pooling -> Normalize) and the module configs, in the long-standing
    ``sentence_transformers.models`` form that sentence-transformers 2.x to 6.x all read."""
    _write_json(out_dir / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    _write_json(out_dir / "sentence_bert_config.json", {"max_seq_length": config.max_length, "do_lower_case": False})
    _write_json(out_dir / "1_Pooling" / "config.json", {
        "word_embedding_dimension": config.hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })
    (out_dir / "2_Normalize").mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "config_sentence_transformers.json",
                {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})


def _matryoshka_section(dims: Sequence[int]) -> str:
    sizes = ", ".join(map(str, dims[:-1])) + (" and " if len(dims) > 1 else "") + str(dims[-1])
    smallest = min(dims)
    return f"""
Trained with Matryoshka representation learning at {sizes} dimensions (`matryoshka_dimensions` in
`config.json`): for each such d, the first d components of an embedding, L2-normalised again, are an
embedding of d dimensions.

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/this/directory", trust_remote_code=True, truncate_dim={smallest})
embeddings = model.encode(["Wie ist das Wetter heute?", "How is the weather today?"], normalize_embeddings=True)
```

The pipeline's `Normalize` module normalises the full embedding before `truncate_dim` cuts it, so the cut
vectors are shorter than unit length until `normalize_embeddings=True` re-normalises them; cosine similarity
(`model.similarity`) is the same either way.
"""


def _model_card(config: EncoderConfig, *, masked_lm: bool, dtype: str, auto_map_kind: str, name: str,
                matryoshka_dims: Optional[Sequence[int]] = None) -> str:
    code = ("the PyTorch implementation shipped in this directory (`modeling_bert.py`, runs on transformers 4.40+ and 5.x)"
            if auto_map_kind == "local" else f"the code of `{hf_config.upstream_repo(config)}` on the Hugging Face Hub")
    if config.layer_layout == "qk_post_norm":
        kind = ("BERT with LayerNorms on the query and key projections, three LayerNorms per layer, symmetric ALiBi "
                f"and a {config.feed_forward_type.upper()} feed-forward")
    else:
        kind = (f"post-LN BERT with symmetric ALiBi{' and query/key LayerNorms' if config.qk_layernorm else ''} "
                f"and a {config.feed_forward_type.upper()} feed-forward")
    head = "\nThe masked-language-model head is included (`AutoModelForMaskedLM`).\n" if masked_lm else ""
    matryoshka = _matryoshka_section(matryoshka_dims) if matryoshka_dims else ""
    return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags:
- sentence-transformers
- feature-extraction
- sentence-similarity
- jina-bert
---

# {name}

A JinaBERT text-embedding model ({kind}) trained with the `bilingual` JAX/Flax code base and exported in
the public `{hf_config.hf_layer_layout(config)}` layout. {config.num_layers} layers, hidden size {config.hidden_size},
{config.num_heads} heads, vocabulary {config.vocab_size}, inputs up to {config.max_length} tokens.
Weights are stored as {dtype}. Loading needs `trust_remote_code=True`: it runs {code}; without it
transformers would build a plain BERT and initialise the gated feed-forward at random.
{head}
Embeddings are the mean of the last hidden states over non-padding tokens, L2-normalised.

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/this/directory", trust_remote_code=True)
embeddings = model.encode(["Wie ist das Wetter heute?", "How is the weather today?"])
```
{matryoshka}
```python
from transformers import AutoModel

model = AutoModel.from_pretrained("path/to/this/directory", trust_remote_code=True)
embeddings = model.encode(["Wie ist das Wetter heute?", "How is the weather today?"])
```
"""


def export_hf(config: EncoderConfig, params, out_dir, *, tokenizer_dir, dtype: str = "float32",
              mlm_params=None, auto_map: str = "local", model_name: Optional[str] = None,
              overwrite: bool = False, matryoshka_dims: Optional[Sequence[int]] = None) -> pathlib.Path:
    """Write ``params`` (encoder parameters of ``config``; numpy or jax arrays, host memory) to ``out_dir``.

    Args:
      mlm_params: the masked-LM head (the ``cls`` subtree of ``JinaBertForMaskedLM`` parameters) to include;
        the weights are then saved with ``bert.``-prefixed names plus ``cls.predictions.*``.
      dtype: storage dtype of the weights (``float32``, ``float16`` or ``bfloat16``).
      auto_map: ``"local"`` (code shipped in the directory, loads offline) or ``"upstream"`` (the released
        models' code on the Hub: ``jinaai/jina-bert-implementation`` for ``layer_layout="post_ln"``,
        ``jinaai/jina-bert-v2-qk-post-norm`` for ``"qk_post_norm"``; refused for a post_ln model with the
        qk-LayerNorm, which no published code computes).
      overwrite: replace the files of an earlier export at ``out_dir`` (anything else there is never
        touched; see ``write_model_dir``).
      matryoshka_dims: the nested embedding sizes the model was trained at (positive, at most
        ``hidden_size``, distinct), recorded in descending order in config.json (``matryoshka_dimensions``)
        and the model card; ``None``: none recorded (the files are exactly those of an export without them).
    Everything is written to a staging directory beside ``out_dir`` and moved into place at the end, so
    a failed export leaves no half-written model behind.
    Returns the output directory. Raises ``ExportError`` / ``StateDictMismatch`` on bad input.
    """
    if dtype not in hf_config.EXPORT_DTYPES:
        raise ExportError(f"dtype must be one of {hf_config.EXPORT_DTYPES}, got {dtype!r}")
    if auto_map not in hf_config.AUTO_MAP_KINDS:
        raise ExportError(f"auto_map must be one of {hf_config.AUTO_MAP_KINDS}, got {auto_map!r}")
    masked_lm = mlm_params is not None
    try:
        if matryoshka_dims is not None:
            matryoshka_dims = sorted(hf_config.matryoshka_dims(matryoshka_dims, "matryoshka_dims", config.hidden_size),
                                     reverse=True)
        hf_values = hf_config.to_hf_config(config, masked_lm=masked_lm, dtype=dtype, auto_map_kind=auto_map,
                                           matryoshka_dimensions=matryoshka_dims)
    except ValueError as err:
        raise ExportError(str(err)) from err
    tensors = hf_state.to_export_state_dict(params, mlm_params)
    expected = hf_state.reference_shapes(config, masked_lm=masked_lm)
    if masked_lm:
        expected[hf_state.DECODER_WEIGHT] = expected[hf_state.BERT_PREFIX + hf_state.WORD_EMBEDDINGS]
    hf_state.check_names_and_shapes(tensors, expected, "export_hf parameters")

    out_dir = pathlib.Path(out_dir).absolute()

    def extra(staging: pathlib.Path) -> None:
        write_sentence_transformers_files(staging, config)
        (staging / "README.md").write_text(_model_card(config, masked_lm=masked_lm, dtype=dtype,
                                                       auto_map_kind=auto_map, name=model_name or out_dir.name,
                                                       matryoshka_dims=matryoshka_dims))

    write_model_dir(out_dir, overwrite=overwrite, tensors=tensors, dtype=dtype, config_values=hf_values,
                    auto_map=auto_map, tokenizer_dir=tokenizer_dir, vocab_size=config.vocab_size, extra=extra)
    return out_dir
