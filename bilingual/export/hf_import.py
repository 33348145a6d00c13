"""Read a Hugging Face JinaBERT directory (ours or a published one) into Flax parameters and a config.

Accepted: ``model.safetensors`` (or a sharded ``model.safetensors.index.json``; ``pytorch_model.bin`` when
torch is installed) in the ``jina-bert-implementation`` layout (with or without the query/key LayerNorms) or
the ``jina-bert-v2-qk-post-norm`` layout of jina-embeddings-v2-base-es (``layer_norm_1/2``,
``mlp.up_gated_layer``, ``mlp.down_layer``; imported as ``EncoderConfig.layer_layout="qk_post_norm"``), with
plain names (``JinaBertModel``) or ``bert.``-prefixed ones plus ``cls.predictions.*`` (``JinaBertForMaskedLM``),
with or without the pooler. The layout is read from the tensor names and must agree with what config.json
states (its ``layer_layout`` key, or an ``auto_map`` pointing at ``jinaai/jina-bert-v2-qk-post-norm``). Every tensor must be consumed and every parameter of the Flax model filled, else a
``StateDictMismatch`` lists the missing, unexpected and mis-shaped names; nothing is ever left at a random
initial value. Tied aliases (``cls.predictions.decoder.weight`` = word embeddings,
``cls.predictions.decoder.bias`` = ``cls.predictions.bias``) are checked equal and dropped.

Parameters come back as float32 numpy arrays (host memory); ``extras["dtype"]`` names the stored dtype, so
``export_hf(config, params, ..., dtype=extras["dtype"], mlm_params=extras["mlm_params"])`` writes the same
tensors back bit for bit.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Optional

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from bilingual import hf_layout
from bilingual.config import EncoderConfig
from bilingual.export import hf_config, hf_state

_DTYPE_NAMES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
# Buffers some BERT checkpoints carry that are not parameters (ALiBi and token types need none).
_IGNORED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")


class HFImportError(ValueError):
    """A directory that cannot be imported; the message names the file and the reason."""


def _load_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise HFImportError(f"{path} is truncated or not a safetensors file ({err})") from err


def read_tensors(directory) -> tuple[dict[str, np.ndarray], str]:
    """``({name: array as stored}, description of the source file(s))``; an unreadable weights file is an
    ``HFImportError`` naming it."""
    directory = pathlib.Path(directory)
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return _load_safetensors(single), str(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
        except (json.JSONDecodeError, AttributeError) as err:
            raise HFImportError(f"{index} is not a JSON object ({err})") from err
        if not isinstance(weight_map, dict):
            raise HFImportError(f"{index}: no 'weight_map' object")
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            path = directory / shard
            if not path.is_file():
                raise HFImportError(f"{index} names shard {shard}, which is missing from {directory}")
            tensors.update(_load_safetensors(path))
        return tensors, str(index)
    legacy = directory / "pytorch_model.bin"
    if legacy.is_file():
        try:
            import torch
        except ImportError as err:
            raise HFImportError(f"{legacy} is a PyTorch pickle; install torch to read it, or convert it to "
                                "model.safetensors") from err
        state = torch.load(str(legacy), map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in state.items()}, str(legacy)
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise HFImportError(f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin "
                        f"(found: {', '.join(present) or 'nothing'})")


def _stored_dtype(tensors: dict[str, np.ndarray]) -> str:
    names = {str(v.dtype) for v in tensors.values()}  # ml_dtypes' bfloat16 prints as "bfloat16"
    if len(names) == 1 and next(iter(names)) in _DTYPE_NAMES:
        return next(iter(names))
    return "mixed"


# Tensor-name fragments that only one layer layout has (the attention block is shared).
_LAYOUT_MARKERS = {
    hf_config.QK_POST_NORM_LAYOUT: (".mlp.up_gated_layer.", ".mlp.down_layer.", ".layer_norm_1.", ".layer_norm_2."),
    hf_config.STANDARD_LAYOUT: (".mlp.gated_layers.", ".mlp.wo.", ".mlp.layernorm."),
}


def _layout_from_names(names, stated: Optional[str], source: str) -> str:
    """The layer layout the tensor names show (``stated`` or the standard one when no layer is present).

    ``stated`` is what config.json says (``hf_config.stated_layer_layout``) or ``None``. Names of both
    layouts, or names that contradict the stated layout, are an error: the weights would not load in the
    code the config names.
    """
    found = {layout: next((n for n in sorted(names) if any(m in n for m in markers)), None)
             for layout, markers in _LAYOUT_MARKERS.items()}
    present = [layout for layout, example in found.items() if example is not None]
    if len(present) > 1:
        raise HFImportError(
            f"{source}: tensors of two layer layouts, {hf_config.QK_POST_NORM_LAYOUT} (e.g. "
            f"{found[hf_config.QK_POST_NORM_LAYOUT]}) and {hf_config.STANDARD_LAYOUT} (e.g. "
            f"{found[hf_config.STANDARD_LAYOUT]}); a checkpoint has one")
    if not present:
        return stated or hf_config.STANDARD_LAYOUT
    layout = present[0]
    if stated is not None and layout != stated:
        raise HFImportError(
            f"{source}: the tensors are in the {layout} layout (e.g. {found[layout]}) but config.json states "
            f"{stated} (its layer_layout or auto_map); fix config.json so the model loads in the code it names")
    return layout


def _take_tied_aliases(tensors: dict[str, np.ndarray], source: str) -> list[str]:
    """Remove ``cls.predictions.decoder.*`` after checking they equal what they are tied to."""
    taken = []
    ties = ((hf_state.DECODER_WEIGHT, hf_state.BERT_PREFIX + hf_state.WORD_EMBEDDINGS),
            (hf_state.DECODER_BIAS, "cls.predictions.bias"))
    for alias, owner in ties:
        if alias not in tensors:
            continue
        if owner in tensors and (tensors[alias].shape != tensors[owner].shape
                                 or not np.array_equal(tensors[alias], tensors[owner])):
            raise HFImportError(f"{source}: {alias} differs from {owner}; bilingual's masked-LM head ties them, "
                                "so an untied decoder cannot be imported")
        if owner in tensors:
            del tensors[alias]
            taken.append(alias)
    return taken


def import_hf(directory) -> tuple[EncoderConfig, dict, dict[str, Any]]:
    """``(config, encoder params, extras)`` from a Hugging Face JinaBERT directory.

    ``extras``: ``mlm_params`` (the ``cls`` subtree, or ``None``), ``dtype`` (stored dtype: float32, float16,
    bfloat16 or mixed), ``masked_lm`` (names were ``bert.``-prefixed with a head), ``tied_aliases`` and
    ``ignored`` (names checked and dropped), ``source`` (the weights file), ``hf_config`` (config.json).
    """
    directory = pathlib.Path(directory)
    values = hf_config.read_hf_config(directory)
    config = hf_config.from_hf_config(values, str(directory / "config.json"))
    tensors, source = read_tensors(directory)
    layout = _layout_from_names(tensors, hf_config.stated_layer_layout(values, str(directory / "config.json")), source)
    ignored = sorted(n for n in tensors if n.endswith(_IGNORED_SUFFIXES))
    for name in ignored:
        del tensors[name]
    dtype = _stored_dtype(tensors)

    masked_lm = any(n.startswith("cls.") for n in tensors)
    tied = _take_tied_aliases(tensors, source) if masked_lm else []
    if not masked_lm and any(n.startswith(hf_state.BERT_PREFIX) for n in tensors):
        # A bert.-prefixed encoder without a head: strip the base-model prefix; other names stay unexpected.
        tensors = {n[len(hf_state.BERT_PREFIX):] if n.startswith(hf_state.BERT_PREFIX) else n: v
                   for n, v in tensors.items()}
    encoder_names = [n[len(hf_state.BERT_PREFIX):] if masked_lm and n.startswith(hf_state.BERT_PREFIX) else n
                     for n in tensors]
    config = config.replace(
        layer_layout=hf_config.FLAX_LAYOUT_OF[layout],
        qk_layernorm=(config.qk_layernorm or layout == hf_config.QK_POST_NORM_LAYOUT
                      or any(".attention.self.layer_norm_q." in n for n in encoder_names)),
        add_pooler=config.add_pooler or any(n.startswith("pooler.") for n in encoder_names))

    expected = hf_state.reference_shapes(config, masked_lm=masked_lm)
    hf_state.check_names_and_shapes(tensors, expected, source)
    bad = sorted(n for n, v in tensors.items() if not np.all(np.isfinite(np.asarray(v, np.float32))))
    if bad:
        raise HFImportError(f"{source}: non-finite values (nan/inf) in {', '.join(bad)}")

    tree = hf_layout.from_state_dict({n: np.asarray(v, np.float32) for n, v in tensors.items()})
    params, mlm_params = hf_state.split_params(tree)
    extras = {"mlm_params": mlm_params, "dtype": dtype, "masked_lm": masked_lm, "tied_aliases": tied,
              "ignored": ignored, "source": source, "hf_config": values}
    return config, params, extras
