"""Shared helpers for the Hugging Face export/import tests: a small trained tokenizer, texts, Flax params.

The tokenizer is a byte-level BPE trained on the fly (RoBERTa specials: <s>=0, <pad>=1, </s>=2, <unk>=3,
<mask>=4), so the tests need no download and no bundled tokenizer.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import traverse_util  # noqa: E402

from bilingual import modeling  # noqa: E402
from bilingual.config import get_config  # noqa: E402

SENTENCES = [
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Berlin ist die Hauptstadt von Deutschland und hat fast vier Millionen Einwohner.",
    "Ich habe heute Morgen einen Kaffee getrunken und die Zeitung gelesen.",
    "Die Forschung an langen Dokumenten braucht Modelle mit großem Kontext.",
    "The quick brown fox jumps over the lazy dog.",
    "Madrid is the capital of Spain and its largest city.",
    "Long documents need embedding models with a large context window.",
    "She read the newspaper while drinking her morning coffee.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Madrid es la capital de España y la ciudad más poblada del país.",
    "Los documentos largos necesitan modelos con un contexto amplio.",
    "¿Dónde está la estación de tren más cercana?",
]
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
PAD_ID = 1


def train_tokenizer(out_dir, vocab_size: int = 600):
    """Train a byte-level BPE on ``SENTENCES`` and save it as a ``PreTrainedTokenizerFast`` in ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(SENTENCES * 4, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                   cls_token="<s>", sep_token="</s>", model_max_length=8192)
    fast.save_pretrained(str(out_dir))
    assert [fast.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    return fast


def long_text(index: int, min_tokens: int, tokenizer) -> str:
    """Sentences starting at ``SENTENCES[index]`` joined until the text has at least ``min_tokens`` tokens."""
    parts = []
    i = index
    while True:
        parts.append(SENTENCES[i % len(SENTENCES)])
        i += 1
        text = " ".join(parts)
        if len(tokenizer(text)["input_ids"]) >= min_tokens:
            return text


def padded_batch(tokenizer, lengths):
    """Token ids of mixed-language texts cut to exactly ``lengths`` tokens, right-padded with <pad>.

    Returns ``(input_ids [B, max(lengths)] int32, attention_mask [B, max(lengths)] int32)``.
    """
    width = max(lengths)
    ids = np.full((len(lengths), width), PAD_ID, np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for row, length in enumerate(lengths):
        tokens = tokenizer(long_text(row * 5, length, tokenizer))["input_ids"][:length]
        ids[row, :length] = tokens
        mask[row, :length] = 1
    return ids, mask


def tiny_config(**overrides):
    values = dict(vocab_size=640, hidden_dropout=0.0, pad_token_id=PAD_ID)
    values.update(overrides)
    return get_config("tiny", **values)


def perturb_norms(params, seed: int):
    """LayerNorm scales 1 + N(0, 0.3) and biases N(0, 0.1) (and the MLM output bias), so none is trivial."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, params))
    for path, value in flat.items():
        owner = path[-2] if len(path) > 1 else ""
        if path[-1] == "scale":
            flat[path] = (1.0 + 0.3 * rng.standard_normal(value.shape)).astype(np.float32)
        elif path[-1] == "bias" and (owner in ("LayerNorm", "layernorm") or owner.startswith("layer_norm")
                                     or owner == "predictions"):
            flat[path] = (0.1 * rng.standard_normal(value.shape)).astype(np.float32)
    return traverse_util.unflatten_dict(flat)


def init_params(config, *, masked_lm: bool = False, seed: int = 0):
    """Numpy parameters of ``JinaBert`` (or ``JinaBertForMaskedLM``) for ``config``, norms perturbed."""
    model = modeling.JinaBertForMaskedLM(config) if masked_lm else modeling.JinaBert(config)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = flax.linen.meta.unbox(model.init(jax.random.PRNGKey(seed), ids, jnp.ones_like(ids))["params"])
    return perturb_norms(params, seed)


def flax_encoder(config, params, ids, mask):
    """``(last_hidden_state, embedding)`` of the Flax encoder as numpy float32."""
    out = modeling.JinaBert(config).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    return np.asarray(out.last_hidden_state, np.float32), np.asarray(out.embedding, np.float32)


def normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """A small tokenizer trained once per session (shared by the export/import tests)."""
    path = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(path)
    return path
