"""The Pallas flash kernel (ALiBi inside) equals ``dense_attention``; long inputs cost linear memory.

On CPU the kernels run in Pallas interpret mode: the same kernel bodies, block loops and custom VJP as on an
accelerator, executed by XLA:CPU. Ahead-of-time lowering checks that the same kernels go through Triton (GPU)
and compile with Mosaic for a TPU v5e chip (libtpu's compiler, nothing runs).

Error model for the f32 comparisons: ``|kernel - dense| <= 2e-6 * max(1, |dense|)``. Both sides compute the
same float32 sums in a different order: the kernel's online softmax rescales its partial sums by
``exp(m_old - m_new)`` once per key block, the dense path normalises once. Reassociating a sum of ``n``
float32 terms moves it by about ``sqrt(n) * eps`` times the sum of their magnitudes (``n <= 97`` here:
``~6e-7``). Outputs are convex combinations of values (|out| < 5); gradient entries are sums over up to 97
queries and can reach ~25 (a key that is the only visible one for a whole row), hence the relative part.
Measured here: <= 9e-7 absolute on entries below 1, <= 2.5e-7 relative above.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bilingual import JinaBert, attention as attn, get_config
from bilingual.alibi import alibi_slopes
from bilingual.config import PRESETS
from bilingual.flash_attention import flash_attention
from bilingual.sharding import MeshConfig, make_mesh, sharding_context
from launch import compile_for

ATOL = RTOL = 2e-6  # f32, see the module docstring


def random_inputs(batch, length, heads, head_dim, seed):
    rng = np.random.default_rng(seed)
    q, k, v, w = (jnp.asarray(rng.standard_normal((batch, length, heads, head_dim)), jnp.float32)
                  for _ in range(4))
    return q, k, v, w


def key_mask(lengths, length):
    return jnp.asarray(np.arange(length)[None, :] < np.asarray(lengths)[:, None])


def packed_segments(lengths, length, pieces):
    """Packed rows: ``pieces`` texts per row (ids 1..pieces over the real tokens), padding id 0."""
    seg = np.zeros((len(lengths), length), np.int32)
    for row, n in enumerate(lengths):
        seg[row, :n] = 1 + (np.arange(n) * pieces) // n
    return jnp.asarray(seg)


def values_and_grads(fn, q, k, v, w):
    """``out`` and ``d/d(q, k, v)`` of ``sum(out * w)`` (a random cotangent, so every output row counts)."""
    out, vjp = jax.vjp(fn, q, k, v)
    return (out,) + vjp(w)


def assert_kernel_equals_dense(q, k, v, w, mask, segments, block_q, block_k):
    slopes = alibi_slopes(q.shape[2])
    flash = lambda q, k, v: flash_attention(q, k, v, slopes, mask, segments, block_q=block_q,
                                            block_k=block_k, interpret=True)
    dense = lambda q, k, v: attn.dense_attention(q, k, v, jnp.asarray(slopes), mask, segments)
    for name, got, want in zip(("out", "dq", "dk", "dv"), values_and_grads(flash, q, k, v, w),
                               values_and_grads(dense, q, k, v, w)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=ATOL, rtol=RTOL, err_msg=name)


@pytest.mark.parametrize("length,lengths,block_q,block_k", [
    (37, [37, 20], 16, 8),    # odd length, padding, unequal blocks
    (97, [97, 1], 32, 32),    # a row with one real token; 97 = 3 blocks + 1
    (64, [64, 63], 8, 64),    # whole length in one key block
])
def test_values_and_gradients_equal_dense_with_padding(length, lengths, block_q, block_k):
    q, k, v, w = random_inputs(2, length, 3, 16, seed=length)
    assert_kernel_equals_dense(q, k, v, w, key_mask(lengths, length), None, block_q, block_k)


def test_values_and_gradients_equal_dense_with_packed_segments():
    """Packed rows (segment 0 = padding, masked): padding queries see no key at all, and must still get the
    dense softmax's uniform average and no gradient into q / k."""
    length, lengths = 53, [53, 40]
    q, k, v, w = random_inputs(2, length, 4, 32, seed=1)
    segments = packed_segments(lengths, length, pieces=3)
    assert_kernel_equals_dense(q, k, v, w, key_mask(lengths, length), segments, 16, 16)


@pytest.mark.parametrize("preset", ["tiny", "small", "base", "large"])
def test_every_preset_head_count(preset):
    """Head counts 4 / 8 / 12 / 16 (12 is not a power of two: the slopes' second series) at the preset's
    head dim; the kernel selects each head's slope from program_id."""
    heads = PRESETS[preset]["num_heads"]
    head_dim = PRESETS[preset]["hidden_size"] // heads
    length = 29
    q, k, v, w = random_inputs(1, length, heads, head_dim, seed=heads)
    assert_kernel_equals_dense(q, k, v, w, key_mask([23], length), None, 16, 16)


def test_bf16_inputs_follow_dense_in_bf16():
    """bf16 in, bf16 out, f32 accumulation in both: they differ by bf16 roundings of p and of the output
    (eps 2^-8 relative on |out| < 5, a few of them: 0.05)."""
    length = 40
    q, k, v, w = (x.astype(jnp.bfloat16) for x in random_inputs(2, length, 4, 32, seed=7))
    mask = key_mask([40, 31], length)
    slopes = alibi_slopes(4)
    out = flash_attention(q, k, v, slopes, mask, block_q=16, block_k=16, interpret=True)
    assert out.dtype == jnp.bfloat16
    want = attn.dense_attention(q, k, v, jnp.asarray(slopes), mask)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32), atol=0.05, rtol=0)


def test_block_sizes_are_checked():
    q = jnp.zeros((1, 8, 2, 8))
    with pytest.raises(ValueError, match="block_q=24 must be a power of two"):
        flash_attention(q, q, q, alibi_slopes(2), jnp.ones((1, 8), bool), block_q=24, interpret=True)
    with pytest.raises(ValueError, match=r"slopes of shape \(3,\) for 2 heads"):
        flash_attention(q, q, q, alibi_slopes(3), jnp.ones((1, 8), bool), interpret=True)


def test_encoder_with_flash_on_a_sharded_mesh_equals_dense_on_one_device():
    """The encoder with ``attention_impl="flash"`` under a (data 2, tensor 4) mesh: the kernel runs under
    shard_map on each device's (batch, heads) slice; embeddings equal the unsharded dense encoder's.
    Tolerance: the f32 kernel error (2e-6) passed through 2 post-LN layers and mean pooling (<= 1e-5)."""
    config = get_config("tiny", hidden_dropout=0.0, flash_block_size=16)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, config.vocab_size, (4, 24)))
    mask = key_mask([24, 17, 9, 24], 24).astype(jnp.int32)
    segments = jnp.asarray(np.where(np.arange(24) < 10, 1, 2)[None].repeat(4, 0) * np.asarray(mask))
    params = jax.jit(JinaBert(config).init)(jax.random.key(0), ids)["params"]
    dense = JinaBert(config.replace(attention_impl="dense")).apply({"params": params}, ids, mask,
                                                                   segment_ids=segments)
    mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=4))
    flash_model = JinaBert(config.replace(attention_impl="flash"))
    with sharding_context(mesh):
        run = jax.jit(lambda p, i, m, s: flash_model.apply({"params": p}, i, m, segment_ids=s).last_hidden_state)
        lowered = run.lower(params, ids, mask, segments)
        sharded = run(params, ids, mask, segments)
    assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(dense.last_hidden_state), atol=1e-5, rtol=0)


def test_chunked_equals_dense_at_4096_tokens():
    """Error model: softmax over 4096 logits reassociated per 512-key block; ALiBi concentrates the weight
    on nearby keys, so few terms matter: 1e-5 absolute on outputs |out| < 5."""
    length, heads = 4096, 4
    q, k, v, _ = random_inputs(1, length, heads, 32, seed=4)
    mask = key_mask([4000], length)
    slopes = jnp.asarray(alibi_slopes(heads))
    chunked = attn.chunked_attention(q, k, v, slopes, mask, block_size=512)
    dense = attn.dense_attention(q, k, v, slopes, mask)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(dense), atol=1e-5, rtol=0)


def _temp_bytes(config, length):
    model = JinaBert(config)
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32))["params"]
    compiled = jax.jit(lambda p, i: model.apply({"params": p}, i, jnp.ones_like(i)).embedding).lower(
        params, ids).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_encoder_forward_memory_grows_linearly_with_length_on_the_auto_path():
    """XLA's compiled temporary memory of the tiny encoder's forward at 1024 and 8192 tokens (auto -> chunked
    on CPU for both, as chunked_min_length is below 1024): the ratio stays within 1.5 x the length ratio.
    The same measurement of the dense path is quadratic (its [1, 4, L, L] scores), so the bound can fail."""
    config = get_config("tiny", max_length=8192, chunked_min_length=512)
    small, large = _temp_bytes(config, 1024), _temp_bytes(config, 8192)
    assert large / small <= 1.5 * 8, (small, large)
    dense = config.replace(attention_impl="dense")
    assert _temp_bytes(dense, 8192) / _temp_bytes(dense, 1024) > 1.5 * 8


def test_kernels_lower_for_gpu_triton_and_compile_for_a_tpu_chip(tmp_path):
    """Forward and backward at 8192 tokens, 12 heads of 64, bf16: lowered for CUDA (the Pallas Triton
    lowering produces the kernels' Triton IR here; PTX is made on a GPU) and compiled for one v5e chip by
    libtpu's Mosaic compiler (in a child process: libtpu reads its environment once)."""
    script = textwrap.dedent("""
        import sys, jax, jax.numpy as jnp
        from bilingual.alibi import alibi_slopes
        from bilingual.flash_attention import flash_attention
        B, L, H, D = 1, 8192, 12, 64
        def step(target):
            def loss(q, k, v, mask, seg):
                out = flash_attention(q, k, v, alibi_slopes(H), mask, seg, target=target)
                return jnp.sum(out.astype(jnp.float32) ** 2)
            return jax.value_and_grad(loss, (0, 1, 2))
        def shapes(sharding=None):
            row = lambda dtype: jax.ShapeDtypeStruct((B, L), dtype, sharding=sharding)
            return [jax.ShapeDtypeStruct((B, L, H, D), jnp.bfloat16, sharding=sharding)] * 3 + [
                row(jnp.bool_), row(jnp.int32)]
        # no GPU here: name the target chip (JAX >= 0.12 refuses a Triton lowering without one; H200 = sm_90)
        h200 = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=None, platform="gpu")
        with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h200)):
            text = jax.jit(step("gpu")).trace(*shapes()).lower(lowering_platforms=("cuda",)).as_text()
        print("triton kernels:", text.count('stablehlo.custom_call @__gpu$xla.gpu.triton('))
        if sys.argv[1] == "tpu":
            from launch import compile_for, topology
            device = compile_for.topology_devices(topology.get("v5e-1"))[0]
            sharding = jax.sharding.SingleDeviceSharding(device)
            jax.jit(step("tpu")).lower(*shapes(sharding)).compile()
            print("tpu compiled")
    """)
    want_tpu = compile_for.find_libtpu() is not None
    result = subprocess.run([sys.executable, "-c", script, "tpu" if want_tpu else "gpu"], capture_output=True,
                            text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)),
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "triton kernels: 3" in result.stdout, result.stdout  # forward, dK/dV, dQ
    if want_tpu:
        assert "tpu compiled" in result.stdout
    else:
        pytest.skip("libtpu is not installed (make libtpu): the Triton lowering passed, the TPU compile did not run")
