"""Export to the Hugging Face JinaBERT layout: files, names, and Flax-vs-PyTorch parity.

The exported directory is loaded offline with transformers (AutoModel / AutoModelForMaskedLM) and
sentence-transformers, running the shipped PyTorch code (tested on its own in test_torch_jinabert.py).
"""

import json

import hf_testing as H  # sets HF_HUB_OFFLINE before transformers is imported
from hf_testing import tokenizer_dir  # noqa: F401 (fixture)
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from bilingual import modeling
from bilingual.tokenizer import portable_tokenizer_json
from bilingual.export import hf_state
from bilingual.export.hf_export import ExportError, export_hf

LENGTHS = [1, 2, 5, 37, 128, 311, 600]


def spec_embeddings_and_projections(layers, hidden, vocab):
    """The names both layouts share (MODEL.md): embeddings and the q/k/v projections of every layer."""
    expected = {"embeddings.word_embeddings.weight": (vocab, hidden), "embeddings.token_type_embeddings.weight": (2, hidden),
                "embeddings.LayerNorm.weight": (hidden,), "embeddings.LayerNorm.bias": (hidden,)}
    for n in range(layers):
        for proj in ("query", "key", "value"):
            expected[f"encoder.layer.{n}.attention.self.{proj}.weight"] = (hidden, hidden)
            expected[f"encoder.layer.{n}.attention.self.{proj}.bias"] = (hidden,)
    return expected


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="session")
def batch(tokenizer):
    ids, mask = H.padded_batch(tokenizer, LENGTHS)
    assert mask.sum(1).tolist() == LENGTHS
    return ids, mask


@pytest.fixture(scope="session")
def encoder(tmp_path_factory, tokenizer_dir):
    config = H.tiny_config()
    params = H.init_params(config, seed=1)
    out = export_hf(config, params, tmp_path_factory.mktemp("export") / "tiny-de-en", tokenizer_dir=tokenizer_dir)
    return config, params, out


def _load_automodel(path, cls_name="AutoModel"):
    import transformers

    return getattr(transformers, cls_name).from_pretrained(str(path), trust_remote_code=True).eval()


def _torch_forward(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))
    return out


def _assert_hidden_close(torch_hidden, flax_hidden, mask, atol):
    valid = mask.astype(bool)
    np.testing.assert_allclose(torch_hidden[valid], flax_hidden[valid], atol=atol, rtol=0)


def test_export_writes_the_published_layout(encoder, tokenizer_dir):
    config, params, out = encoder
    values = json.loads((out / "config.json").read_text())
    assert values["model_type"] == "bert" and values["architectures"] == ["JinaBertModel"]
    assert values["position_embedding_type"] == "alibi" and values["feed_forward_type"] == "geglu"
    assert values["emb_pooler"] == "mean" and values["max_position_embeddings"] == 8192
    assert values["hidden_act"] == "gelu" and values["type_vocab_size"] == 2 and values["layer_norm_eps"] == 1e-12
    assert values["attn_implementation"] == "torch" and values["torch_dtype"] == "float32"
    assert (values["vocab_size"], values["hidden_size"], values["num_hidden_layers"], values["num_attention_heads"],
            values["intermediate_size"]) == (640, 128, 2, 4, 512)
    assert values["auto_map"]["AutoModel"] == "modeling_bert.JinaBertModel"
    assert values["auto_map"]["AutoConfig"] == "configuration_bert.JinaBertConfig"
    for name in ("configuration_bert.py", "modeling_bert.py", "tokenizer.json", "tokenizer_config.json",
                 "modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "README.md"):
        assert (out / name).is_file(), name
    # Carried over in the form tokenizers 0.19 reads too (merges as strings; tests/test_export_compat.py).
    assert json.loads((out / "tokenizer.json").read_text()) == portable_tokenizer_json(
        json.loads((tokenizer_dir / "tokenizer.json").read_text()))

    tensors = load_file(str(out / "model.safetensors"))
    H_, I_, V_ = 128, 512, 640
    # Names and shapes straight from the spec's table (not from hf_layout).
    expected = spec_embeddings_and_projections(layers=2, hidden=H_, vocab=V_)
    for n in range(2):
        p = f"encoder.layer.{n}."
        expected.update({p + "attention.output.dense.weight": (H_, H_), p + "attention.output.dense.bias": (H_,),
                         p + "attention.output.LayerNorm.weight": (H_,), p + "attention.output.LayerNorm.bias": (H_,),
                         p + "mlp.gated_layers.weight": (2 * I_, H_), p + "mlp.wo.weight": (H_, I_),
                         p + "mlp.wo.bias": (H_,), p + "mlp.layernorm.weight": (H_,), p + "mlp.layernorm.bias": (H_,)})
    assert {k: v.shape for k, v in tensors.items()} == expected
    assert all(v.dtype == np.float32 for v in tensors.values())
    # Flax kernels are [in, out]; PyTorch weights [out, in].
    np.testing.assert_array_equal(tensors["encoder.layer.1.mlp.wo.weight"],
                                  np.asarray(params["encoder"]["layer_1"]["mlp"]["wo"]["kernel"]).T)


def test_automodel_matches_flax_on_a_padded_multilingual_batch(encoder, batch):
    config, params, out = encoder
    ids, mask = batch
    flax_hidden, flax_embedding = H.flax_encoder(config, params, ids, mask)
    model = _load_automodel(out)
    assert type(model).__name__ == "JinaBertModel"
    torch_out = _torch_forward(model, ids, mask)
    torch_hidden = torch_out.last_hidden_state.numpy()
    _assert_hidden_close(torch_hidden, flax_hidden, mask, atol=1e-5)
    m = mask[..., None].astype(np.float64)
    torch_embedding = (torch_hidden * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(torch_embedding, flax_embedding, atol=1e-5, rtol=0)


def test_sentence_transformers_matches_flax(encoder, tokenizer):
    from sentence_transformers import SentenceTransformer

    config, params, out = encoder
    texts = ["Berlin", "El"] + [H.long_text(i, n, tokenizer) for i, n in zip(range(0, 12, 2), LENGTHS[2:])]
    st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    assert st.max_seq_length == 8192
    st_embeddings = st.encode(texts, batch_size=4, convert_to_numpy=True)
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    assert encoded["attention_mask"].sum(1).max() >= 600 and encoded["attention_mask"].sum(1).min() <= 3
    _, flax_embedding = H.flax_encoder(config, params, encoded["input_ids"], encoded["attention_mask"])
    np.testing.assert_allclose(st_embeddings, H.normalise(flax_embedding), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(st_embeddings, axis=1), 1.0, atol=1e-6)
    # The model's own encode() loads the shipped tokenizer (from the export directory) on first use.
    model = _load_automodel(out)
    np.testing.assert_allclose(model.encode(texts[:3]), st_embeddings[:3], atol=1e-5, rtol=0)


@pytest.mark.parametrize("overrides", [{"qk_layernorm": True}, {"feed_forward_type": "reglu", "num_heads": 2},
                                       {"add_pooler": True},
                                       # 12 heads: the non-power-of-two slope list of the base models
                                       {"hidden_size": 96, "num_heads": 12, "intermediate_size": 128}])
def test_variants_match_flax(overrides, tmp_path, tokenizer_dir, batch):
    config = H.tiny_config(**overrides)
    params = H.init_params(config, seed=2)
    out = export_hf(config, params, tmp_path / "variant", tokenizer_dir=tokenizer_dir)
    names = set(load_file(str(out / "model.safetensors")))
    assert ("encoder.layer.0.attention.self.layer_norm_q.weight" in names) == config.qk_layernorm
    assert ("pooler.dense.weight" in names) == config.add_pooler
    ids, mask = batch
    flax_hidden, _ = H.flax_encoder(config, params, ids[:, :320], mask[:, :320])
    torch_out = _torch_forward(_load_automodel(out), ids[:, :320], mask[:, :320])
    _assert_hidden_close(torch_out.last_hidden_state.numpy(), flax_hidden, mask[:, :320], atol=1e-5)
    assert (torch_out.pooler_output is not None) == config.add_pooler


def test_masked_lm_head_matches_flax(tmp_path, tokenizer_dir, batch):
    config = H.tiny_config()
    params = H.init_params(config, masked_lm=True, seed=3)
    out = export_hf(config, params["bert"], tmp_path / "mlm", tokenizer_dir=tokenizer_dir, mlm_params=params["cls"])
    tensors = load_file(str(out / "model.safetensors"))
    assert all(k.startswith(("bert.", "cls.predictions.")) for k in tensors)
    assert {"cls.predictions.transform.dense.weight", "cls.predictions.transform.LayerNorm.weight",
            "cls.predictions.bias", "cls.predictions.decoder.weight"} <= set(tensors)
    np.testing.assert_array_equal(tensors["cls.predictions.decoder.weight"],
                                  tensors["bert.embeddings.word_embeddings.weight"])
    assert json.loads((out / "config.json").read_text())["architectures"] == ["JinaBertForMaskedLM"]

    ids, mask = batch
    ids, mask = ids[:, :200], mask[:, :200]
    logits, flax_out = modeling.JinaBertForMaskedLM(config).apply({"params": params}, jnp.asarray(ids),
                                                                  jnp.asarray(mask))
    model = _load_automodel(out, "AutoModelForMaskedLM")
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    torch_logits = _torch_forward(model, ids, mask).logits.numpy()
    valid = mask.astype(bool)
    np.testing.assert_allclose(torch_logits[valid], np.asarray(logits)[valid], atol=1e-4, rtol=0)
    # The encoder alone loads from the bert.-prefixed file too (transformers strips the base prefix).
    encoder_out = _torch_forward(_load_automodel(out), ids, mask)
    _assert_hidden_close(encoder_out.last_hidden_state.numpy(), np.asarray(flax_out.last_hidden_state), mask, 1e-5)


@pytest.mark.parametrize("dtype,np_dtype,atol", [("float16", np.float16, 2e-2), ("bfloat16", ml_dtypes.bfloat16, 1e-1)])
def test_half_precision_exports(dtype, np_dtype, atol, tmp_path, encoder, tokenizer_dir, batch):
    config, params, _ = encoder
    out = export_hf(config, params, tmp_path / dtype, tokenizer_dir=tokenizer_dir, dtype=dtype)
    tensors = load_file(str(out / "model.safetensors"))
    assert all(v.dtype == np_dtype for v in tensors.values())
    reference = hf_state.to_export_state_dict(params)
    np.testing.assert_array_equal(tensors["encoder.layer.0.mlp.gated_layers.weight"],
                                  reference["encoder.layer.0.mlp.gated_layers.weight"].astype(np_dtype))
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == dtype
    ids, mask = batch
    flax_hidden, _ = H.flax_encoder(config, params, ids[:, :64], mask[:, :64])
    model = _load_automodel(out)
    model = model.float()  # weights rounded to the half type, arithmetic in float32 (CPU)
    torch_hidden = _torch_forward(model, ids[:, :64], mask[:, :64]).last_hidden_state.numpy()
    _assert_hidden_close(torch_hidden, flax_hidden, mask[:, :64], atol=atol)


def upstream_auto_map(repo):
    """The whole ``auto_map`` of an ``auto_map="upstream"`` export: every class from ``repo``'s published code."""
    return {
        "AutoConfig": f"{repo}--configuration_bert.JinaBertConfig",
        "AutoModel": f"{repo}--modeling_bert.JinaBertModel",
        "AutoModelForMaskedLM": f"{repo}--modeling_bert.JinaBertForMaskedLM",
        "AutoModelForSequenceClassification": f"{repo}--modeling_bert.JinaBertForSequenceClassification",
    }


def test_upstream_auto_map(tmp_path, encoder, tokenizer_dir):
    config, params, _ = encoder
    out = export_hf(config, params, tmp_path / "up", tokenizer_dir=tokenizer_dir, auto_map="upstream")
    values = json.loads((out / "config.json").read_text())
    assert values["auto_map"] == upstream_auto_map("jinaai/jina-bert-implementation")
    assert not (out / "modeling_bert.py").exists()
    # The qk-LayerNorm in the jina-bert-implementation layer has no published code.
    qk = H.tiny_config(qk_layernorm=True)
    with pytest.raises(ExportError, match="qk-LayerNorm in the jina-bert-implementation layer"):
        export_hf(qk, H.init_params(qk), tmp_path / "qk", tokenizer_dir=tokenizer_dir, auto_map="upstream")
    assert not (tmp_path / "qk").exists()


def test_upstream_auto_map_of_the_qk_post_norm_layout(tmp_path, tokenizer_dir):
    """Like jina-embeddings-v2-base-es: auto_map points at jinaai/jina-bert-v2-qk-post-norm."""
    config = H.tiny_config(**QK_POST_NORM)
    out = export_hf(config, H.init_params(config), tmp_path / "up-es", tokenizer_dir=tokenizer_dir,
                    auto_map="upstream")
    values = json.loads((out / "config.json").read_text())
    assert values["auto_map"] == upstream_auto_map("jinaai/jina-bert-v2-qk-post-norm")
    assert values["layer_layout"] == "jina-bert-v2-qk-post-norm" and values["qk_layernorm"] is True
    assert not (out / "modeling_bert.py").exists()
    assert "`jinaai/jina-bert-v2-qk-post-norm` on the Hugging Face Hub" in (out / "README.md").read_text()


QK_POST_NORM = {"qk_layernorm": True, "layer_layout": "qk_post_norm"}


@pytest.fixture(scope="session")
def qk_post_norm_encoder(tmp_path_factory, tokenizer_dir):
    config = H.tiny_config(**QK_POST_NORM)
    params = H.init_params(config, seed=11)
    out = export_hf(config, params, tmp_path_factory.mktemp("export") / "tiny-es-en", tokenizer_dir=tokenizer_dir)
    return config, params, out


def test_qk_post_norm_export_writes_the_published_names(qk_post_norm_encoder):
    config, params, out = qk_post_norm_encoder
    values = json.loads((out / "config.json").read_text())
    assert values["layer_layout"] == "jina-bert-v2-qk-post-norm" and values["qk_layernorm"] is True
    assert values["auto_map"]["AutoModel"] == "modeling_bert.JinaBertModel"
    assert "`jina-bert-v2-qk-post-norm` layout" in (out / "README.md").read_text()
    tensors = load_file(str(out / "model.safetensors"))
    H_, I_, V_ = 128, 512, 640
    # Names and shapes of the jina-bert-v2-qk-post-norm layout, written out here (not from hf_layout).
    expected = spec_embeddings_and_projections(layers=2, hidden=H_, vocab=V_)
    for n in range(2):
        p = f"encoder.layer.{n}."
        for norm in ("attention.self.layer_norm_q", "attention.self.layer_norm_k", "attention.output.LayerNorm",
                     "layer_norm_1", "layer_norm_2"):
            expected[p + norm + ".weight"] = (H_,)
            expected[p + norm + ".bias"] = (H_,)
        expected.update({p + "attention.output.dense.weight": (H_, H_), p + "attention.output.dense.bias": (H_,),
                         p + "mlp.up_gated_layer.weight": (2 * I_, H_), p + "mlp.down_layer.weight": (H_, I_),
                         p + "mlp.down_layer.bias": (H_,)})
    assert {k: v.shape for k, v in tensors.items()} == expected
    # Rows 0..I-1 of up_gated_layer are the linear part, as in the Flax kernel's first I columns.
    np.testing.assert_array_equal(tensors["encoder.layer.0.mlp.up_gated_layer.weight"][:I_],
                                  np.asarray(params["encoder"]["layer_0"]["mlp"]["up_gated_layer"]["kernel"])[:, :I_].T)


def test_qk_post_norm_automodel_matches_flax(qk_post_norm_encoder, batch):
    config, params, out = qk_post_norm_encoder
    ids, mask = batch
    model = _load_automodel(out)
    assert model.config.layer_layout == "jina-bert-v2-qk-post-norm"
    assert type(model.encoder.layer[0].mlp).__name__ == "JinaBertQKPostNormMLP"
    torch_hidden = _torch_forward(model, ids, mask).last_hidden_state.numpy()
    m = mask[..., None].astype(np.float64)
    torch_embedding = (torch_hidden * m).sum(1) / m.sum(1)
    for impl in ("dense", "chunked"):  # lengths up to 600: both Flax attention paths against PyTorch
        flax_hidden, flax_embedding = H.flax_encoder(config.replace(attention_impl=impl, attention_block_size=128),
                                                     params, ids, mask)
        _assert_hidden_close(torch_hidden, flax_hidden, mask, atol=1e-5)
        np.testing.assert_allclose(torch_embedding, flax_embedding, atol=1e-5, rtol=0)


def test_qk_post_norm_sentence_transformers_matches_flax(qk_post_norm_encoder, tokenizer):
    from sentence_transformers import SentenceTransformer

    config, params, out = qk_post_norm_encoder
    texts = ["El", "Berlin"] + [H.long_text(i, n, tokenizer) for i, n in zip(range(1, 12, 2), LENGTHS[2:])]
    st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    st_embeddings = st.encode(texts, batch_size=4, convert_to_numpy=True)
    encoded = tokenizer(texts, padding=True, return_tensors="np")
    assert encoded["attention_mask"].sum(1).max() >= 600
    _, flax_embedding = H.flax_encoder(config, params, encoded["input_ids"], encoded["attention_mask"])
    np.testing.assert_allclose(st_embeddings, H.normalise(flax_embedding), atol=1e-5, rtol=0)


def test_qk_post_norm_masked_lm_head_matches_flax(tmp_path, tokenizer_dir, batch):
    config = H.tiny_config(**QK_POST_NORM)
    params = H.init_params(config, masked_lm=True, seed=12)
    out = export_hf(config, params["bert"], tmp_path / "mlm-es", tokenizer_dir=tokenizer_dir,
                    mlm_params=params["cls"], dtype="float32")
    tensors = load_file(str(out / "model.safetensors"))
    assert "bert.encoder.layer.1.mlp.up_gated_layer.weight" in tensors and "cls.predictions.decoder.weight" in tensors
    ids, mask = batch
    ids, mask = ids[:, :200], mask[:, :200]
    logits, _ = modeling.JinaBertForMaskedLM(config).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    torch_logits = _torch_forward(_load_automodel(out, "AutoModelForMaskedLM"), ids, mask).logits.numpy()
    valid = mask.astype(bool)
    np.testing.assert_allclose(torch_logits[valid], np.asarray(logits)[valid], atol=1e-4, rtol=0)


def test_export_errors(tmp_path, encoder, tokenizer_dir):
    config, params, _ = encoder
    with pytest.raises(ExportError, match="does not exist"):
        export_hf(config, params, tmp_path / "a", tokenizer_dir=tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExportError, match="tokenizer.json"):
        export_hf(config, params, tmp_path / "b", tokenizer_dir=empty)
    from tokenizers import Tokenizer

    size = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    small = config.replace(vocab_size=size - 1)
    with pytest.raises(ExportError, match=f"has {size} tokens but the model's vocab_size is {size - 1}"):
        export_hf(small, H.init_params(small), tmp_path / "c", tokenizer_dir=tokenizer_dir)
    with pytest.raises(ExportError, match="dtype"):
        export_hf(config, params, tmp_path / "d", tokenizer_dir=tokenizer_dir, dtype="int8")
    broken = {**params, "encoder": {k: v for k, v in params["encoder"].items() if k != "layer_1"}}
    with pytest.raises(hf_state.StateDictMismatch, match=r"missing \(15\): encoder\.layer\.1\."):
        export_hf(config, broken, tmp_path / "e", tokenizer_dir=tokenizer_dir)


def test_output_directory_policy(tmp_path, encoder, tokenizer_dir):
    config, params, _ = encoder
    out = tmp_path / "model"
    with pytest.raises(ExportError, match="neither tokenizer.json"):
        export_hf(config, params, out, tokenizer_dir=tmp_path)
    assert not out.exists() and not list(tmp_path.glob(".model.partial-*"))  # nothing half-written
    export_hf(config, params, out, tokenizer_dir=tokenizer_dir)
    with pytest.raises(ExportError, match="already holds files an export writes"):
        export_hf(config, params, out, tokenizer_dir=tokenizer_dir, auto_map="upstream")
    export_hf(config, params, out, tokenizer_dir=tokenizer_dir, auto_map="upstream", overwrite=True)
    assert not (out / "modeling_bert.py").exists()  # the earlier export's code is gone, not left stale
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    export_hf(config, params, other, tokenizer_dir=tokenizer_dir)  # other files are no export's: kept
    assert (other / "todo.txt").read_text() == "mine" and (other / "model.safetensors").is_file()
    (tmp_path / "file").write_text("")
    with pytest.raises(ExportError, match="exists and is not a directory"):
        export_hf(config, params, tmp_path / "file", tokenizer_dir=tokenizer_dir, overwrite=True)
