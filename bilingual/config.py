"""Encoder configuration: one frozen dataclass, named presets, validation that names the field.

The presets follow ``shared/spec/MODEL.md`` (sizes of the published JinaBERT models). ``tiny`` is ours:
small enough for the test-suite and the CPU demo, yet with every feature of the real model (GEGLU,
ALiBi with several heads, post-LN).
"""

from __future__ import annotations

import dataclasses
from typing import Any

FEED_FORWARD_TYPES = ("geglu", "reglu")
ATTENTION_IMPLEMENTATIONS = ("auto", "dense", "chunked", "cudnn", "flash")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# "post_ln": the jina-bert-implementation layer (base-de, the English models).
# "qk_post_norm": the published jina-bert-v2-qk-post-norm layer (base-es).
LAYER_LAYOUTS = ("post_ln", "qk_post_norm")
# The fields that define the parameter tree: two configs that agree on these load each other's parameters.
# Dropout, dtype, attention implementation and length policy may change between stages.
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                       "feed_forward_type", "type_vocab_size", "qk_layernorm", "layer_layout")


class ConfigError(ValueError):
    """An invalid configuration (encoder, head, training or fine-tuning run), raised before anything is
    compiled; the message names the offending field or key."""


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of a JinaBERT encoder.

    Attributes:
      vocab_size: rows of the word-embedding table (and of the tied MLM decoder).
      hidden_size: model width ``H``; ``H = num_heads * head_dim``.
      num_layers: number of post-LN transformer layers.
      num_heads: attention heads; ALiBi slopes depend on it (``bilingual.alibi``).
      intermediate_size: width ``I`` of the gated feed-forward (the projection is ``H -> 2I``).
      feed_forward_type: ``"geglu"`` (exact-erf GELU gate) or ``"reglu"`` (ReLU gate, the large model).
      type_vocab_size: token-type (segment) vocabulary, 2 in every published model.
      layer_norm_eps: epsilon of every LayerNorm.
      hidden_dropout: dropout after the embeddings, the attention output and the GLU (BERT places).
      attention_dropout: dropout on attention probabilities (the reference's default path uses none).
      max_length: longest input accepted; ALiBi has no learned positions, so this is a policy limit.
      qk_layernorm: LayerNorm over the full query and key projections before the head split (base-es).
      layer_layout: ``"post_ln"``: the ``jina-bert-implementation`` layer,
        ``h = LN_attn(x + dense(ctx))``, ``out = LN_mlp(h + wo(act(gate) * linear))``.
        ``"qk_post_norm"``: the published ``jina-bert-v2-qk-post-norm`` layer (jina-embeddings-v2-base-es),
        ``a = LN_attn(x + dense(ctx))``, ``r = layer_norm_1(x + a)``,
        ``out = layer_norm_2(r + down_layer(up * act(gate)))`` with ``[up | gate] = up_gated_layer(r)``;
        it always has the qk-LayerNorm, so it requires ``qk_layernorm=True``.
      add_pooler: build the (unused for embeddings) BERT tanh pooler, for checkpoints that carry one.
      pad_token_id: id of ``<pad>``; padding is taken from the attention mask, this is metadata.
      initializer_range: stddev of the truncated-normal initialiser (BERT's 0.02).
      compute_dtype: dtype of activations and matmuls; parameters are always float32. bf16 on
        accelerators, float32 on CPU (no fast bf16 there).
      attention_impl: ``"auto"`` picks per platform and length (``bilingual.attention.select_implementation``);
        ``"dense"``, ``"chunked"``, ``"cudnn"`` or ``"flash"`` (the Pallas kernel,
        ``bilingual.flash_attention``; interpreted, slowly, on CPU) force one.
      attention_block_size: query/key block of the chunked implementation.
      flash_block_size: query and key block of the flash kernel (a power of two >= 8).
      chunked_min_length: with ``"auto"``, lengths above this never build an ``[L, L]`` bias: they use the
        flash kernel where it compiles (GPU, TPU) and the chunked implementation elsewhere.
      remat: rematerialise each layer in the backward pass (saves activation memory).
    """

    vocab_size: int = 61056
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    feed_forward_type: str = "geglu"
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.0
    max_length: int = 8192
    qk_layernorm: bool = False
    layer_layout: str = "post_ln"
    add_pooler: bool = False
    pad_token_id: int = 0
    initializer_range: float = 0.02
    compute_dtype: str = "float32"
    attention_impl: str = "auto"
    attention_block_size: int = 512
    flash_block_size: int = 128
    chunked_min_length: int = 1024
    remat: bool = False

    def __post_init__(self):
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                    "type_vocab_size", "max_length", "attention_block_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"EncoderConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"EncoderConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"EncoderConfig.num_heads ({self.num_heads})")
        _check_choice("feed_forward_type", self.feed_forward_type, FEED_FORWARD_TYPES)
        _check_choice("attention_impl", self.attention_impl, ATTENTION_IMPLEMENTATIONS)
        _check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        _check_choice("layer_layout", self.layer_layout, LAYER_LAYOUTS)
        if self.layer_layout == "qk_post_norm" and not self.qk_layernorm:
            raise ConfigError(
                "EncoderConfig.layer_layout='qk_post_norm' requires EncoderConfig.qk_layernorm=True: the "
                "published jina-bert-v2-qk-post-norm layer always normalises the query and key projections")
        for name in ("hidden_dropout", "attention_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"EncoderConfig.{name} must be in [0, 1), got {rate!r}")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"EncoderConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"EncoderConfig.pad_token_id ({self.pad_token_id}) must be a valid id below "
                f"vocab_size ({self.vocab_size})")
        if self.flash_block_size < 8 or self.flash_block_size & (self.flash_block_size - 1):
            raise ConfigError(
                f"EncoderConfig.flash_block_size must be a power of two >= 8, got {self.flash_block_size!r}")
        if self.chunked_min_length < 0:
            raise ConfigError(f"EncoderConfig.chunked_min_length must be >= 0, got {self.chunked_min_length}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def replace(self, **changes: Any) -> "EncoderConfig":
        """A copy with ``changes`` applied (validated like a new config)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown EncoderConfig field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def architecture_differences(self, other: "EncoderConfig") -> dict[str, tuple[Any, Any]]:
        """``{field: (self's value, other's value)}`` for each of ``ARCHITECTURE_FIELDS`` that differs."""
        return {f: (getattr(self, f), getattr(other, f)) for f in ARCHITECTURE_FIELDS
                if getattr(self, f) != getattr(other, f)}


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"EncoderConfig.{name} must be one of {choices}, got {value!r}")


PRESETS: dict[str, dict[str, Any]] = {
    # Ours: 2 layers, head dim 32, for tests and the CPU demo. Divisible by 4 everywhere that a
    # 2 x 4 test mesh shards (heads, hidden, intermediate, vocab).
    "tiny": dict(vocab_size=8192, hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512),
    "small": dict(vocab_size=30528, hidden_size=512, num_layers=4, num_heads=8, intermediate_size=2048),
    "base": dict(vocab_size=30528, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "large": dict(vocab_size=30528, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096,
                  feed_forward_type="reglu"),
    "base-de": dict(vocab_size=61056, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    # jina-embeddings-v2-base-es: the published jina-bert-v2-qk-post-norm layer (qk-LayerNorm, three
    # LayerNorms per layer, up_gated_layer / down_layer feed-forward).
    "base-es": dict(vocab_size=61056, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                    qk_layernorm=True, layer_layout="qk_post_norm"),
}


def get_config(preset: str = "base-de", **overrides: Any) -> EncoderConfig:
    """The named preset with ``overrides`` applied, e.g. ``get_config("tiny", vocab_size=4000)``."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown encoder preset {preset!r}; known presets: {', '.join(PRESETS)}")
    return EncoderConfig().replace(**{**PRESETS[preset], **overrides})
