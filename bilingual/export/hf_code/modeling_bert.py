"""JinaBERT in PyTorch: post-LN BERT with symmetric ALiBi and a gated (GEGLU/ReGLU) feed-forward.

Shipped beside exported weights and loaded by ``transformers`` with ``trust_remote_code=True``; imports only
torch and transformers, and only what transformers 4.40+ and 5.x both have (one code path for both: no
``transformers.initialization``, which exists only in 5.x). Written from the architecture description
(``shared/spec/MODEL.md`` of the bilingual project), independently of the project's Flax code, and reading the
state-dict layout of ``jinaai/jina-bert-implementation`` (and, with ``config.layer_layout``, of
``jina-bert-v2-qk-post-norm``).

Shapes: ``B`` batch, ``L`` sequence length, ``H`` hidden size, ``N`` heads, ``D = H / N``, ``I`` intermediate.

- Embeddings: ``LayerNorm(word[ids] + token_type[type_ids])``; no position embeddings.
- Attention: ``softmax(q k^T / sqrt(D) + alibi + padding) v`` with the symmetric ALiBi bias
  ``-m_h |i - j|``, built for the actual length (never for ``max_position_embeddings``); long inputs are
  processed in query blocks so the bias and scores stay ``O(N * block * L)``.
- Feed-forward (standard layout): ``[g | u] = gated_layers(h)``, first half is the gate,
  ``LayerNorm(h + wo(act(g) * u))`` with the exact (erf) GELU for ``geglu`` and ReLU for ``reglu``.
- Embeddings for retrieval: masked mean of the last hidden states (``mean_pooling``), L2-normalised by
  ``encode``.
- Heads (the reference's ``JinaBertFor*`` names): masked LM; sequence classification / regression on the CLS
  pooler or, with ``config.classifier_pooling="mean"``, the mean embedding; token classification; extractive QA.
"""

from __future__ import annotations

import math
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import (BaseModelOutputWithPooling, MaskedLMOutput, QuestionAnsweringModelOutput,
                                           SequenceClassifierOutput, TokenClassifierOutput)

from .configuration_bert import JinaBertConfig

QK_POST_NORM = "jina-bert-v2-qk-post-norm"
# Query rows per attention block for long inputs: bias and scores are [B, N, block, L] at a time.
ATTENTION_QUERY_BLOCK = 1024


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi slopes ``[N]`` (float64): ``2^(-8h/n)`` for a power of two ``n``, else the ``c = 2^floor(log2 n)``
    slopes followed by every other slope of the ``2c`` list, first ``n - c`` of them."""

    def power_of_two(n: int) -> List[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two(closest)
    if closest < num_heads:
        slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float64)


def alibi_bias(slopes: torch.Tensor, query_positions: torch.Tensor, key_length: int, dtype) -> torch.Tensor:
    """Symmetric ALiBi bias ``[N, Q, key_length]``: ``-slope_h * |i - j|`` for the given query positions."""
    keys = torch.arange(key_length, device=query_positions.device)
    distance = (query_positions[:, None] - keys[None, :]).abs().to(torch.float64)
    return (-slopes.to(query_positions.device)[:, None, None] * distance[None]).to(dtype)


def mean_pooling(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: ``[B, L, H], [B, L] -> [B, H]`` (sum of kept tokens / max(count, 1e-9))."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    summed = (last_hidden_state * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


def _activation(config: JinaBertConfig):
    if config.feed_forward_type == "reglu":
        return F.relu
    return lambda x: F.gelu(x, approximate="none")


class JinaBertEmbeddings(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        hidden = inputs_embeds + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(hidden))


class JinaBertSelfAttention(nn.Module):
    """Multi-head attention with an additive bias (ALiBi + padding); optional qk-LayerNorm over all heads."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.qk_layernorm = config.qk_layernorm or config.layer_layout == QK_POST_NORM
        if self.qk_layernorm:
            self.layer_norm_q = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.layer_norm_k = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)  # [B, N, L, D]

    def forward(self, hidden: torch.Tensor, slopes: torch.Tensor, padding_bias: torch.Tensor) -> torch.Tensor:
        """``hidden [B, L, H]``, ``slopes [N]``, ``padding_bias [B, 1, 1, L]`` (0 or very negative)
        -> context ``[B, L, H]``."""
        q, k, v = self.query(hidden), self.key(hidden), self.value(hidden)
        if self.qk_layernorm:
            q, k = self.layer_norm_q(q), self.layer_norm_k(k)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        b, _, length, _ = q.shape
        blocks = []
        for start in range(0, length, ATTENTION_QUERY_BLOCK):
            positions = torch.arange(start, min(start + ATTENTION_QUERY_BLOCK, length), device=hidden.device)
            bias = alibi_bias(slopes, positions, length, q.dtype)[None] + padding_bias  # [B, N, Q, L]
            # SDPA scales q k^T by 1/sqrt(D) and then adds the bias: ALiBi comes after the scaling.
            blocks.append(F.scaled_dot_product_attention(q[:, :, positions], k, v, attn_mask=bias))
        context = torch.cat(blocks, dim=2) if len(blocks) > 1 else blocks[0]
        return context.transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim)


class JinaBertSelfOutput(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(context)) + residual)


class JinaBertAttention(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.self = JinaBertSelfAttention(config)
        self.output = JinaBertSelfOutput(config)

    def forward(self, hidden, slopes, padding_bias):
        return self.output(self.self(hidden, slopes, padding_bias), hidden)


class JinaBertGLUMLP(nn.Module):
    """Standard layout: ``LayerNorm(h + wo(act(g) * u))`` with ``[g | u] = gated_layers(h)`` (gate first)."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.act = _activation(config)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        projected = self.gated_layers(hidden)
        gate, linear = projected[..., : self.intermediate_size], projected[..., self.intermediate_size:]
        # Dropout before wo, as in the reference (and the Flax model); it only matters in training mode.
        return self.layernorm(self.wo(self.dropout(self.act(gate) * linear)) + hidden)


class JinaBertQKPostNormMLP(nn.Module):
    """qk-post-norm layout: ``down_layer(u * act(g))`` with ``[u | g] = up_gated_layer(h)`` (linear part
    first, gate second: the reverse of the standard layout). No LayerNorm inside."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.up_gated_layer = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.act = _activation(config)
        self.down_layer = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        projected = self.up_gated_layer(hidden)
        linear, gate = projected[..., : self.intermediate_size], projected[..., self.intermediate_size:]
        return self.down_layer(self.dropout(linear * self.act(gate)))


class JinaBertLayer(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.qk_post_norm = config.layer_layout == QK_POST_NORM
        self.attention = JinaBertAttention(config)
        if self.qk_post_norm:
            self.layer_norm_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.layer_norm_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.mlp = JinaBertQKPostNormMLP(config)
        else:
            self.mlp = JinaBertGLUMLP(config)

    def forward(self, hidden, slopes, padding_bias):
        attended = self.attention(hidden, slopes, padding_bias)
        if not self.qk_post_norm:
            return self.mlp(attended)
        # The published qk-post-norm layer adds the layer input once more after the attention block's own
        # post-LN: r = LN1(x + LN(x + dense(ctx))), out = LN2(r + mlp(r)).
        residual = self.layer_norm_1(hidden + attended)
        return self.layer_norm_2(residual + self.mlp(residual))


class JinaBertEncoder(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.layer = nn.ModuleList([JinaBertLayer(config) for _ in range(config.num_hidden_layers)])
        # [N] slopes only; the [N, L, L] bias is built per call for the actual length.
        self.register_buffer("alibi_slopes", alibi_slopes(config.num_attention_heads).float(), persistent=False)

    def forward(self, hidden, padding_bias, output_hidden_states=False):
        all_hidden = (hidden,) if output_hidden_states else None
        for layer in self.layer:
            hidden = layer(hidden, self.alibi_slopes, padding_bias)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)
        return hidden, all_hidden


class JinaBertPooler(nn.Module):
    """BERT's tanh pooler on the first token (kept for checkpoints that have it; not the embedding)."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class JinaBertPreTrainedModel(PreTrainedModel):
    config_class = JinaBertConfig
    base_model_prefix = "bert"
    _no_split_modules = ["JinaBertLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        """BERT's initialisation, for whatever the checkpoint does not fill (a head added on top, the
        non-persistent ALiBi slopes), written out here so transformers 4.x and 5.x initialise alike.

        transformers 5 builds the model on the meta device, loads the checkpoint, then calls this for every
        module, having marked each loaded tensor ``_is_hf_initialized``; transformers 4 builds it on the CPU
        and calls this only for modules with missing weights. ``_fill`` skips marked tensors, which is the
        behaviour of 5.x's ``transformers.initialization`` helpers and a no-op difference on 4.x.
        """
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            _fill(module.weight, lambda t: t.normal_(0.0, std))
            if module.bias is not None:
                _fill(module.bias, torch.Tensor.zero_)
        elif isinstance(module, nn.Embedding):
            _fill(module.weight, lambda t: t.normal_(0.0, std))
        elif isinstance(module, nn.LayerNorm):
            _fill(module.weight, torch.Tensor.fill_, 1.0)
            _fill(module.bias, torch.Tensor.zero_)
        if isinstance(module, JinaBertEncoder):
            _fill(module.alibi_slopes, torch.Tensor.copy_, alibi_slopes(self.config.num_attention_heads).float())
        if isinstance(module, JinaBertLMPredictionHead):
            _fill(module.bias, torch.Tensor.zero_)


def _fill(tensor: torch.Tensor, fill, *args) -> None:
    """``fill(tensor, *args)`` in place, unless transformers marked the tensor as loaded from the checkpoint."""
    if tensor is not None and not getattr(tensor, "_is_hf_initialized", False):
        with torch.no_grad():
            fill(tensor, *args)


class JinaBertModel(JinaBertPreTrainedModel):
    """The encoder. ``forward`` returns ``last_hidden_state [B, L, H]`` and ``pooler_output`` (the tanh pooler
    if the model has one, else ``None``); ``encode`` gives L2-normalised mean-pooled sentence embeddings."""

    def __init__(self, config: JinaBertConfig, add_pooling_layer: Optional[bool] = None):
        super().__init__(config)
        self.embeddings = JinaBertEmbeddings(config)
        self.encoder = JinaBertEncoder(config)
        if add_pooling_layer is None:
            add_pooling_layer = config.add_pooling_layer
        self.pooler = JinaBertPooler(config) if add_pooling_layer else None
        self._tokenizer = None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_hidden_states=None, return_dict=None, **kwargs):
        """``position_ids`` is accepted and ignored (ALiBi has no positions)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("JinaBertModel.forward needs exactly one of input_ids and inputs_embeds")
        hidden = self.embeddings(input_ids, token_type_ids, inputs_embeds)
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        # Half the most negative value: adding the ALiBi bias to it cannot overflow to -inf.
        blocked = torch.finfo(hidden.dtype).min / 2
        padding_bias = torch.where(attention_mask[:, None, None, :].bool(),
                                   torch.zeros((), dtype=hidden.dtype, device=hidden.device),
                                   torch.full((), blocked, dtype=hidden.dtype, device=hidden.device))
        output_hidden_states = bool(output_hidden_states)
        hidden, all_hidden = self.encoder(hidden, padding_bias, output_hidden_states)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        if return_dict is False:
            return tuple(x for x in (hidden, pooled, all_hidden) if x is not None)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled, hidden_states=all_hidden)

    @property
    def tokenizer(self):
        """The tokenizer saved beside the weights, loaded on first use (never at construction)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.config._name_or_path)
        return self._tokenizer

    @torch.inference_mode()
    def encode(self, sentences: Union[str, List[str]], batch_size: int = 32, normalize_embeddings: bool = True,
               max_length: Optional[int] = None, convert_to_numpy: bool = True):
        """Mean-pooled (and by default L2-normalised) embeddings ``[len(sentences), H]``."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        max_length = max_length or self.config.max_position_embeddings
        was_training = self.training
        self.eval()
        outputs = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                   max_length=max_length, return_tensors="pt").to(self.device)
            batch.pop("token_type_ids", None)
            hidden = self(**batch).last_hidden_state
            pooled = mean_pooling(hidden, batch["attention_mask"])
            if normalize_embeddings:
                pooled = F.normalize(pooled, p=2, dim=-1)
            outputs.append(pooled)
        self.train(was_training)
        embeddings = torch.cat(outputs)
        if convert_to_numpy:
            embeddings = embeddings.float().cpu().numpy()
        return embeddings[0] if single else embeddings


class JinaBertPredictionHeadTransform(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden):
        return self.LayerNorm(F.gelu(self.dense(hidden), approximate="none"))


class JinaBertLMPredictionHead(nn.Module):
    """``decoder(transform(h)) + bias``; the decoder weight is tied to the word embeddings."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.transform = JinaBertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden):
        return self.decoder(self.transform(hidden)) + self.bias


class JinaBertOnlyMLMHead(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.predictions = JinaBertLMPredictionHead(config)

    def forward(self, hidden):
        return self.predictions(hidden)


class JinaBertForMaskedLM(JinaBertPreTrainedModel):
    """Masked-LM model: state-dict names ``bert.*`` and ``cls.predictions.*``; logits ``[B, L, V]``."""

    _tied_weights_keys = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}

    def __init__(self, config: JinaBertConfig):
        super().__init__(config)
        self.bert = JinaBertModel(config, add_pooling_layer=False)
        self.cls = JinaBertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        """``labels [B, L]`` with -100 for positions without a target gives the cross-entropy ``loss``."""
        outputs = self.bert(input_ids, attention_mask, token_type_ids, inputs_embeds=inputs_embeds,
                            output_hidden_states=output_hidden_states)
        logits = self.cls(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1), ignore_index=-100)
        if return_dict is False:
            return tuple(x for x in (loss, logits, outputs.hidden_states) if x is not None)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class JinaBertForSequenceClassification(JinaBertPreTrainedModel):
    """Classifier (``config.num_labels`` outputs): ``classifier(dropout(pooled))``, state-dict names ``bert.*``
    and ``classifier.{weight,bias}``.

    ``config.classifier_pooling``: ``"cls"`` (also when absent, as the reference ``JinaBertForSequenceClassification``)
    pools with the BERT tanh pooler on the first token (``bert.pooler.dense``); ``"mean"`` with the masked mean
    of the last hidden states (no pooler). ``labels`` give a loss by ``config.problem_type`` (inferred as BERT
    does when unset): MSE for ``regression`` (``num_labels == 1``), cross-entropy for
    ``single_label_classification``, binary cross-entropy with logits for ``multi_label_classification``.
    """

    def __init__(self, config: JinaBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.pooling = getattr(config, "classifier_pooling", None) or "cls"
        self.bert = JinaBertModel(config, add_pooling_layer=self.pooling == "cls")
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.bert(input_ids, attention_mask, token_type_ids, inputs_embeds=inputs_embeds,
                            output_hidden_states=output_hidden_states)
        if self.pooling == "cls":
            pooled = outputs.pooler_output
        else:
            mask = attention_mask if attention_mask is not None else torch.ones(
                outputs.last_hidden_state.shape[:2], device=outputs.last_hidden_state.device)
            pooled = mean_pooling(outputs.last_hidden_state, mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            problem = self.config.problem_type
            if problem is None:
                problem = ("regression" if self.num_labels == 1 else "single_label_classification"
                           if labels.dtype in (torch.long, torch.int) else "multi_label_classification")
            if problem == "regression":
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
            elif problem == "single_label_classification":
                loss = F.cross_entropy(logits.float(), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        if return_dict is False:
            return tuple(x for x in (loss, logits, outputs.hidden_states) if x is not None)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class JinaBertForTokenClassification(JinaBertPreTrainedModel):
    """Per-token classifier: ``classifier(dropout(last_hidden_state))``, logits ``[B, L, num_labels]``; names
    ``bert.*`` (no pooler) and ``classifier.{weight,bias}``. ``labels [B, L]`` (-100 = ignore) give the loss."""

    def __init__(self, config: JinaBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = JinaBertModel(config, add_pooling_layer=False)
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.bert(input_ids, attention_mask, token_type_ids, inputs_embeds=inputs_embeds,
                            output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1), ignore_index=-100)
        if return_dict is False:
            return tuple(x for x in (loss, logits, outputs.hidden_states) if x is not None)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class JinaBertForQuestionAnswering(JinaBertPreTrainedModel):
    """Extractive QA: ``qa_outputs`` (``[H, 2]``, no dropout) gives ``start_logits`` and ``end_logits`` ``[B, L]``
    at every position (padding included, as BERT's). ``start_positions``/``end_positions [B]`` give the mean of
    the two cross-entropies; positions outside the sequence are ignored, as in BERT."""

    def __init__(self, config: JinaBertConfig):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"JinaBertForQuestionAnswering needs num_labels == 2 (start, end), got {config.num_labels}")
        self.bert = JinaBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, start_positions=None, end_positions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        outputs = self.bert(input_ids, attention_mask, token_type_ids, inputs_embeds=inputs_embeds,
                            output_hidden_states=output_hidden_states)
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = logits[..., 0].contiguous(), logits[..., 1].contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            length = start_logits.shape[1]
            start = start_positions.view(-1).clamp(0, length)
            end = end_positions.view(-1).clamp(0, length)
            loss = (F.cross_entropy(start_logits.float(), start, ignore_index=length)
                    + F.cross_entropy(end_logits.float(), end, ignore_index=length)) / 2
        if return_dict is False:
            return tuple(x for x in (loss, start_logits, end_logits, outputs.hidden_states) if x is not None)
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                            hidden_states=outputs.hidden_states)
