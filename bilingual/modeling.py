"""JinaBERT in Flax linen: post-LN BERT without position embeddings, symmetric ALiBi, GLU feed-forward.

Module and parameter names follow the reference checkpoint layout (``shared/spec/MODEL.md``), so export
is a rename plus a kernel transpose::

    embeddings/{word_embeddings,token_type_embeddings}/embedding, embeddings/LayerNorm/{scale,bias}
    encoder/layer_N/attention/self/{query,key,value}/{kernel,bias}      [H, H] / [H]
    encoder/layer_N/attention/self/{layer_norm_q,layer_norm_k}           (qk_layernorm only)
    encoder/layer_N/attention/output/dense, .../output/LayerNorm
    encoder/layer_N/mlp/gated_layers/kernel  [H, 2I], no bias; columns 0..I-1 gate, I..2I-1 linear
    encoder/layer_N/mlp/wo/{kernel,bias}, encoder/layer_N/mlp/layernorm
    pooler/dense (add_pooler only)

With ``layer_layout="qk_post_norm"`` (the published ``jina-bert-v2-qk-post-norm`` layer of base-es) the
attention block is the same (qk-LayerNorm always on) and the rest of the layer is::

    encoder/layer_N/layer_norm_1/{scale,bias}, encoder/layer_N/layer_norm_2/{scale,bias}
    encoder/layer_N/mlp/up_gated_layer/kernel  [H, 2I], no bias; columns 0..I-1 linear, I..2I-1 gate
    encoder/layer_N/mlp/down_layer/{kernel,bias}                         (no LayerNorm inside the MLP)

Every parameter carries logical axis names (``embed``, ``heads``, ``kv``, ``mlp``, ``vocab``) and key
activations carry ``batch``/``length`` constraints; ``bilingual.sharding`` maps them to a mesh. Modules
never name mesh axes. Parameters are float32; activations use ``config.compute_dtype``.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from bilingual import attention as attn
from bilingual.alibi import alibi_slopes
from bilingual.config import EncoderConfig

# Logical axis names. The flattened ``heads * head_dim`` projection axis is labelled "heads", so a
# tensor-parallel split of it falls on head boundaries (the mesh checks ``num_heads % tensor == 0``).
BATCH, LENGTH, EMBED, HEADS, KV, MLP, VOCAB = "batch", "length", "embed", "heads", "kv", "mlp", "vocab"


def _partitioned(init, axes):
    return nn.with_logical_partitioning(init, axes)


def _constrain(x, axes):
    return nn.with_logical_constraint(x, axes)


def _dense(cfg: EncoderConfig, features: int, axes: tuple, name: Optional[str] = None,
           use_bias: bool = True) -> nn.Dense:
    return nn.Dense(
        features, use_bias=use_bias, dtype=jnp.dtype(cfg.compute_dtype), param_dtype=jnp.float32,
        kernel_init=_partitioned(nn.initializers.normal(cfg.initializer_range), axes),
        bias_init=_partitioned(nn.initializers.zeros_init(), (axes[-1],)), name=name)


def _layer_norm(cfg: EncoderConfig, name: Optional[str] = None, axis_name: str = EMBED) -> nn.LayerNorm:
    # Two-pass variance, as PyTorch computes it (the fast E[x^2]-E[x]^2 form costs parity).
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.compute_dtype), param_dtype=jnp.float32,
        use_fast_variance=False, scale_init=_partitioned(nn.initializers.ones_init(), (axis_name,)),
        bias_init=_partitioned(nn.initializers.zeros_init(), (axis_name,)), name=name)


def gelu_exact(x):
    """GELU with erf, as PyTorch's ``nn.GELU()`` (JAX's default is the tanh approximation)."""
    return jax.nn.gelu(x, approximate=False)


class Embeddings(nn.Module):
    """``LayerNorm(word[ids] + token_type[type_ids])`` then dropout; no position embeddings."""

    config: EncoderConfig

    def setup(self):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)
        self.word_embeddings = nn.Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=jnp.float32,
                                        dtype=jnp.dtype(cfg.compute_dtype),
                                        embedding_init=_partitioned(init, (VOCAB, EMBED)))
        self.token_type_embeddings = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, param_dtype=jnp.float32,
                                              dtype=jnp.dtype(cfg.compute_dtype),
                                              embedding_init=_partitioned(init, (None, EMBED)))
        self.LayerNorm = _layer_norm(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        cfg = self.config
        dtype = jnp.dtype(cfg.compute_dtype)
        # Gather from the float32 table and cast afterwards (nn.Embed casts the table first). The gradient is
        # then a float32 scatter-add, which GPUs do with native atomics; a bf16 scatter-add is a
        # compare-and-swap loop: 170 ms of a 443 ms base-de MLM step (64 x 512) on an H200.
        words = jnp.take(self.word_embeddings.embedding, input_ids, axis=0).astype(dtype)
        # The type table has a couple of rows that every token hits: a one-hot product makes its gradient a
        # reduction instead of batch x length atomic adds on one row (the other 170 ms above).
        one_hot = jax.nn.one_hot(token_type_ids, cfg.type_vocab_size, dtype=jnp.float32)
        types = jnp.einsum("blt,th->blh", one_hot, self.token_type_embeddings.embedding,
                           precision=jax.lax.Precision.HIGHEST).astype(dtype)
        h = self.dropout(self.LayerNorm(words + types), deterministic=deterministic)
        return _constrain(h, (BATCH, LENGTH, EMBED))


class SelfAttention(nn.Module):
    """Q/K/V projections (optional qk-LayerNorm over the flattened heads) and ALiBi attention.

    Input ``[B, L, H]``; output ``[B, L, heads, head_dim]`` (before the output projection).
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, h, key_mask, segment_ids, deterministic: bool):
        cfg = self.config
        q = _dense(cfg, cfg.hidden_size, (EMBED, HEADS), "query")(h)
        k = _dense(cfg, cfg.hidden_size, (EMBED, HEADS), "key")(h)
        v = _dense(cfg, cfg.hidden_size, (EMBED, HEADS), "value")(h)
        if cfg.qk_layernorm:
            q = _layer_norm(cfg, "layer_norm_q", HEADS)(q)
            k = _layer_norm(cfg, "layer_norm_k", HEADS)(k)
        split = lambda x: _constrain(x.reshape(x.shape[:2] + (cfg.num_heads, cfg.head_dim)),
                                     (BATCH, LENGTH, HEADS, KV))
        q, k, v = split(q), split(k), split(v)

        dropout_active = cfg.attention_dropout > 0.0 and not deterministic
        impl = attn.select_implementation(
            cfg.attention_impl, length=h.shape[1], head_dim=cfg.head_dim, dtype=cfg.compute_dtype,
            platform=jax.default_backend(), chunked_min_length=cfg.chunked_min_length,
            dropout_active=dropout_active)
        dropout = None
        if dropout_active:
            dropout = lambda p: nn.Dropout(cfg.attention_dropout)(p, deterministic=False)
        slopes = jnp.asarray(alibi_slopes(cfg.num_heads))
        partition = nn.logical_to_mesh_axes((BATCH, LENGTH, HEADS, KV)) if impl == "flash" else None
        out = attn.attention(q, k, v, slopes, key_mask, segment_ids, implementation=impl,
                             block_size=cfg.attention_block_size, flash_block_size=cfg.flash_block_size,
                             dropout=dropout, partition=partition)
        return _constrain(out, (BATCH, LENGTH, HEADS, KV))


class AttentionOutput(nn.Module):
    """``LayerNorm(residual + dropout(dense(context)))`` (post-LN)."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, context, residual, deterministic: bool):
        cfg = self.config
        h = _dense(cfg, cfg.hidden_size, (HEADS, EMBED), "dense")(context)
        h = nn.Dropout(cfg.hidden_dropout)(h, deterministic=deterministic)
        return _layer_norm(cfg, "LayerNorm")(h + residual)


class Attention(nn.Module):
    config: EncoderConfig

    @nn.compact
    def __call__(self, h, key_mask, segment_ids, deterministic: bool):
        cfg = self.config
        context = SelfAttention(cfg, name="self")(h, key_mask, segment_ids, deterministic)
        context = context.reshape(context.shape[:2] + (cfg.hidden_size,))
        return AttentionOutput(cfg, name="output")(context, h, deterministic)


def _gated_units(cfg: EncoderConfig, h, name: str, *, gate_first: bool, deterministic: bool):
    """``dropout(act(gate) * linear)`` ``[B, L, I]`` from the bias-free projection ``name`` ``[H, 2I]`` of ``h``
    (created in the calling module's compact scope), whose halves are ``[gate | linear]`` when ``gate_first``,
    else ``[linear | gate]``. ``act`` is exact-erf GELU for GEGLU and ReLU for ReGLU.
    """
    both = _dense(cfg, 2 * cfg.intermediate_size, (EMBED, MLP), name, use_bias=False)(h)
    first, second = both[..., :cfg.intermediate_size], both[..., cfg.intermediate_size:]
    gate, linear = (first, second) if gate_first else (second, first)
    act = gelu_exact if cfg.feed_forward_type == "geglu" else jax.nn.relu
    x = _constrain(act(gate) * linear, (BATCH, LENGTH, MLP))
    return nn.Dropout(cfg.hidden_dropout)(x, deterministic=deterministic)


class GLUMLP(nn.Module):
    """``LayerNorm(h + wo(dropout(act(gate) * linear)))`` with ``[gate | linear] = gated_layers(h)``.

    ``act`` is exact-erf GELU for GEGLU and ReLU for ReGLU; the first half of the projection is the gate.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, h, deterministic: bool):
        cfg = self.config
        x = _gated_units(cfg, h, "gated_layers", gate_first=True, deterministic=deterministic)
        x = _dense(cfg, cfg.hidden_size, (MLP, EMBED), "wo")(x)
        return _layer_norm(cfg, "layernorm")(x + h)


class UpGatedMLP(nn.Module):
    """``down_layer(dropout(up * act(gate)))`` with ``[up | gate] = up_gated_layer(h)``: the feed-forward of
    the ``qk_post_norm`` layout. The first half of the projection is the linear part, the second the gate
    (the reverse of ``GLUMLP``), and there is no LayerNorm or residual inside. ``[B, L, H] -> [B, L, H]``.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, h, deterministic: bool):
        cfg = self.config
        x = _gated_units(cfg, h, "up_gated_layer", gate_first=False, deterministic=deterministic)
        return _dense(cfg, cfg.hidden_size, (MLP, EMBED), "down_layer")(x)


class Layer(nn.Module):
    """One transformer layer, ``[B, L, H] -> [B, L, H]``, in ``config.layer_layout``.

    ``post_ln``: ``h = LN(x + dense(ctx))``, ``out = LN(h + wo(act(gate) * linear))``.
    ``qk_post_norm``: ``a = LN(x + dense(ctx))`` (``attention/output/LayerNorm``), then the layer input is
    added once more, ``r = layer_norm_1(x + a)``, and ``out = layer_norm_2(r + mlp(r))`` (``UpGatedMLP``).
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, h, key_mask, segment_ids, deterministic: bool):
        cfg = self.config
        attended = Attention(cfg, name="attention")(h, key_mask, segment_ids, deterministic)
        if cfg.layer_layout == "qk_post_norm":
            r = _layer_norm(cfg, "layer_norm_1")(h + attended)
            h = _layer_norm(cfg, "layer_norm_2")(r + UpGatedMLP(cfg, name="mlp")(r, deterministic))
        else:
            h = GLUMLP(cfg, name="mlp")(attended, deterministic)
        return _constrain(h, (BATCH, LENGTH, EMBED))


class LayerStack(nn.Module):
    """The stack of layers ``layer_0 .. layer_{N-1}``, optionally rematerialised per layer.

    ``JinaBert`` holds it as ``self.encoder``, so its parameters live under ``encoder/`` (the reference name).
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, h, key_mask, segment_ids, deterministic: bool):
        layer_cls = nn.remat(Layer, static_argnums=(4,)) if self.config.remat else Layer
        for i in range(self.config.num_layers):
            h = layer_cls(self.config, name=f"layer_{i}")(h, key_mask, segment_ids, deterministic)
        return h


def mean_pool(hidden, mask):
    """Masked mean over the length axis: ``[B, L, H], [B, L] -> [B, H]`` (float32).

    ``sum(h * mask) / max(sum(mask), 1e-9)``, as the reference; padding never contributes.
    """
    mask = mask.astype(jnp.float32)[..., None]
    summed = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
    return summed / jnp.maximum(mask.sum(axis=1), 1e-9)


def segment_mean_pool(hidden, segment_ids, num_texts: int):
    """Masked mean per segment of one packed block: ``[R, L, H], [R, L] -> [num_texts, H]`` (float32).

    Text ``t`` is the tokens with segment id ``t + 1`` anywhere in the block (0 = padding, never pooled);
    ``sum(h) / max(count, 1e-9)`` as ``mean_pool``, so a text packed with others pools exactly the tokens it
    has when encoded alone. A slot without tokens gives zeros. (``bilingual.packing`` lays blocks out.)
    """
    hidden = hidden.astype(jnp.float32).reshape(-1, hidden.shape[-1])
    segment_ids = segment_ids.reshape(-1)
    sums = jax.ops.segment_sum(hidden, segment_ids, num_segments=num_texts + 1)
    counts = jax.ops.segment_sum(jnp.ones_like(segment_ids, jnp.float32), segment_ids, num_segments=num_texts + 1)
    return sums[1:] / jnp.maximum(counts[1:], 1e-9)[:, None]


@flax.struct.dataclass
class EncoderOutput:
    last_hidden_state: jnp.ndarray  # [B, L, H], compute dtype
    embedding: jnp.ndarray          # [B, H] float32, masked mean, not normalised


def validate_inputs(config: EncoderConfig, input_ids, attention_mask=None, token_type_ids=None,
                    segment_ids=None) -> None:
    """Shape/dtype checks done at trace time (shapes are static), with messages naming the argument."""
    shape = getattr(input_ids, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"input_ids must have shape [batch, length], got {shape}")
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise TypeError(f"input_ids must be an integer array, got dtype {input_ids.dtype}")
    if shape[1] > config.max_length:
        raise ValueError(
            f"input length {shape[1]} exceeds EncoderConfig.max_length={config.max_length}; truncate the "
            "input or raise max_length (ALiBi extrapolates, but memory grows with length)")
    for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                        ("segment_ids", segment_ids)):
        if value is None:
            continue
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{name} must have the shape of input_ids {tuple(shape)}, got {tuple(value.shape)}")
        if name != "attention_mask" and not jnp.issubdtype(value.dtype, jnp.integer):
            raise TypeError(f"{name} must be an integer array, got dtype {value.dtype}")


class Pooler(nn.Module):
    """The BERT pooler ``tanh(dense(h[:, 0]))`` (``pooler/dense``); present in some checkpoints, unused
    for embeddings."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, hidden):
        return jnp.tanh(_dense(self.config, self.config.hidden_size, (EMBED, None), "dense")(hidden[:, 0]))


class JinaBert(nn.Module):
    """The encoder. ``__call__(input_ids [B, L] int, attention_mask [B, L] (1 = token), ...)``.

    ``segment_ids`` (optional, ``[B, L]`` int) keeps packed documents apart: a token attends only to
    tokens of its own segment. ALiBi is relative, so no position reset is needed for packing.
    Returns ``EncoderOutput`` with the last hidden states and the masked-mean embedding.
    """

    config: EncoderConfig

    def setup(self):
        self.embeddings = Embeddings(self.config)
        self.encoder = LayerStack(self.config)  # the attribute name is the parameter path "encoder/"
        if self.config.add_pooler:
            self.pooler = Pooler(self.config)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, segment_ids=None,
                 deterministic: bool = True) -> EncoderOutput:
        validate_inputs(self.config, input_ids, attention_mask, token_type_ids, segment_ids)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(input_ids.shape, jnp.int32)
        input_ids = _constrain(input_ids, (BATCH, LENGTH))
        h = self.embeddings(input_ids, token_type_ids, deterministic)
        h = self.encoder(h, attention_mask, segment_ids, deterministic)
        if self.config.add_pooler:  # create the parameters; the output is not used for embeddings
            self.pooler(h)
        return EncoderOutput(last_hidden_state=h, embedding=mean_pool(h, attention_mask))

    def word_embedding_table(self):
        return self.embeddings.word_embeddings.embedding


class MLMTransform(nn.Module):
    """``LayerNorm(gelu(dense(h)))`` (``transform/dense``, ``transform/LayerNorm``)."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, h):
        x = _dense(self.config, self.config.hidden_size, (EMBED, None), "dense")(h)
        return _layer_norm(self.config, "LayerNorm")(gelu_exact(x))


class MLMPredictions(nn.Module):
    """Transform, then the decoder tied to the word embeddings, plus an output ``bias`` ``[vocab]``.

    Returns float32 logits ``[..., vocab]``.
    """

    config: EncoderConfig

    @nn.compact
    def __call__(self, h, embedding_table):
        cfg = self.config
        x = MLMTransform(cfg, name="transform")(h)
        bias = self.param("bias", _partitioned(nn.initializers.zeros_init(), (VOCAB,)), (cfg.vocab_size,),
                          jnp.float32)
        logits = jnp.einsum("...h,vh->...v", x, embedding_table.astype(x.dtype),
                            preferred_element_type=jnp.float32)
        return logits + bias


class MLMHead(nn.Module):
    """Holds ``predictions`` so parameter paths read ``cls/predictions/...`` as in the reference."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, h, embedding_table):
        return MLMPredictions(self.config, name="predictions")(h, embedding_table)


class JinaBertForMaskedLM(nn.Module):
    """Encoder plus MLM head; parameters ``bert/...`` and ``cls/predictions/...``.

    ``__call__`` returns float32 logits ``[B, L, vocab]`` and the encoder output. ``logits_at`` takes
    hidden states already gathered at the selected positions (saves the full ``[B, L, vocab]``).
    """

    config: EncoderConfig

    def setup(self):
        self.bert = JinaBert(self.config)
        self.cls = MLMHead(self.config)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, segment_ids=None,
                 deterministic: bool = True):
        out = self.bert(input_ids, attention_mask, token_type_ids, segment_ids, deterministic)
        return self.logits_at(out.last_hidden_state), out

    def logits_at(self, hidden):
        """MLM logits for hidden states of any leading shape ``[..., H] -> [..., vocab]``."""
        return self.cls(hidden, self.bert.word_embedding_table())
