"""Packed inference (issue 15): ``Encoder.encode`` packs texts into two block shapes and its embeddings equal
the unpacked ones; long texts keep the padded/chunked path; truncation is explicit (issue 18, point 3)."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
from tokenizer_fixture import build_tokenizer
from bilingual import JinaBert, get_config, hf_layout
from bilingual.encoder_api import TRAINED_MAX_LENGTH, Encoder, default_pack_row_length

WORDS = "der die das Hund Katze läuft schnell über eine grüne Wiese am Fluss the dog runs".split()


@pytest.fixture(scope="module")
def model():
    config = get_config("tiny", vocab_size=1024, layer_norm_eps=1e-7)  # a configuration of its own
    params = nn.meta.unbox(JinaBert(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    return config, params


def _texts(n, max_words, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, max_words))) for _ in range(n)]


@pytest.mark.parametrize("row_length", [None, 256])
def test_packed_encode_equals_unpacked_and_uses_two_block_shapes(model, row_length):
    """``None``: the CPU default (64), where the texts above a row take the padded path; 256: all but one pack."""
    config, params = model
    encoder = Encoder(config, params, build_tokenizer(), pack_row_length=row_length)
    row = encoder.pack_row_length
    assert row == (default_pack_row_length("cpu") if row_length is None else row_length) == (row_length or 64)
    tok = build_tokenizer()
    texts = _texts(60, 40) + [" ".join(WORDS * 12)]  # the last one is longer than 256 tokens: the padded path
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    assert max(lengths[:-1]) <= 256 < lengths[-1] <= 512
    assert sum(n <= row for n in lengths) >= 16 and sum(n > row for n in lengths) >= (1 if row_length else 8)
    compiled = encoder._packed_forward._cache_size()  # the jitted forward is shared by encoders of a config
    packed = encoder.encode(texts, batch_size=8, normalize=False)
    assert encoder.packed_shapes <= {s[:2] for s in encoder.block_shapes(8, row)}
    assert encoder._packed_forward._cache_size() - compiled <= 2
    unpacked = encoder.encode(texts, batch_size=8, normalize=False, packing=False)
    # Error model: packing changes only which tokens share a matmul and the softmax row length (extra keys
    # get exactly 0 weight), so f32 reductions of n terms are summed in another order, ~ sqrt(n) * 2^-24
    # relative per layer (n = intermediate size, 2 layers): ~1e-6 of the embedding scale; 1e-5 is the issue's.
    assert np.abs(packed - unpacked).max() <= 1e-5
    # and an independent numpy forward pass on the exact, unpadded ids of a few texts
    in_row = [i for i, n in enumerate(lengths) if n <= row]
    for i in (in_row[0], in_row[-1], next(i for i, n in enumerate(lengths) if n > row), len(texts) - 1):
        ids = tok(texts[i])["input_ids"]
        _, emb = ref.forward(hf_layout.to_state_dict(params), np.array([ids]), np.ones((1, len(ids))),
                             num_heads=config.num_heads, num_layers=config.num_layers,
                             intermediate=config.intermediate_size, eps=config.layer_norm_eps)
        np.testing.assert_allclose(packed[i], emb[0], rtol=1e-4, atol=1e-5)
    # one query alone runs padded (one row), and equals its embedding among the others
    single = encoder.encode(texts[3], batch_size=8, normalize=False)
    assert np.abs(single - packed[3]).max() <= 1e-5
    assert encoder._packed_forward._cache_size() - compiled <= 2


def test_data_parallel_packed_matches_single_device(model):
    texts = _texts(30, 30, seed=1)
    one = Encoder(*model, build_tokenizer()).encode(texts, batch_size=8)
    parallel = Encoder(*model, build_tokenizer(), data_parallel=True)
    assert all(rows % 8 == 0 for rows, _, _ in parallel.block_shapes(8, parallel.pack_row_length))
    np.testing.assert_allclose(parallel.encode(texts, batch_size=8), one, atol=1e-5)


def test_truncation_is_logged_with_count_and_length(model, caplog):
    encoder = Encoder(*model, build_tokenizer())
    texts = _texts(5, 4) + [" ".join(WORDS * 3)] * 2
    with caplog.at_level(logging.WARNING, logger="bilingual.encoder_api"):
        encoder.encode(texts, max_length=16)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "truncated 2 of 7 texts to max_length=16 tokens" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bilingual.encoder_api"):
        encoder.encode(texts[:5], max_length=16)  # nothing cut: nothing said
        encoder.encode(texts[:2], max_length=TRAINED_MAX_LENGTH + 1)
        encoder.encode(texts[:2], max_length=2048)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"above the {TRAINED_MAX_LENGTH} tokens the model was trained at" in warnings[0]


def test_pack_row_length_is_checked(model):
    for bad, error in ((4, ValueError), (8193, ValueError), (64.0, TypeError)):
        with pytest.raises(error, match="pack_row_length"):
            Encoder(*model, build_tokenizer(), pack_row_length=bad)
