"""JinaBERT configuration (``model_type: "bert"``), compatible with the published JinaBERT ``config.json``.

Shipped beside exported weights and loaded by ``transformers`` with ``trust_remote_code=True``; imports only
transformers. The fields follow ``jinaai/jina-bert-implementation``'s config; three keys are ours:

- ``qk_layernorm``: LayerNorm over the full query and key projections before the head split, in the standard
  layout (names ``attention.self.layer_norm_q`` / ``layer_norm_k``), as the bilingual Spanish model uses it.
- ``layer_layout``: ``"jina-bert-implementation"`` (post-LN BERT layer with ``mlp.gated_layers``/``mlp.wo``/
  ``mlp.layernorm``) or ``"jina-bert-v2-qk-post-norm"`` (the published qk-post-norm layer: qk-LayerNorm,
  ``layer_norm_1``/``layer_norm_2`` and ``mlp.up_gated_layer``/``mlp.down_layer``).
- ``add_pooling_layer``: whether the model has the (unused for embeddings) BERT tanh pooler.
- ``classifier_pooling``: what ``JinaBertForSequenceClassification`` classifies: ``"cls"`` (the BERT tanh
  pooler on the first token, as the reference's class; the default when the key is absent) or ``"mean"``
  (the masked mean of the last hidden states, the embedding the model is trained to produce).

``classifier_dropout`` is BERT's: the dropout before the classifier (``hidden_dropout_prob`` when ``None``).
"""

from transformers import PretrainedConfig

LAYER_LAYOUTS = ("jina-bert-implementation", "jina-bert-v2-qk-post-norm")
FEED_FORWARD_TYPES = ("geglu", "reglu")
CLASSIFIER_POOLINGS = ("cls", "mean")


class JinaBertConfig(PretrainedConfig):
    model_type = "bert"

    def __init__(
        self,
        vocab_size=30528,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=8192,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        position_embedding_type="alibi",
        feed_forward_type="geglu",
        emb_pooler=None,
        qk_layernorm=False,
        layer_layout="jina-bert-implementation",
        add_pooling_layer=False,
        classifier_pooling=None,
        classifier_dropout=None,
        attn_implementation=None,
        tie_word_embeddings=True,
        **kwargs,
    ):
        # The published configs say ``attn_implementation: "torch"`` (their own switch for torch SDPA).
        # transformers >= 5 reads that key as its attention backend and rejects "torch", so it is kept
        # here under another name. This model always computes attention with torch SDPA.
        self.jina_attn_implementation = attn_implementation
        if attn_implementation not in (None, "torch"):
            kwargs["attn_implementation"] = attn_implementation
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        # The masked-LM decoder shares the word-embedding matrix (transformers reads this flag to tie them).
        self.tie_word_embeddings = tie_word_embeddings
        if position_embedding_type != "alibi":
            raise ValueError(f"JinaBertConfig.position_embedding_type must be 'alibi', got {position_embedding_type!r}")
        if feed_forward_type not in FEED_FORWARD_TYPES:
            raise ValueError(f"JinaBertConfig.feed_forward_type must be one of {FEED_FORWARD_TYPES}, "
                             f"got {feed_forward_type!r}")
        if layer_layout not in LAYER_LAYOUTS:
            raise ValueError(f"JinaBertConfig.layer_layout must be one of {LAYER_LAYOUTS}, got {layer_layout!r}")
        if classifier_pooling is not None and classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"JinaBertConfig.classifier_pooling must be one of {CLASSIFIER_POOLINGS} (or absent: "
                             f"'cls'), got {classifier_pooling!r}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"JinaBertConfig.hidden_size ({hidden_size}) must be divisible by "
                             f"num_attention_heads ({num_attention_heads})")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.position_embedding_type = position_embedding_type
        self.feed_forward_type = feed_forward_type
        self.emb_pooler = emb_pooler
        self.qk_layernorm = qk_layernorm
        self.layer_layout = layer_layout
        self.add_pooling_layer = add_pooling_layer
        self.classifier_pooling = classifier_pooling
        self.classifier_dropout = classifier_dropout
