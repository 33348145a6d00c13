"""``EncoderConfig`` <-> the ``config.json`` of a published JinaBERT (``jina-embeddings-v2-base-de`` fields).

The exported ``config.json`` carries every field of the published config (``model_type: "bert"``,
``feed_forward_type``, ``position_embedding_type: "alibi"``, ``emb_pooler: "mean"``, ...) plus three keys read
by the shipped PyTorch code (``qk_layernorm``, ``layer_layout``, ``add_pooling_layer``). ``layer_layout`` is
``jina-bert-implementation`` for ``EncoderConfig.layer_layout="post_ln"`` and ``jina-bert-v2-qk-post-norm``
for ``"qk_post_norm"``; with ``auto_map="upstream"`` the config points at the published code of that layer.
A model trained with Matryoshka losses also records its nested embedding sizes, ``"matryoshka_dimensions":
[768, 256, 64]`` (descending; an embedding of ``d`` dimensions is the first ``d`` components, re-normalised);
without them the key is absent.
Runtime-only ``EncoderConfig`` fields (compute dtype, attention implementation, remat) are not part of a model
and come back as defaults on import.
"""

from __future__ import annotations

import json
import numbers
import pathlib
import re
from typing import Any, Optional, Sequence

from bilingual.config import ConfigError, EncoderConfig

AUTO_MAP_KINDS = ("local", "upstream")
EXPORT_DTYPES = ("float32", "float16", "bfloat16")
STANDARD_LAYOUT = "jina-bert-implementation"
QK_POST_NORM_LAYOUT = "jina-bert-v2-qk-post-norm"
# config.json ``layer_layout`` (the shipped code's key) <-> ``EncoderConfig.layer_layout``.
HF_LAYOUT_OF = {"post_ln": STANDARD_LAYOUT, "qk_post_norm": QK_POST_NORM_LAYOUT}
FLAX_LAYOUT_OF = {hf: flax for flax, hf in HF_LAYOUT_OF.items()}
# The Hub repositories holding the published code of each layer; jina-embeddings-v2-base-de points at the
# first, jina-embeddings-v2-base-es (and base-code) at the second.
UPSTREAM_REPOS = {STANDARD_LAYOUT: "jinaai/jina-bert-implementation",
                  QK_POST_NORM_LAYOUT: "jinaai/jina-bert-v2-qk-post-norm"}
# config.json key of the Matryoshka embedding sizes (checkpoint meta: ``"matryoshka_dims"``).
MATRYOSHKA_KEY = "matryoshka_dimensions"

_AUTO_CLASSES = {
    "AutoConfig": "configuration_bert.JinaBertConfig",
    "AutoModel": "modeling_bert.JinaBertModel",
    "AutoModelForMaskedLM": "modeling_bert.JinaBertForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_bert.JinaBertForSequenceClassification",
}


class HFConfigError(ValueError):
    """A ``config.json`` that does not describe a JinaBERT this project can represent; names file and key."""


def auto_map(kind: str, layer_layout: str = STANDARD_LAYOUT) -> dict[str, str]:
    """``"local"``: the code files shipped beside the weights; ``"upstream"``: the Hub repository with the
    published code of ``layer_layout`` (a config.json layout name, ``UPSTREAM_REPOS``)."""
    if kind == "local":
        return dict(_AUTO_CLASSES)
    if kind == "upstream":
        if layer_layout not in UPSTREAM_REPOS:
            raise ValueError(f"layer_layout must be one of {tuple(UPSTREAM_REPOS)}, got {layer_layout!r}")
        return {name: f"{UPSTREAM_REPOS[layer_layout]}--{target}" for name, target in _AUTO_CLASSES.items()}
    raise ValueError(f"auto_map must be one of {AUTO_MAP_KINDS}, got {kind!r}")


def hf_layer_layout(config: EncoderConfig) -> str:
    """The config.json ``layer_layout`` of ``config`` (``jina-bert-implementation`` or ``jina-bert-v2-qk-post-norm``)."""
    return HF_LAYOUT_OF[config.layer_layout]


def upstream_repo(config: EncoderConfig) -> str:
    return UPSTREAM_REPOS[hf_layer_layout(config)]


def matryoshka_dims(value, name: str, hidden_size: Optional[int] = None) -> list[int]:
    """Nested embedding sizes from ``value``, a list of ints or a comma-separated string (``"768,256,64"``),
    checked: each a positive integer, at most ``hidden_size`` (when given), none repeated; the order is kept.
    Anything else is a ``ValueError`` whose message starts with ``name`` (the option or meta key)."""
    if isinstance(value, str):
        dims = []
        for part in value.split(","):
            if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", part):
                raise ValueError(f"{name}: {part.strip()!r} is not an integer; give comma-separated embedding "
                                 "sizes, e.g. 768,256,64")
            dims.append(int(part))
    elif isinstance(value, (list, tuple)):
        bad = [x for x in value if isinstance(x, bool) or not isinstance(x, numbers.Integral)]
        if bad:
            raise ValueError(f"{name}: {bad[0]!r} is not an integer; expected a list of embedding sizes")
        dims = [int(x) for x in value]
    else:
        raise ValueError(f"{name}: expected a list of embedding sizes, got {type(value).__name__} {value!r}")
    if not dims:
        raise ValueError(f"{name}: no dimensions given")
    for d in dims:
        if d <= 0:
            raise ValueError(f"{name}: {d} is not a positive embedding size")
        if hidden_size is not None and d > hidden_size:
            raise ValueError(f"{name}: {d} is above the model's hidden size {hidden_size} (an embedding of d "
                             "dimensions is the first d components of the full one)")
    repeated = sorted({d for d in dims if dims.count(d) > 1})
    if repeated:
        raise ValueError(f"{name}: {', '.join(map(str, repeated))} given more than once; the dimensions must be "
                         "distinct")
    return dims


def to_hf_config(config: EncoderConfig, *, masked_lm: bool, dtype: str, auto_map_kind: str,
                 matryoshka_dimensions: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """The ``config.json`` dict for ``config`` (weights stored as ``dtype``); ``matryoshka_dimensions`` (checked
    by the caller) adds the ``MATRYOSHKA_KEY`` entry, written as given."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {EXPORT_DTYPES}, got {dtype!r}")
    layout = hf_layer_layout(config)
    if auto_map_kind == "upstream" and config.qk_layernorm and layout == STANDARD_LAYOUT:
        raise ValueError(
            "auto_map='upstream' cannot describe this model: it has the qk-LayerNorm in the "
            "jina-bert-implementation layer (EncoderConfig.layer_layout='post_ln', qk_layernorm=True), and no "
            "published code computes that: jinaai/jina-bert-implementation has no query/key LayerNorm and "
            "jinaai/jina-bert-v2-qk-post-norm is a different layer (layer_layout='qk_post_norm', as base-es). "
            "Export with auto_map='local' (the shipped code runs it exactly).")
    values: dict[str, Any] = {
        "architectures": ["JinaBertForMaskedLM" if masked_lm else "JinaBertModel"],
        "model_type": "bert",
        "auto_map": auto_map(auto_map_kind, layout),
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu",
        "feed_forward_type": config.feed_forward_type,
        "position_embedding_type": "alibi",
        "max_position_embeddings": config.max_length,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "initializer_range": config.initializer_range,
        "pad_token_id": config.pad_token_id,
        "emb_pooler": "mean",
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "classifier_dropout": None,
        "use_cache": True,
        "torch_dtype": dtype,
        "tie_word_embeddings": True,
        "qk_layernorm": config.qk_layernorm,
        "layer_layout": layout,
        "add_pooling_layer": config.add_pooler,
    }
    # The reference's "torch" attention path (SDPA) applies no attention dropout, its eager path does:
    # name the path whose behaviour matches the trained model.
    if config.attention_dropout == 0.0:
        values["attn_implementation"] = "torch"
    if matryoshka_dimensions is not None:
        values[MATRYOSHKA_KEY] = [int(d) for d in matryoshka_dimensions]
    return values


def _get(values: dict, key: str, source: str, default: Any = None, required: bool = True):
    if key in values:
        return values[key]
    if required and default is None:
        raise HFConfigError(f"{source}: missing key {key!r}")
    return default


def from_hf_config(values: dict[str, Any], source: str = "config.json") -> EncoderConfig:
    """An ``EncoderConfig`` from a JinaBERT ``config.json`` dict (ours or a published one)."""
    if values.get("model_type") != "bert":
        raise HFConfigError(f"{source}: model_type must be 'bert' (JinaBERT), got {values.get('model_type')!r}")
    if values.get("position_embedding_type", "alibi") != "alibi":
        raise HFConfigError(f"{source}: position_embedding_type must be 'alibi', got "
                            f"{values.get('position_embedding_type')!r}; this is not a JinaBERT checkpoint")
    feed_forward = _get(values, "feed_forward_type", source)
    if feed_forward not in ("geglu", "reglu"):
        raise HFConfigError(f"{source}: feed_forward_type {feed_forward!r} is not supported (geglu or reglu)")
    if values.get("hidden_act", "gelu") not in ("gelu", "relu"):
        raise HFConfigError(f"{source}: hidden_act {values['hidden_act']!r} is not supported (exact gelu)")
    layout = layer_layout_of(values, source)
    attention_dropout = float(values.get("attention_probs_dropout_prob", 0.0))
    if values.get("attn_implementation", values.get("jina_attn_implementation")) == "torch":
        attention_dropout = 0.0  # the reference's SDPA path, which the published models run, has none
    try:
        return EncoderConfig(
            vocab_size=_get(values, "vocab_size", source),
            hidden_size=_get(values, "hidden_size", source),
            num_layers=_get(values, "num_hidden_layers", source),
            num_heads=_get(values, "num_attention_heads", source),
            intermediate_size=_get(values, "intermediate_size", source),
            feed_forward_type=feed_forward,
            type_vocab_size=values.get("type_vocab_size", 2),
            layer_norm_eps=float(values.get("layer_norm_eps", 1e-12)),
            hidden_dropout=float(values.get("hidden_dropout_prob", 0.1)),
            attention_dropout=attention_dropout,
            max_length=values.get("max_position_embeddings", 8192),
            # The published qk-post-norm layer always has the query/key LayerNorms (its config has no key).
            qk_layernorm=bool(values.get("qk_layernorm", False)) or layout == QK_POST_NORM_LAYOUT,
            layer_layout=FLAX_LAYOUT_OF[layout],
            add_pooler=bool(values.get("add_pooling_layer", False)),
            pad_token_id=values.get("pad_token_id", 0) or 0,
            initializer_range=float(values.get("initializer_range", 0.02)),
        )
    except ConfigError as err:
        raise HFConfigError(f"{source}: {err}") from err


def stated_layer_layout(values: dict[str, Any], source: str = "config.json") -> Optional[str]:
    """The layer layout a config.json states, or ``None``: its ``layer_layout`` key (ours), else the
    published code its ``auto_map`` points at (``jinaai/jina-bert-v2-qk-post-norm--...`` in base-es,
    ``jinaai/jina-bert-implementation--...`` in base-de)."""
    if "layer_layout" in values:
        layout = values["layer_layout"]
        if layout not in FLAX_LAYOUT_OF:
            raise HFConfigError(f"{source}: layer_layout must be one of {tuple(FLAX_LAYOUT_OF)}, got {layout!r}")
        return layout
    targets = values.get("auto_map") or {}
    targets = [t for t in targets.values() if isinstance(t, str)] if isinstance(targets, dict) else []
    for layout, repo in UPSTREAM_REPOS.items():
        if any(t.startswith(repo + "--") for t in targets):
            return layout
    return None


def layer_layout_of(values: dict[str, Any], source: str = "config.json") -> str:
    """``stated_layer_layout``, defaulting to the standard ``jina-bert-implementation`` layer."""
    return stated_layer_layout(values, source) or STANDARD_LAYOUT


def read_hf_config(directory) -> dict[str, Any]:
    path = pathlib.Path(directory) / "config.json"
    if not path.is_file():
        raise HFConfigError(f"{path}: not found (a Hugging Face model directory has a config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HFConfigError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from err
