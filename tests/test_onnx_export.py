"""ONNX export (bilingual/export/onnx_export.py): onnxruntime (CPU) against the Flax model at 16, 512, 4096 and
8192 tokens, dynamic axes, and the ALiBi bias built in the graph rather than stored.

Reference: the Flax encoder (bilingual.modeling), independent of the PyTorch code the graph is traced from.
Tolerance 1e-5 (absolute, on last hidden states and on L2-normalised embeddings), as the Flax-vs-PyTorch tests:
both sides compute in float32, and a float32 dot product of K terms carries a relative error of about
sqrt(K) * 6e-8 (K <= 512 for the feed-forward, <= 8192 for attention's value sum, whose weights sum to 1), so a
few 1e-7 relative per layer. The last hidden states are O(1)-O(5) (LayerNorm scales perturbed to 1 +- 0.3), and
the measured worst case is 1.4e-6 / 2.9e-6 / 3.8e-6 at 16 / 512 / 4096 tokens; the unit-norm embeddings average
out to ~2e-7. A wrong bias (a one-position ALiBi shift, a missing padding mask) moves values by 1e-2 or more.
"""

import hf_testing as H  # sets HF_HUB_OFFLINE before transformers is imported
from hf_testing import tokenizer_dir  # noqa: F401 (fixture)
import numpy as np
import pytest
from safetensors.numpy import load_file

onnx = pytest.importorskip("onnx", reason="onnx is in the test/export extra (pip install -e '.[test]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the test/export extra")

from bilingual.export import onnx_export  # noqa: E402
from bilingual.export.hf_export import export_hf  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer_dir):
    config = H.tiny_config()
    params = H.init_params(config, seed=3)
    out = export_hf(config, params, tmp_path_factory.mktemp("onnx") / "tiny", tokenizer_dir=tokenizer_dir)
    path = onnx_export.export_onnx(out)
    return config, params, out, path


def _batch(config, lengths, seed):
    """Random token ids (specials excluded), right-padded rows of the given lengths."""
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.full((len(lengths), width), H.PAD_ID, np.int64)
    mask = np.zeros((len(lengths), width), np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(5, config.vocab_size, size=length)
        mask[row, :length] = 1
    return ids, mask


def test_graph_has_dynamic_axes_and_stores_no_bias(exported):
    config, _, out, path = exported
    model = onnx.load(str(path))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert [o.name for o in model.graph.output] == ["last_hidden_state", "sentence_embedding"]
    # Every stored tensor bigger than the per-head slopes is a weight of the model: no [N, L, L] bias (nor any
    # length-sized table) is baked in, so the bias can only come from the graph's own Range over the length.
    weight_shapes = {tuple(sorted(v.shape)) for v in load_file(str(out / "model.safetensors")).values()}
    stored = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer]
    stored += [onnx.numpy_helper.to_array(a.t) for n in model.graph.node if n.op_type == "Constant"
               for a in n.attribute if a.name == "value"]
    for array in stored:
        if array.size > config.num_heads:
            assert tuple(sorted(array.shape)) in weight_shapes, array.shape
    assert any(n.op_type == "Range" for n in model.graph.node)


@pytest.mark.parametrize("length", [16, 512, 4096])
def test_onnxruntime_matches_flax(exported, length):
    config, params, _, path = exported
    ids, mask = _batch(config, [length, length // 2 + 3], seed=length)
    flax_hidden, flax_embedding = H.flax_encoder(config, params, ids.astype(np.int32), mask.astype(np.int32))
    hidden, embedding = onnx_export.session(path).run(None, {"input_ids": ids, "attention_mask": mask})
    valid = mask.astype(bool)
    np.testing.assert_allclose(hidden[valid], flax_hidden[valid], atol=ATOL, rtol=0)
    np.testing.assert_allclose(embedding, H.normalise(flax_embedding), atol=ATOL, rtol=0)


def test_onnxruntime_runs_at_8192_tokens(exported):
    """The longest input the model takes (one row: the scores and bias are [4, 8192, 8192] float32, 1 GiB each)."""
    config, params, _, path = exported
    ids, mask = _batch(config, [8192], seed=8192)
    (embedding,) = onnx_export.session(path).run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})
    _, flax_embedding = H.flax_encoder(config, params, ids.astype(np.int32), mask.astype(np.int32))
    np.testing.assert_allclose(embedding, H.normalise(flax_embedding), atol=ATOL, rtol=0)


def test_onnx_encoder_matches_sentence_transformers(exported):
    """``onnx_encoder(export).encode`` (tokenizer + graph, what benchmarks time) against sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    _, _, out, _ = exported
    texts = H.SENTENCES + [H.SENTENCES[0] * 12]
    got = onnx_export.onnx_encoder(out).encode(texts, batch_size=4)
    expected = SentenceTransformer(str(out), trust_remote_code=True, device="cpu").encode(texts, batch_size=4)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_pooling_none_and_errors(exported, tmp_path):
    config, _, out, _ = exported
    path = onnx_export.export_onnx(out, tmp_path / "hidden.onnx", pooling="none")
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["last_hidden_state"]
    with pytest.raises(onnx_export.OnnxExportError, match="pooling"):
        onnx_export.export_onnx(out, tmp_path / "x.onnx", pooling="cls")
    with pytest.raises(onnx_export.OnnxExportError, match="config.json"):
        onnx_export.export_onnx(tmp_path, tmp_path / "y.onnx")
    with pytest.raises(onnx_export.OnnxExportError, match="sentence_embedding"):
        onnx_export.onnx_encoder(out, path)


def test_fp16_variant(exported, tmp_path):
    """``fp16=True`` adds model_fp16.onnx (float16 inside, float32 in/out). Tolerance 5e-3: float16's unit
    roundoff is 4.9e-4, and a few roundings of O(1) values through two layers stay within ten of it."""
    config, _, out, _ = exported
    path = onnx_export.export_onnx(out, tmp_path / "model.onnx", fp16=True)
    ids, mask = _batch(config, [300, 100], seed=1)
    full = onnx_export.session(path).run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    half = onnx_export.session(tmp_path / onnx_export.ONNX_FP16_FILE).run(
        ["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, atol=5e-3, rtol=0)


def test_command_lines(exported, tmp_path, monkeypatch, capsys):
    from launch import export as export_cli

    _, _, out, _ = exported
    target = tmp_path / "cli.onnx"
    assert onnx_export.main([str(out), "--out", str(target)]) == 0
    assert target.is_file() and "wrote" in capsys.readouterr().out
    # A missing dependency is named before anything is read or written.
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    rc = export_cli.main(["--checkpoint", str(tmp_path / "none"), "--tokenizer", str(tmp_path), "--out",
                          str(tmp_path / "never"), "--format", "onnx"])
    assert rc == 2
    assert "needs onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
