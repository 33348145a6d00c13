"""Import from the Hugging Face JinaBERT layout: exact round trips, both name forms, and clear errors."""

import json
import shutil

import hf_testing as H  # sets HF_HUB_OFFLINE before transformers is imported
from hf_testing import tokenizer_dir  # noqa: F401 (fixture)
import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from bilingual.export import hf_state
from bilingual.export.hf_config import HFConfigError
from bilingual.export.hf_export import export_hf
from bilingual.export.hf_import import HFImportError, import_hf


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tokenizer_dir):
    config = H.tiny_config(num_layers=1)
    params = H.init_params(config, seed=4)
    return config, params, export_hf(config, params, tmp_path_factory.mktemp("exp") / "m", tokenizer_dir=tokenizer_dir)


def _tensors(path):
    return load_file(str(path / "model.safetensors"))


def _assert_same_tensors(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name].view(np.uint8), b[name].view(np.uint8), err_msg=name)


def _model_fields(config):
    runtime = {"compute_dtype", "attention_impl", "attention_block_size", "flash_block_size",
               "chunked_min_length", "remat"}
    return {k: v for k, v in config.to_dict().items() if k not in runtime}


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("variant", [{}, {"qk_layernorm": True, "add_pooler": True}, "masked_lm",
                                     {"qk_layernorm": True, "layer_layout": "qk_post_norm", "add_pooler": True},
                                     "masked_lm_qk_post_norm"])
def test_import_then_export_reproduces_every_tensor_bit_for_bit(dtype, variant, tmp_path, tokenizer_dir):
    masked_lm = isinstance(variant, str)
    if variant == "masked_lm_qk_post_norm":
        variant = {"qk_layernorm": True, "layer_layout": "qk_post_norm"}
    config = H.tiny_config(num_layers=1, **(variant if isinstance(variant, dict) else {}))
    params = H.init_params(config, masked_lm=masked_lm, seed=5)
    if masked_lm:
        first = export_hf(config, params["bert"], tmp_path / "a", tokenizer_dir=tokenizer_dir, dtype=dtype,
                          mlm_params=params["cls"])
    else:
        first = export_hf(config, params, tmp_path / "a", tokenizer_dir=tokenizer_dir, dtype=dtype)
    config2, params2, extras = import_hf(first)
    assert extras["dtype"] == dtype and extras["masked_lm"] == masked_lm
    assert _model_fields(config2) == _model_fields(config)
    second = export_hf(config2, params2, tmp_path / "b", tokenizer_dir=tokenizer_dir, dtype=extras["dtype"],
                       mlm_params=extras["mlm_params"])
    _assert_same_tensors(_tensors(first), _tensors(second))
    assert json.loads((first / "config.json").read_text()) == json.loads((second / "config.json").read_text())
    if dtype == "float32":  # nothing was rounded: the parameters themselves come back exactly
        original = traverse_util.flatten_dict(params["bert"] if masked_lm else params)
        back = traverse_util.flatten_dict(params2)
        assert original.keys() == back.keys()
        for key in original:
            np.testing.assert_array_equal(back[key], original[key])


def test_import_of_a_transformers_saved_model_matches_torch(tmp_path, exported):
    """Weights changed in PyTorch and saved by transformers itself import to a Flax model that agrees."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    config, _, path = exported
    model = AutoModelForMaskedLM.from_pretrained(str(path), trust_remote_code=True).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.save_pretrained(str(tmp_path / "saved"))
    AutoTokenizer.from_pretrained(str(path)).save_pretrained(str(tmp_path / "saved"))
    config2, params, extras = import_hf(tmp_path / "saved")
    assert extras["masked_lm"] and extras["mlm_params"] is not None
    ids, mask = H.padded_batch(AutoTokenizer.from_pretrained(str(path)), [3, 40, 17])
    with torch.no_grad():
        hidden = model.bert(input_ids=torch.tensor(ids, dtype=torch.long),
                            attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    flax_hidden, _ = H.flax_encoder(config2, params, ids, mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(flax_hidden[valid], hidden[valid], atol=1e-5, rtol=0)


def _write_dir(path, values, tensors):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(values))
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def test_published_style_masked_lm_checkpoint(tmp_path, exported):
    """bert.-prefixed f16 weights with the tied decoder (weight and bias), a pooler and the published config."""
    config, params, path = exported
    values = json.loads((path / "config.json").read_text())
    for key in ("qk_layernorm", "layer_layout", "add_pooling_layer"):
        values.pop(key)
    values.update(architectures=["JinaBertForMaskedLM"], attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1,
                  torch_dtype="float16", attn_implementation="torch")
    tensors = {"bert." + k: v.astype(np.float16) for k, v in _tensors(path).items()}
    rng = np.random.default_rng(0)
    h = config.hidden_size
    tensors["bert.pooler.dense.weight"] = rng.standard_normal((h, h)).astype(np.float16)
    tensors["bert.pooler.dense.bias"] = rng.standard_normal(h).astype(np.float16)
    tensors["bert.embeddings.position_ids"] = np.arange(8, dtype=np.int64)[None]
    tensors["cls.predictions.transform.dense.weight"] = rng.standard_normal((h, h)).astype(np.float16)
    tensors["cls.predictions.transform.dense.bias"] = rng.standard_normal(h).astype(np.float16)
    tensors["cls.predictions.transform.LayerNorm.weight"] = np.ones(h, np.float16)
    tensors["cls.predictions.transform.LayerNorm.bias"] = np.zeros(h, np.float16)
    tensors["cls.predictions.bias"] = rng.standard_normal(config.vocab_size).astype(np.float16)
    tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"].copy()
    tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"].copy()
    config2, params2, extras = import_hf(_write_dir(tmp_path / "pub", values, tensors))
    assert config2.add_pooler and not config2.qk_layernorm
    assert config2.attention_dropout == 0.0 and config2.hidden_dropout == 0.1  # the reference's SDPA path
    assert extras["tied_aliases"] == ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]
    assert extras["ignored"] == ["bert.embeddings.position_ids"] and extras["dtype"] == "float16"
    np.testing.assert_array_equal(params2["pooler"]["dense"]["kernel"],
                                  tensors["bert.pooler.dense.weight"].astype(np.float32).T)
    np.testing.assert_array_equal(extras["mlm_params"]["predictions"]["bias"],
                                  tensors["cls.predictions.bias"].astype(np.float32))


def test_prefixed_encoder_without_head(tmp_path, exported):
    config, params, path = exported
    values = json.loads((path / "config.json").read_text())
    tensors = {"bert." + k: v for k, v in _tensors(path).items()}
    config2, params2, extras = import_hf(_write_dir(tmp_path / "p", values, tensors))
    assert not extras["masked_lm"] and extras["mlm_params"] is None
    np.testing.assert_array_equal(params2["embeddings"]["word_embeddings"]["embedding"],
                                  params["embeddings"]["word_embeddings"]["embedding"])


def test_mismatches_are_listed_together(tmp_path, exported):
    _, _, path = exported
    values = json.loads((path / "config.json").read_text())
    tensors = _tensors(path)
    del tensors["encoder.layer.0.mlp.wo.bias"]
    del tensors["embeddings.LayerNorm.weight"]
    tensors["encoder.layer.0.mlp.extra.weight"] = np.zeros((2, 2), np.float32)
    tensors["encoder.layer.0.mlp.gated_layers.weight"] = tensors["encoder.layer.0.mlp.gated_layers.weight"][:-2]
    with pytest.raises(hf_state.StateDictMismatch) as info:
        import_hf(_write_dir(tmp_path / "bad", values, tensors))
    message = str(info.value)
    assert "missing (2): embeddings.LayerNorm.weight, encoder.layer.0.mlp.wo.bias" in message
    assert "unexpected (1): encoder.layer.0.mlp.extra.weight" in message
    assert "encoder.layer.0.mlp.gated_layers.weight has (1022, 128), expected (1024, 128)" in message
    assert str(tmp_path / "bad" / "model.safetensors") in message


def test_untied_decoder_is_refused(tmp_path, exported):
    _, _, path = exported
    values = json.loads((path / "config.json").read_text())
    tensors = {"bert." + k: v for k, v in _tensors(path).items()}
    h, v = 128, values["vocab_size"]
    tensors.update({"cls.predictions.transform.dense.weight": np.zeros((h, h), np.float32),
                    "cls.predictions.transform.dense.bias": np.zeros(h, np.float32),
                    "cls.predictions.transform.LayerNorm.weight": np.ones(h, np.float32),
                    "cls.predictions.transform.LayerNorm.bias": np.zeros(h, np.float32),
                    "cls.predictions.bias": np.zeros(v, np.float32),
                    "cls.predictions.decoder.weight": np.ones((v, h), np.float32)})
    with pytest.raises(HFImportError, match="decoder.weight differs"):
        import_hf(_write_dir(tmp_path / "untied", values, tensors))


QK_POST_NORM_UPSTREAM = "jinaai/jina-bert-v2-qk-post-norm--"


def _published_es_style(path, model):
    """Save ``model`` (shipped code, qk-post-norm layer) as transformers does, then rewrite config.json like
    the published jina-embeddings-v2-base-es one: no keys of ours, auto_map at jinaai/jina-bert-v2-qk-post-norm."""
    model.save_pretrained(str(path))
    values = json.loads((path / "config.json").read_text())
    for key in ("qk_layernorm", "layer_layout", "add_pooling_layer"):
        values.pop(key, None)
    values["auto_map"] = {"AutoConfig": QK_POST_NORM_UPSTREAM + "configuration_bert.JinaBertConfig",
                          "AutoModel": QK_POST_NORM_UPSTREAM + "modeling_bert.JinaBertModel",
                          "AutoModelForMaskedLM": QK_POST_NORM_UPSTREAM + "modeling_bert.JinaBertForMaskedLM"}
    (path / "config.json").write_text(json.dumps(values))
    return path


def _qk_post_norm_torch_model(masked_lm):
    from bilingual.export.hf_code import modeling_bert as mb
    from bilingual.export.hf_code.configuration_bert import JinaBertConfig

    config = JinaBertConfig(vocab_size=640, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                            layer_layout="jina-bert-v2-qk-post-norm", attn_implementation="torch")
    model = (mb.JinaBertForMaskedLM if masked_lm else mb.JinaBertModel)(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if name.endswith("weight") and p.ndim == 1 else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("masked_lm", [False, True])
def test_published_qk_post_norm_checkpoint_imports_and_matches_torch(masked_lm, tmp_path, tokenizer_dir):
    """A jina-bert-v2-qk-post-norm checkpoint (base-es layout) becomes a layer_layout='qk_post_norm' model
    whose Flax forward equals the PyTorch one, and exports back to the same tensors."""
    from transformers import AutoTokenizer

    model = _qk_post_norm_torch_model(masked_lm)
    path = _published_es_style(tmp_path / "es", model)
    config, params, extras = import_hf(path)
    assert config.layer_layout == "qk_post_norm" and config.qk_layernorm
    assert extras["masked_lm"] == masked_lm and not config.add_pooler
    assert (config.hidden_size, config.num_layers, config.intermediate_size) == (32, 2, 48)

    ids, mask = H.padded_batch(AutoTokenizer.from_pretrained(str(tokenizer_dir)), [3, 77, 20])
    encoder = model.bert if masked_lm else model
    with torch.no_grad():
        hidden = encoder(input_ids=torch.tensor(ids, dtype=torch.long),
                         attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    flax_hidden, _ = H.flax_encoder(config, params, ids, mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(flax_hidden[valid], hidden[valid], atol=1e-5, rtol=0)

    again = export_hf(config, params, tmp_path / "again", tokenizer_dir=tokenizer_dir, dtype=extras["dtype"],
                      mlm_params=extras["mlm_params"])
    original, written = _tensors(path), _tensors(again)
    # Tied aliases: transformers may save or drop them; we always write the decoder weight, never its bias.
    original.pop("cls.predictions.decoder.bias", None)
    if masked_lm and "cls.predictions.decoder.weight" not in original:
        np.testing.assert_array_equal(written.pop("cls.predictions.decoder.weight"),
                                      original["bert.embeddings.word_embeddings.weight"])
    _assert_same_tensors(original, written)
    assert json.loads((again / "config.json").read_text())["layer_layout"] == "jina-bert-v2-qk-post-norm"


def test_qk_post_norm_names_are_detected_without_any_config_hint(tmp_path):
    model = _qk_post_norm_torch_model(False)
    model.save_pretrained(str(tmp_path / "plain"))
    values = json.loads((tmp_path / "plain" / "config.json").read_text())
    for key in ("qk_layernorm", "layer_layout", "auto_map"):
        values.pop(key, None)
    (tmp_path / "plain" / "config.json").write_text(json.dumps(values))
    config, _, _ = import_hf(tmp_path / "plain")
    assert config.layer_layout == "qk_post_norm" and config.qk_layernorm


def test_layout_contradictions_are_refused(tmp_path, exported):
    _, _, path = exported
    values = json.loads((path / "config.json").read_text())
    standard = _tensors(path)
    # Standard names, config.json saying qk-post-norm (its key, or the auto_map of base-es).
    with pytest.raises(HFImportError, match=r"tensors are in the jina-bert-implementation layout \(e\.g\. "
                                            r"encoder\.layer\.0\.mlp\..*states jina-bert-v2-qk-post-norm"):
        import_hf(_write_dir(tmp_path / "a", {**values, "layer_layout": "jina-bert-v2-qk-post-norm"}, standard))
    es_map = {"AutoModel": QK_POST_NORM_UPSTREAM + "modeling_bert.JinaBertModel"}
    no_key = {k: v for k, v in values.items() if k != "layer_layout"}
    with pytest.raises(HFImportError, match="states jina-bert-v2-qk-post-norm"):
        import_hf(_write_dir(tmp_path / "b", {**no_key, "auto_map": es_map}, standard))
    # Names of both layouts at once.
    mixed = dict(standard, **{"encoder.layer.0.layer_norm_1.weight": np.ones(128, np.float32)})
    with pytest.raises(HFImportError, match="tensors of two layer layouts"):
        import_hf(_write_dir(tmp_path / "c", values, mixed))
    with pytest.raises(HFConfigError, match="layer_layout must be one of"):
        import_hf(_write_dir(tmp_path / "d", {**values, "layer_layout": "pre-ln"}, standard))


def test_other_errors(tmp_path, exported):
    _, _, path = exported
    with pytest.raises(HFConfigError, match="config.json: not found"):
        import_hf(tmp_path)
    no_weights = tmp_path / "nw"
    no_weights.mkdir()
    shutil.copy(path / "config.json", no_weights / "config.json")
    with pytest.raises(HFImportError, match="no model.safetensors"):
        import_hf(no_weights)
    values = json.loads((path / "config.json").read_text())
    with pytest.raises(HFConfigError, match="position_embedding_type must be 'alibi'"):
        import_hf(_write_dir(tmp_path / "abs", {**values, "position_embedding_type": "absolute"}, _tensors(path)))
    with pytest.raises(HFConfigError, match="model_type must be 'bert'"):
        import_hf(_write_dir(tmp_path / "rob", {**values, "model_type": "roberta"}, _tensors(path)))
    tensors = _tensors(path)
    tensors["encoder.layer.0.mlp.wo.bias"][3] = np.nan
    with pytest.raises(HFImportError, match=r"non-finite values .* encoder.layer.0.mlp.wo.bias"):
        import_hf(_write_dir(tmp_path / "nan", values, tensors))
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "config.json").write_text('{"model_type": "bert",\n "vocab_size": }')
    with pytest.raises(HFConfigError, match="invalid JSON at line 2"):
        import_hf(tmp_path / "json")


def test_sharded_safetensors(tmp_path, exported):
    config, params, path = exported
    tensors = _tensors(path)
    target = tmp_path / "sharded"
    target.mkdir()
    shutil.copy(path / "config.json", target / "config.json")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(target / file), metadata={"format": "pt"})
    (target / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, part in shards.items() for n in part}}))
    _, params2, _ = import_hf(target)
    np.testing.assert_array_equal(params2["encoder"]["layer_0"]["mlp"]["wo"]["kernel"],
                                  params["encoder"]["layer_0"]["mlp"]["wo"]["kernel"])
