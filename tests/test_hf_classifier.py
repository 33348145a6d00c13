"""Export/import of fine-tuned heads in the reference ``JinaBertFor*`` layouts (sequence classification and
regression, token classification, QA): files and names, transformers' custom-code loading with Flax-vs-PyTorch
logit parity, and the round trip."""

import json

import hf_testing as H  # sets HF_HUB_OFFLINE before transformers is imported
from hf_testing import tokenizer_dir  # noqa: F401 (fixture)
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from bilingual.export.hf_classifier import export_classifier, import_classifier
from bilingual.export.hf_export import ExportError, export_hf
from bilingual.export.hf_import import HFImportError
from bilingual.export.hf_state import StateDictMismatch
from bilingual.heads import HeadConfig, init_head_params, model_for_head

LENGTHS = [1, 3, 17, 40]
LABELS = ["entailment", "neutral", "contradiction"]
CASES = {
    "cls": (HeadConfig("classification", num_labels=3, pooling="cls"), LABELS),
    "mean": (HeadConfig("classification", num_labels=3, pooling="mean"), LABELS),
    "regression": (HeadConfig("regression", num_labels=1, pooling="cls"), ["similarity"]),
    "regression-mean": (HeadConfig("regression", num_labels=1, pooling="mean"), None),
    "token": (HeadConfig("token_classification", num_labels=5), ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
    "qa": (HeadConfig("question_answering"), None),
}
SEQUENCE_CASES = ["cls", "mean", "regression", "regression-mean"]
ARCHITECTURES = {"classification": "JinaBertForSequenceClassification",
                 "regression": "JinaBertForSequenceClassification",
                 "token_classification": "JinaBertForTokenClassification",
                 "question_answering": "JinaBertForQuestionAnswering"}
AUTO_CLASSES = {"classification": "AutoModelForSequenceClassification",
                "regression": "AutoModelForSequenceClassification",
                "token_classification": "AutoModelForTokenClassification",
                "question_answering": "AutoModelForQuestionAnswering"}


def output_name(head):
    return "qa_outputs" if head.task == "question_answering" else "classifier"


def head_params(config, head, seed=1):
    """A fine-tuned-looking tree: a perturbed encoder, a random head with non-zero biases."""
    model = model_for_head(config, head)
    params = init_head_params(model, jax.random.key(seed), H.init_params(config, seed=seed))
    params = jax.tree.map(np.asarray, params)
    rng = np.random.default_rng(seed)
    out = output_name(head)
    params[out]["bias"] = (0.5 * rng.standard_normal(head.num_outputs)).astype(np.float32)
    params[out]["kernel"] = (0.2 * rng.standard_normal((config.hidden_size, head.num_outputs))).astype(np.float32)
    if head.uses_pooler:
        params["bert"]["pooler"]["dense"]["bias"] = (0.1 * rng.standard_normal(config.hidden_size)).astype(np.float32)
    return params


@pytest.fixture(scope="module")
def batch(tokenizer_dir):
    from transformers import AutoTokenizer

    ids, mask = H.padded_batch(AutoTokenizer.from_pretrained(str(tokenizer_dir)), LENGTHS)
    types = ((np.arange(ids.shape[1])[None, :] >= np.asarray(LENGTHS)[:, None] // 2) * mask).astype(np.int32)
    return ids, mask, types  # a packed pair: the second half of each text has token type 1


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tokenizer_dir):
    config = H.tiny_config()
    out = {}
    for name, (head, labels) in CASES.items():
        params = head_params(config, head)
        path = export_classifier(config, head, params, tmp_path_factory.mktemp("clf") / name,
                                 tokenizer_dir=tokenizer_dir, labels=labels)
        out[name] = (config, head, labels, params, path)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_export_writes_the_reference_layout(exports, name):
    config, head, labels, params, path = exports[name]
    values = json.loads((path / "config.json").read_text())
    architecture = ARCHITECTURES[head.task]
    assert values["architectures"] == [architecture]
    assert values["auto_map"][AUTO_CLASSES[head.task]] == f"modeling_bert.{architecture}"
    assert values["auto_map"]["AutoModel"] == "modeling_bert.JinaBertModel"
    assert values["num_labels"] == head.num_outputs
    names = labels or [f"LABEL_{i}" for i in range(head.num_outputs)]
    assert values["id2label"] == {str(i): n for i, n in enumerate(names)}
    assert values["label2id"] == {n: i for i, n in enumerate(names)}
    assert values["classifier_dropout"] == head.dropout
    assert values["add_pooling_layer"] == head.uses_pooler
    if name in SEQUENCE_CASES:
        assert values["problem_type"] == ("regression" if head.task == "regression" else "single_label_classification")
        assert values["classifier_pooling"] == head.pooling
    else:
        assert "problem_type" not in values and "classifier_pooling" not in values
    tensors = load_file(str(path / "model.safetensors"))
    out = output_name(head)
    assert tensors[f"{out}.weight"].shape == (head.num_outputs, config.hidden_size)
    np.testing.assert_array_equal(tensors[f"{out}.weight"], params[out]["kernel"].T)
    np.testing.assert_array_equal(tensors[f"{out}.bias"], params[out]["bias"])
    np.testing.assert_array_equal(tensors["bert.embeddings.word_embeddings.weight"],
                                  params["bert"]["embeddings"]["word_embeddings"]["embedding"])
    np.testing.assert_array_equal(tensors["bert.encoder.layer.1.mlp.gated_layers.weight"],
                                  params["bert"]["encoder"]["layer_1"]["mlp"]["gated_layers"]["kernel"].T)
    assert ("bert.pooler.dense.weight" in tensors) == head.uses_pooler
    assert all(n.startswith("bert.") or n.startswith(out + ".") for n in tensors)
    assert (path / "modeling_bert.py").is_file() and (path / "tokenizer.json").is_file()


@pytest.mark.parametrize("name", list(CASES))
def test_transformers_logits_equal_flax_logits(exports, batch, name):
    import transformers

    config, head, labels, params, path = exports[name]
    ids, mask, types = batch
    flax_out = model_for_head(config, head).apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    auto = getattr(transformers, AUTO_CLASSES[head.task])
    model, info = auto.from_pretrained(str(path), trust_remote_code=True, output_loading_info=True)
    model.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(model).__name__ == ARCHITECTURES[head.task]
    assert model.config.num_labels == head.num_outputs
    if labels:
        assert model.config.id2label == dict(enumerate(labels))
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(types, dtype=torch.long))
    valid = mask.astype(bool)
    if name in SEQUENCE_CASES:
        assert out.logits.shape == flax_out.shape == (len(LENGTHS), head.num_labels)
        np.testing.assert_allclose(out.logits.numpy(), np.asarray(flax_out), atol=1e-5, rtol=0)
    elif head.task == "token_classification":
        assert out.logits.shape == flax_out.shape == (len(LENGTHS), ids.shape[1], head.num_labels)
        np.testing.assert_allclose(out.logits.numpy()[valid], np.asarray(flax_out)[valid], atol=1e-5, rtol=0)
    else:  # QA: the Flax model masks padding, BERT's QA head does not; real positions must agree
        for torch_logits, flax_logits in ((out.start_logits, flax_out[0]), (out.end_logits, flax_out[1])):
            assert torch_logits.shape == flax_logits.shape == ids.shape
            np.testing.assert_allclose(torch_logits.numpy()[valid], np.asarray(flax_logits)[valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_import_round_trips_the_export(exports, name):
    config, head, labels, params, path = exports[name]
    got_config, got_head, got_params, got_labels = import_classifier(path)
    assert got_config == config
    assert got_head == head
    assert got_labels == (labels or ([] if head.task == "question_answering" else ["LABEL_0"]))
    assert jax.tree.structure(got_params) == jax.tree.structure(params)
    for got, want in zip(jax.tree.leaves(got_params), jax.tree.leaves(params)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def test_config_without_classifier_pooling_is_the_reference_cls_head(exports, tmp_path):
    """A config.json written by the reference code has no classifier_pooling: CLS with the pooler."""
    import shutil

    config, head, labels, params, path = exports["cls"]
    copy = tmp_path / "reference"
    shutil.copytree(path, copy)
    values = json.loads((copy / "config.json").read_text())
    del values["classifier_pooling"], values["problem_type"]
    values["classifier_dropout"] = None
    (copy / "config.json").write_text(json.dumps(values))
    _, got_head, _, got_labels = import_classifier(copy)
    assert got_head == HeadConfig("classification", num_labels=3, pooling="cls", dropout=config.hidden_dropout)
    assert got_labels == labels


def test_half_precision_export_round_trips_the_stored_values(tmp_path, tokenizer_dir):
    config = H.tiny_config()
    head = HeadConfig("classification", num_labels=2, pooling="mean")
    params = head_params(config, head, seed=3)
    path = export_classifier(config, head, params, tmp_path / "fp16", tokenizer_dir=tokenizer_dir, dtype="float16")
    assert json.loads((path / "config.json").read_text())["torch_dtype"] == "float16"
    _, _, got, _ = import_classifier(path)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
        np.testing.assert_array_equal(g, w.astype(np.float16).astype(np.float32))


def test_export_errors_name_the_problem(tmp_path, tokenizer_dir):
    config = H.tiny_config()
    head = HeadConfig("classification", num_labels=3, pooling="mean")
    params = head_params(config, head)
    with pytest.raises(ExportError, match="labels has 2 names but HeadConfig.num_labels=3"):
        export_classifier(config, head, params, tmp_path / "a", tokenizer_dir=tokenizer_dir, labels=["x", "y"])
    with pytest.raises(ExportError, match="auto_map='upstream' cannot describe a mean-pooling classifier"):
        export_classifier(config, head, params, tmp_path / "b", tokenizer_dir=tokenizer_dir, auto_map="upstream")
    with pytest.raises(ExportError, match="auto_map='upstream' is not offered for HeadConfig.task='token_classification'"):
        export_classifier(config, HeadConfig("token_classification", num_labels=3), params, tmp_path / "c",
                          tokenizer_dir=tokenizer_dir, auto_map="upstream")
    with pytest.raises(ExportError, match="question-answering head has no label names"):
        export_classifier(config, HeadConfig("question_answering"), params, tmp_path / "c",
                          tokenizer_dir=tokenizer_dir, labels=["a", "b"])
    cls_head = HeadConfig("classification", num_labels=3, pooling="cls")
    with pytest.raises(StateDictMismatch, match=r"missing \(2\): bert.pooler.dense.bias, bert.pooler.dense.weight"):
        export_classifier(config, cls_head, params, tmp_path / "d", tokenizer_dir=tokenizer_dir)
    assert not any(p.name in "abcd" for p in tmp_path.iterdir())


def test_upstream_auto_map_for_a_cls_classifier(tmp_path, tokenizer_dir):
    config = H.tiny_config()
    head = HeadConfig("classification", num_labels=2)
    path = export_classifier(config, head, head_params(config, head), tmp_path / "up", tokenizer_dir=tokenizer_dir,
                             auto_map="upstream")
    values = json.loads((path / "config.json").read_text())
    assert values["auto_map"]["AutoModelForSequenceClassification"] == (
        "jinaai/jina-bert-implementation--modeling_bert.JinaBertForSequenceClassification")
    assert not (path / "modeling_bert.py").exists()


def test_import_refuses_an_encoder_export_and_a_classifier_missing_its_pooler(tmp_path, tokenizer_dir, exports):
    config = H.tiny_config()
    encoder = export_hf(config, H.init_params(config), tmp_path / "enc", tokenizer_dir=tokenizer_dir)
    with pytest.raises(HFImportError, match=r"architectures is \['JinaBertModel'\], not one of"):
        import_classifier(encoder)
    # A CLS classifier whose pooler tensors are gone: every parameter must come from the file.
    from safetensors.numpy import save_file
    import shutil

    path = tmp_path / "nopooler"
    shutil.copytree(exports["cls"][4], path)
    tensors = load_file(str(path / "model.safetensors"))
    save_file({n: v for n, v in tensors.items() if not n.startswith("bert.pooler.")}, str(path / "model.safetensors"))
    with pytest.raises(StateDictMismatch, match="missing .*bert.pooler.dense.weight"):
        import_classifier(path)


def test_sentence_transformers_cross_encoder_scores_pairs_like_flax(exports, tokenizer_dir):
    """A pair regressor is a cross-encoder: CrossEncoder.predict = sigmoid(Flax logit) on the packed pair."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer

    config, head, _, params, path = exports["regression-mean"]
    pairs = [("Der Hund schläft im Garten.", "The dog sleeps in the garden."),
             ("Madrid es la capital de España.", "Berlin ist die Hauptstadt von Deutschland und hat fast vier Millionen Einwohner.")]
    scores = CrossEncoder(str(path), trust_remote_code=True, device="cpu").predict(pairs)
    encoded = AutoTokenizer.from_pretrained(str(tokenizer_dir))([a for a, _ in pairs], [b for _, b in pairs],
                                                                padding=True, return_tensors="np")
    types = encoded.get("token_type_ids")
    logits = np.asarray(model_for_head(config, head).apply(
        {"params": params}, jnp.asarray(encoded["input_ids"], jnp.int32), jnp.asarray(encoded["attention_mask"]),
        None if types is None else jnp.asarray(types, jnp.int32)))[:, 0]
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), atol=1e-5)


def test_qk_post_norm_classifier_parity_and_round_trip(tmp_path, tokenizer_dir, batch):
    """The base-es layer (jina-bert-v2-qk-post-norm names) under a CLS classifier."""
    from transformers import AutoModelForSequenceClassification

    config = H.tiny_config(qk_layernorm=True, layer_layout="qk_post_norm")
    head = HeadConfig("classification", num_labels=2, pooling="cls", dropout=0.2)
    params = head_params(config, head, seed=5)
    path = export_classifier(config, head, params, tmp_path / "es", tokenizer_dir=tokenizer_dir, labels=["no", "yes"])
    assert "bert.encoder.layer.0.mlp.up_gated_layer.weight" in load_file(str(path / "model.safetensors"))
    ids, mask, types = batch
    flax_logits = np.asarray(model_for_head(config, head).apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)))
    model = AutoModelForSequenceClassification.from_pretrained(str(path), trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                       token_type_ids=torch.tensor(types, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(logits, flax_logits, atol=1e-5, rtol=0)
    got_config, got_head, got_params, got_labels = import_classifier(path)
    assert (got_config, got_head, got_labels) == (config, head, ["no", "yes"])
    for got, want in zip(jax.tree.leaves(got_params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(got, want)
