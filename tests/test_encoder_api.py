"""``Encoder``: embeddings match an independent numpy forward pass; order, normalisation, bucketing,
bounded compilation, checkpoint loading and bad arguments."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_reference as ref
from tokenizer_fixture import build_tokenizer, tokenizer_dir
from bilingual import JinaBert, JinaBertForMaskedLM, get_config, hf_layout
from bilingual.artifacts import CheckpointError
from bilingual.artifacts import save_model as save_encoder
from bilingual.encoder_api import Encoder, bucket_length, bucket_rows

TEXTS = [
    "Ein Mädchen bürstet sich die Haare.",
    "A girl is brushing her hair.",
    "Una chica se cepilla el pelo.",
    "Der Hund läuft über die Wiese, und die Sonne scheint hell auf die Berge im Hintergrund des Bildes.",
    "Hola",
    "The dog runs across the meadow.",
]


@pytest.fixture(scope="module")
def model():
    config = get_config("tiny", vocab_size=1024)
    params = nn.meta.unbox(JinaBert(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    return config, params


@pytest.fixture(scope="module")
def encoder(model):
    return Encoder(*model, build_tokenizer())


def _reference_embedding(config, params, ids):
    """numpy forward pass on the exact, unpadded token ids of one text."""
    _, emb = ref.forward(hf_layout.to_state_dict(params), np.array([ids]), np.ones((1, len(ids))),
                         num_heads=config.num_heads, num_layers=config.num_layers,
                         intermediate=config.intermediate_size, eps=config.layer_norm_eps)
    return emb[0]


def test_embeddings_match_numpy_reference(model, encoder):
    config, params = model
    tok = build_tokenizer()
    got = encoder.encode(TEXTS, batch_size=4, normalize=False)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), config.hidden_size)
    for text, row in zip(TEXTS, got):
        ids = tok(text)["input_ids"]
        assert ids[0] == 0 and ids[-1] == 2  # <s> ... </s>
        np.testing.assert_allclose(row, _reference_embedding(config, params, ids), rtol=1e-4, atol=1e-5)


def test_normalisation_and_order(encoder):
    raw = encoder.encode(TEXTS, normalize=False)
    unit = encoder.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-6)
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    np.testing.assert_allclose(encoder.encode([TEXTS[i] for i in perm]), unit[perm], atol=1e-6)
    np.testing.assert_allclose(encoder.encode(TEXTS[2]), unit[2], atol=1e-6)  # one str -> [H]
    assert encoder.encode([]).shape == (0, encoder.config.hidden_size)


def test_padding_does_not_change_embeddings(encoder):
    short = TEXTS[4]
    alone = encoder.encode([short], batch_size=1)  # shape (1, 16)
    with_long = encoder.encode([short, TEXTS[3], TEXTS[0]], batch_size=8)  # padded into a (4, 32) batch
    assert len(build_tokenizer()(TEXTS[3])["input_ids"]) > 16  # so the short text is padded to >= 32
    np.testing.assert_allclose(with_long[0], alone[0], atol=1e-5)


def test_truncation_keeps_the_first_tokens(model, encoder):
    config, params = model
    tok = build_tokenizer()
    full = tok(TEXTS[3])["input_ids"]
    assert len(full) > 12
    got = encoder.encode([TEXTS[3]], max_length=12, normalize=False)[0]
    truncated = full[:11] + [2]  # transformers keeps </s> when truncating
    np.testing.assert_allclose(got, _reference_embedding(config, params, truncated), rtol=1e-4, atol=1e-5)


def test_buckets():
    assert [bucket_length(n, 512) for n in (1, 16, 17, 33, 100, 500, 512)] == [16, 16, 20, 40, 112, 512, 512]
    assert bucket_length(129, 512) == 160 and bucket_length(8000, 8192) == 8192
    # Every length maps to a bucket with at most 25% padding, and few distinct buckets exist.
    lengths = range(1, 2049)
    buckets = {bucket_length(n, 2048) for n in lengths}
    assert all(bucket_length(n, 2048) >= n and bucket_length(n, 2048) <= max(16, n * 1.25) for n in lengths)
    assert len(buckets) <= 30
    assert bucket_length(300, 300) == 300
    assert [bucket_rows(n, 32) for n in (1, 3, 5, 32, 1000)] == [1, 4, 8, 32, 32]
    assert bucket_rows(3, 24, multiple=8) == 8 and bucket_rows(20, 24, multiple=8) == 24


def test_compilations_are_bounded_and_logged(model, caplog):
    config, params = model
    config = config.replace(layer_norm_eps=1e-6)  # a configuration no other test has compiled
    encoder = Encoder(config, params, build_tokenizer())
    rng = np.random.default_rng(0)
    words = "der die das Hund Katze läuft schnell über eine grüne Wiese am Fluss".split()
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 60))) for _ in range(120)]
    with caplog.at_level(logging.INFO, logger="bilingual.encoder_api"):
        first = encoder.encode(texts, batch_size=16, packing=False)  # the padded path (packed: test_packing_encode)
    # every batch has 16 rows; lengths are buckets of bucket_length, 16..128 here (longest text < 128 tokens)
    allowed = {(16, bucket_length(n, 512)) for n in range(1, 129)}
    assert encoder.used_shapes <= allowed and len(allowed) == 13
    assert encoder._forward._cache_size() == len(encoder.compiled_shapes) == len(encoder.used_shapes)
    assert sum("compiled the encoder" in r.message for r in caplog.records) == len(encoder.used_shapes)
    second = encoder.encode(list(reversed(texts)), batch_size=16, packing=False)
    assert encoder._forward._cache_size() == len(encoder.compiled_shapes) == len(encoder.used_shapes)
    np.testing.assert_allclose(second[::-1], first, atol=1e-6)
    # another Encoder of the same configuration reuses the compiled shapes
    again = Encoder(config, params, build_tokenizer())
    again.encode(texts, batch_size=16, packing=False)
    assert again.compiled_shapes == [] and encoder._forward._cache_size() == len(encoder.used_shapes)


def test_progress_bar(encoder, capsys):
    encoder.encode(TEXTS, batch_size=2, show_progress=True)
    assert "encoding" in capsys.readouterr().err
    encoder.encode(TEXTS, batch_size=2)  # 3 batches: no bar by default
    assert "encoding" not in capsys.readouterr().err


def test_data_parallel_matches_single_device(model, encoder):
    assert jax.local_device_count() == 8
    parallel = Encoder(*model, build_tokenizer(), data_parallel=True)
    np.testing.assert_allclose(parallel.encode(TEXTS, batch_size=4), encoder.encode(TEXTS, batch_size=4), atol=1e-5)
    assert parallel.used_shapes and all(rows % 8 == 0 for rows, _ in parallel.used_shapes)


def test_attention_implementation_override(model, encoder):
    chunked = Encoder(*model, build_tokenizer(), attention_impl="chunked")
    assert chunked.config.attention_impl == "chunked" and encoder.config.attention_impl == "auto"
    np.testing.assert_allclose(chunked.encode(TEXTS, batch_size=4), encoder.encode(TEXTS, batch_size=4), atol=1e-5)
    with pytest.raises(Exception, match="attention_impl"):
        Encoder(*model, build_tokenizer(), attention_impl="splash")


def test_bad_arguments(model, encoder):
    config, params = model
    with pytest.raises(ValueError, match=r"max_length must be in \[2, 8192\]"):
        encoder.encode(TEXTS, max_length=9000)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        encoder.encode(["a", 3])
    short = Encoder(config.replace(max_length=64), params, build_tokenizer())
    assert short.encode(["x " * 200], normalize=False).shape == (1, config.hidden_size)  # default: 64 tokens
    assert short.used_shapes == {(1, 64)}
    with pytest.raises(ValueError, match=r"max_length must be in \[2, 64\]"):
        short.encode(["x"], max_length=128)
    small = config.replace(vocab_size=100)
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but EncoderConfig.vocab_size is 100"):
        Encoder(small, params, build_tokenizer())
    with pytest.raises(FileNotFoundError, match="tokenizer directory .*nope does not exist"):
        Encoder(config, params, "/nonexistent/nope")


def test_from_orbax_checkpoint(model, encoder, tmp_path):
    config, params = model
    expected = encoder.encode(TEXTS)
    # tokenizer recorded in the meta
    save_encoder(tmp_path / "a", 5, config, params, tokenizer=tokenizer_dir())
    np.testing.assert_allclose(Encoder.from_checkpoint(tmp_path / "a").encode(TEXTS), expected, atol=1e-6)
    # explicit tokenizer argument, step directory, masked-LM checkpoint
    mlm = nn.meta.unbox(JinaBertForMaskedLM(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    mlm["bert"] = params
    save_encoder(tmp_path / "b", 2, config, mlm, model_kind="masked_lm")
    loaded = Encoder.from_checkpoint(tmp_path / "b" / "2", tokenizer=tokenizer_dir())
    np.testing.assert_allclose(loaded.encode(TEXTS), expected, atol=1e-6)
    # no tokenizer anywhere -> a clear error; a tokenizer/ folder in the checkpoint root is found
    with pytest.raises(CheckpointError, match=r"no tokenizer recorded with checkpoint .*b"):
        Encoder.from_checkpoint(tmp_path / "b")
    build_tokenizer().save_pretrained(str(tmp_path / "b" / "tokenizer"))
    np.testing.assert_allclose(Encoder.from_checkpoint(tmp_path / "b").encode(TEXTS), expected, atol=1e-6)


def test_long_input_uses_chunked_attention_and_matches_reference(model, encoder):
    # ~1100 tokens: above chunked_min_length (1024), padded to the 2048 bucket.
    config, params = model
    tok = build_tokenizer()
    text = " ".join(TEXTS * 60)
    ids = tok(text, truncation=True, max_length=1100)["input_ids"]
    assert len(ids) == 1100 and config.chunked_min_length < 1100
    got = encoder.encode([text], max_length=1100, normalize=False)[0]
    assert (1, 1100) in encoder.used_shapes  # the bucket is capped at max_length
    np.testing.assert_allclose(got, _reference_embedding(config, params, ids), rtol=1e-4, atol=1e-5)
    got_2048 = encoder.encode([text, TEXTS[0]], max_length=2048, normalize=False)
    full = tok(text, truncation=True, max_length=2048)["input_ids"]
    assert len(full) == 2048 and (2, 2048) in encoder.used_shapes
    # the short text, padded to 2048 tokens next to the long one, embeds as it does alone
    np.testing.assert_allclose(got_2048[1], encoder.encode([TEXTS[0]], normalize=False)[0], atol=1e-5)


def test_from_hugging_face_export_matches_the_orbax_encoder(model, encoder, tmp_path):
    """Export -> Encoder.from_checkpoint(export dir): same embeddings, tokenizer taken from the export."""
    from bilingual.export.hf_export import export_hf

    config, params = model
    out = export_hf(config.replace(hidden_dropout=0.0), params, tmp_path / "export", tokenizer_dir=tokenizer_dir())
    loaded = Encoder.from_checkpoint(out)
    np.testing.assert_allclose(loaded.encode(TEXTS), encoder.encode(TEXTS), atol=1e-6)
    # A SentenceTransformer loads the same directory and agrees (the export's own PyTorch code).
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS, normalize_embeddings=True), encoder.encode(TEXTS), atol=1e-5)
