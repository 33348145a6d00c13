"""The attention implementations agree with the dense reference (f32, <= 1e-5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilingual import attention as attn
from bilingual.alibi import alibi_slopes


def random_qkv(batch, length, heads, dim, seed=0):
    rng = np.random.RandomState(seed)
    return [jnp.asarray(rng.randn(batch, length, heads, dim).astype(np.float32)) for _ in range(3)]


def padding_mask(lengths, length):
    return jnp.asarray((np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32))


@pytest.mark.parametrize("length,block,lengths", [
    (37, 8, [37, 20, 1]),      # odd length, not a multiple of the block, heavy padding
    (64, 16, [64, 63, 33]),    # multiple of the block
    (50, 64, [50, 7, 25]),     # block larger than the sequence
    (129, 32, [129, 128, 2]),
])
def test_chunked_equals_dense(length, block, lengths):
    q, k, v = random_qkv(3, length, 4, 16)
    slopes = jnp.asarray(alibi_slopes(4))
    mask = padding_mask(lengths, length)
    dense = attn.dense_attention(q, k, v, slopes, mask)
    chunked = attn.chunked_attention(q, k, v, slopes, mask, block_size=block)
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(chunked)[valid], np.asarray(dense)[valid], atol=1e-5, rtol=0)


def test_chunked_equals_dense_with_segments_and_twelve_heads():
    length = 45
    q, k, v = random_qkv(2, length, 12, 8, seed=1)
    slopes = jnp.asarray(alibi_slopes(12))
    mask = padding_mask([45, 30], length)
    seg = np.zeros((2, length), np.int32)
    seg[0, :10], seg[0, 10:31], seg[0, 31:] = 1, 2, 3
    seg[1, :30] = 1
    seg = jnp.asarray(seg)
    dense = attn.dense_attention(q, k, v, slopes, mask, seg)
    chunked = attn.chunked_attention(q, k, v, slopes, mask, seg, block_size=16)
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(chunked)[valid], np.asarray(dense)[valid], atol=1e-5, rtol=0)


def test_segments_keep_documents_apart():
    """A packed row gives each document the output it would have alone."""
    q, k, v = random_qkv(1, 24, 4, 8, seed=2)
    slopes = jnp.asarray(alibi_slopes(4))
    seg = jnp.asarray([[1] * 10 + [2] * 14])
    packed = attn.dense_attention(q, k, v, slopes, jnp.ones((1, 24), jnp.int32), seg)
    alone = attn.dense_attention(q[:, 10:], k[:, 10:], v[:, 10:], slopes, jnp.ones((1, 14), jnp.int32))
    np.testing.assert_allclose(np.asarray(packed)[:, 10:], np.asarray(alone), atol=1e-6)


def test_chunked_gradients_equal_dense():
    q, k, v = random_qkv(2, 33, 4, 8, seed=3)
    slopes = jnp.asarray(alibi_slopes(4))
    mask = padding_mask([33, 17], 33)
    weights = jnp.asarray(np.random.RandomState(4).randn(2, 33, 4, 8).astype(np.float32)) * mask[..., None, None]

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * weights)

    dense = jax.grad(lambda *a: loss(lambda q, k, v: attn.dense_attention(q, k, v, slopes, mask), *a), (0, 1, 2))(q, k, v)
    chunked = jax.grad(lambda *a: loss(lambda q, k, v: attn.chunked_attention(q, k, v, slopes, mask, block_size=8), *a),
                       (0, 1, 2))(q, k, v)
    for a, b in zip(dense, chunked):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0)


def test_fused_call_equals_dense_with_xla_backend():
    """The cuDNN path's bias/mask layout, checked through the same call with implementation='xla'."""
    q, k, v = random_qkv(2, 21, 4, 16, seed=5)
    slopes = jnp.asarray(alibi_slopes(4))
    mask = padding_mask([21, 9], 21)
    dense = attn.dense_attention(q, k, v, slopes, mask)
    fused = attn.fused_attention(q, k, v, slopes, mask, implementation="xla")
    valid = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(fused)[valid], np.asarray(dense)[valid], atol=1e-5, rtol=0)


def test_dense_matches_explicit_softmax_formula():
    """Bias added after the 1/sqrt(d) scaling, masked keys excluded."""
    q, k, v = random_qkv(1, 5, 2, 4, seed=6)
    slopes = np.asarray(alibi_slopes(2))
    mask = padding_mask([4], 5)
    out = np.asarray(attn.dense_attention(q, k, v, jnp.asarray(slopes), mask))
    qn, kn, vn = (np.asarray(x, np.float64)[0] for x in (q, k, v))
    for h in range(2):
        for i in range(4):
            s = np.array([qn[i, h] @ kn[j, h] / 2.0 - slopes[h] * abs(i - j) for j in range(4)])
            p = np.exp(s - s.max())
            p /= p.sum()
            np.testing.assert_allclose(out[0, i, h], p @ vn[:4, h], atol=1e-5)


@pytest.mark.parametrize("kwargs,expected", [
    (dict(platform="cpu", length=512, dtype=jnp.float32), "dense"),
    (dict(platform="cpu", length=8192, dtype=jnp.float32), "chunked"),
    (dict(platform="tpu", length=512, dtype=jnp.bfloat16), "dense"),
    (dict(platform="tpu", length=8192, dtype=jnp.bfloat16), "flash"),
    (dict(platform="gpu", length=512, dtype=jnp.bfloat16), "cudnn"),
    (dict(platform="gpu", length=1024, dtype=jnp.bfloat16), "cudnn"),  # at the threshold: still short
    (dict(platform="gpu", length=1025, dtype=jnp.bfloat16), "flash"),
    (dict(platform="gpu", length=8192, dtype=jnp.float32), "flash"),
    (dict(platform="gpu", length=512, dtype=jnp.float32), "dense"),
    (dict(platform="gpu", length=8192, dtype=jnp.bfloat16, head_dim=48), "chunked"),  # no Triton tile of 48
])
def test_auto_selection(kwargs, expected):
    """Above chunked_min_length no platform gets an implementation that builds [L, L] (dense or cudnn)."""
    kwargs = {"head_dim": 64, **kwargs}
    got = attn.select_implementation("auto", chunked_min_length=1024, dropout_active=False, **kwargs)
    assert got == expected


def test_auto_selection_with_attention_dropout_uses_dense_and_refuses_long_inputs():
    assert attn.select_implementation("auto", length=1024, head_dim=64, dtype=jnp.float32, platform="cpu",
                                      chunked_min_length=1024, dropout_active=True) == "dense"
    with pytest.raises(ValueError, match=r"attention dropout at length 8192.*attention_dropout=0.0"):
        attn.select_implementation("auto", length=8192, head_dim=64, dtype=jnp.float32, platform="cpu",
                                   chunked_min_length=1024, dropout_active=True)
    assert attn.select_implementation("dense", length=8192, head_dim=64, dtype=jnp.float32, platform="cpu",
                                      chunked_min_length=1024, dropout_active=True) == "dense"


def test_forced_flash_with_an_untileable_head_dim_is_a_clear_error():
    with pytest.raises(ValueError, match="flash.*head_dim=48"):
        attn.select_implementation("flash", length=128, head_dim=48, dtype=jnp.bfloat16, platform="gpu",
                                   chunked_min_length=1024, dropout_active=False)


def test_forced_cudnn_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="cudnn.*GPU"):
        attn.select_implementation("cudnn", length=128, head_dim=64, dtype=jnp.float32, platform="cpu",
                                   chunked_min_length=1024, dropout_active=False)
