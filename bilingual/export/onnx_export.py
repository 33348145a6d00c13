"""ONNX export of an exported JinaBERT directory: ``onnx/model.onnx`` for onnxruntime, transformers.js and CPU
serving (the layout of the released jina-embeddings-v2 repositories).

    python -m launch.export --checkpoint ... --tokenizer ... --out exports/de --format onnx
    python -m bilingual.export.onnx_export exports/de            # add onnx/model.onnx to an existing export

The graph is traced from the PyTorch code shipped in the export (``hf_code/modeling_bert.py``), loaded with the
export's weights, with one change: attention is computed over the whole length at once,
``softmax(q k^T / sqrt(D) + alibi + padding) v``, with the symmetric ALiBi bias ``-m_h |i - j|`` built *inside
the graph* from the input's sequence length (``Shape -> Range -> Abs -> Mul``; float32, which equals the
shipped code's float64-then-rounded bias exactly), so one graph serves every length up to
``max_position_embeddings`` (8192); no bias of a fixed size is stored. (The shipped code's query-block loop is a Python loop over the length, which a traced graph would
freeze at the trace length.) Memory is therefore O(batch * heads * length^2) per layer: about 1 GiB for the
scores of one 8192-token input per 4 heads in float32, and as much again for the bias.

Inputs ``input_ids`` and ``attention_mask`` (int64, ``[batch, sequence]``, both axes dynamic; no
``token_type_ids``: the model uses type 0). Outputs ``last_hidden_state [batch, sequence, hidden]`` and, with
``pooling="mean"`` (the default), ``sentence_embedding [batch, hidden]``: the masked mean of the last hidden
states, L2-normalised, i.e. what ``SentenceTransformer(export).encode`` returns.

Needs ``torch``, ``onnx`` and (to check or run the graph) ``onnxruntime``: the test/export extra.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import types
from typing import Optional, Sequence

import numpy as np

from bilingual.export.hf_export import ExportError

ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
ONNX_FP16_FILE = "model_fp16.onnx"
POOLINGS = ("mean", "none")
OPSET = 17  # LayerNormalization is a native op from 17; onnxruntime >= 1.14 runs it


class OnnxExportError(ExportError):
    """Missing ONNX dependencies or an export directory the ONNX export cannot use; the message says which."""


def require_onnx(runtime: bool = True) -> None:
    """Raises ``OnnxExportError`` naming the missing packages (``onnx``, ``onnxruntime``, ``torch``)."""
    missing = []
    for name in ("torch", "onnx") + (("onnxruntime",) if runtime else ()):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxExportError(f"the ONNX export needs {', '.join(missing)} (not installed): "
                              "pip install -e '.[test]' (the test/export extra pins torch, onnx and onnxruntime)")


def _full_length_attention(self, hidden, slopes, padding_bias):
    """``JinaBertSelfAttention.forward`` over the whole length, with the ALiBi bias computed from the traced
    length (bound to each attention module of the model that is traced)."""
    import torch

    q, k, v = self.query(hidden), self.key(hidden), self.value(hidden)
    if self.qk_layernorm:
        q, k = self.layer_norm_q(q), self.layer_norm_k(k)
    q, k, v = self._heads(q), self._heads(k), self._heads(v)  # [B, N, L, D]
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    # float32 gives the shipped code's float64-then-rounded bias bit for bit: the distance (< 2^24) is exact,
    # the slope is a float32 value, and an IEEE float32 product is the correctly rounded exact product.
    distance = (positions[:, None] - positions[None, :]).abs().to(q.dtype)
    alibi = -slopes.to(q.dtype)[:, None, None] * distance[None]  # [N, L, L]
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim)) + alibi[None] + padding_bias
    context = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, N, L, D]
    b, _, length, _ = context.shape
    return context.transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim)


def _graph_module(model, pooling: str):
    """A ``torch.nn.Module`` ``(input_ids, attention_mask) -> (last_hidden_state[, sentence_embedding])``
    around ``model`` (a shipped-code ``JinaBertModel``), its attention modules switched to full length."""
    import torch
    import torch.nn.functional as F

    modeling = sys.modules[type(model).__module__]
    for layer in model.encoder.layer:
        layer.attention.self.forward = types.MethodType(_full_length_attention, layer.attention.self)

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if pooling == "none":
                return (hidden,)
            pooled = modeling.mean_pooling(hidden, attention_mask)
            return hidden, F.normalize(pooled, p=2, dim=-1)

    return Graph().eval()


def _load_shipped_model(export_dir: pathlib.Path):
    """The export's weights in the project's shipped PyTorch ``JinaBertModel`` (float32)."""
    from bilingual.export.hf_code import modeling_bert
    from bilingual.export.hf_code.configuration_bert import JinaBertConfig

    config_path = export_dir / "config.json"
    if not config_path.is_file():
        raise OnnxExportError(f"{export_dir} has no config.json: not an exported model directory "
                              "(write one with python -m launch.export)")
    config = JinaBertConfig.from_pretrained(str(export_dir))
    model = modeling_bert.JinaBertModel.from_pretrained(str(export_dir), config=config)
    return model.float().eval()


def export_onnx(export_dir, out_path=None, *, pooling: str = "mean", fp16: bool = False,
                opset: int = OPSET, check: bool = True) -> pathlib.Path:
    """Write ``export_dir/onnx/model.onnx`` (or ``out_path``) from the Hugging Face export in ``export_dir``.

    Args:
      pooling: ``"mean"`` adds the ``sentence_embedding`` output (L2-normalised masked mean); ``"none"`` gives
        ``last_hidden_state`` only.
      fp16: also write ``model_fp16.onnx`` beside it (weights and activations in float16, inputs and outputs
        float32; for GPU execution providers: onnxruntime's CPU provider lacks float16 kernels for some ops).
      check: run ``onnx.checker`` on the result and compare onnxruntime against the PyTorch model on a short
        padded batch (fails with ``OnnxExportError`` beyond 1e-4).
    Returns the path of ``model.onnx``.
    """
    require_onnx(runtime=check)
    import torch

    if pooling not in POOLINGS:
        raise OnnxExportError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    export_dir = pathlib.Path(export_dir)
    out_path = pathlib.Path(out_path) if out_path is not None else export_dir / ONNX_DIR / ONNX_FILE
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = _load_shipped_model(export_dir)
    graph = _graph_module(model, pooling)
    # Trace inputs: two rows, one padded, so the padding branch is in the graph.
    ids = torch.tensor([[0, 5, 6, 7, 8, 9, 10, 2], [0, 5, 6, 2, 1, 1, 1, 1]], dtype=torch.long)
    ids = ids.clamp(max=model.config.vocab_size - 1)
    mask = torch.tensor([[1] * 8, [1] * 4 + [0] * 4], dtype=torch.long)
    outputs = ["last_hidden_state"] + (["sentence_embedding"] if pooling == "mean" else [])
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "last_hidden_state": {0: "batch", 1: "sequence"}, "sentence_embedding": {0: "batch"}}
    partial = out_path.with_name(out_path.name + f".partial-{os.getpid()}")
    try:
        with torch.no_grad():
            torch.onnx.export(graph, (ids, mask), str(partial), input_names=["input_ids", "attention_mask"],
                              output_names=outputs, dynamic_axes={k: axes[k] for k in ["input_ids",
                                                                                      "attention_mask", *outputs]},
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        if check:
            _check(partial, graph, model.config.vocab_size)
        os.replace(partial, out_path)
    finally:
        if partial.exists():
            partial.unlink()
    if fp16:
        _write_fp16(out_path, out_path.with_name(ONNX_FP16_FILE))
    return out_path


def _check(path: pathlib.Path, graph, vocab_size: int) -> None:
    """onnx.checker, then onnxruntime vs the traced PyTorch module at a length other than the trace length."""
    import onnx
    import torch

    onnx.checker.check_model(str(path))
    rng = np.random.default_rng(0)
    ids = rng.integers(5, vocab_size, size=(3, 21)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 13:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        expected = graph(torch.from_numpy(ids), torch.from_numpy(mask))[0].numpy()
    got = session(path).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    worst = float(np.abs(got - expected)[mask.astype(bool)].max())
    if not worst <= 1e-4:
        raise OnnxExportError(f"{path}: onnxruntime differs from PyTorch by {worst:.2e} (> 1e-4)")


def _write_fp16(src: pathlib.Path, dst: pathlib.Path) -> None:
    """float16 weights and activations, float32 inputs/outputs (``onnxruntime.transformers`` float16 converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def session(path, threads: Optional[int] = None):
    """An onnxruntime CPU ``InferenceSession`` for ``path`` (``threads`` intra-op threads; default: onnxruntime's)."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """Sentence embeddings from ``onnx/model.onnx`` of an export, tokenised with the export's tokenizer; the same
    contract as ``SentenceTransformer(export).encode`` (L2-normalised mean pooling, inputs truncated to the
    export's ``max_seq_length``, batches formed after sorting by length)."""

    def __init__(self, export_dir, onnx_path=None, threads: Optional[int] = None):
        from transformers import AutoTokenizer

        export_dir = pathlib.Path(export_dir)
        self.path = pathlib.Path(onnx_path) if onnx_path is not None else export_dir / ONNX_DIR / ONNX_FILE
        if not self.path.is_file():
            raise OnnxExportError(f"{self.path} does not exist (write it with python -m bilingual.export.onnx_export "
                                  f"{export_dir})")
        self.session = session(self.path, threads)
        names = [o.name for o in self.session.get_outputs()]
        if "sentence_embedding" not in names:
            raise OnnxExportError(f"{self.path} has no sentence_embedding output (exported with pooling='none')")
        self.tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
        st_config = export_dir / "sentence_bert_config.json"
        self.max_length = (json.loads(st_config.read_text()).get("max_seq_length") if st_config.is_file()
                           else None) or 8192

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """``[len(texts), hidden]`` float32 L2-normalised embeddings."""
        texts = list(texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = [texts[i] for i in order[start:start + batch_size]]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
            feeds = {"input_ids": enc["input_ids"].astype(np.int64),
                     "attention_mask": enc["attention_mask"].astype(np.int64)}
            chunks.append(self.session.run(["sentence_embedding"], feeds)[0])
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
        out = np.empty_like(embeddings)
        out[order] = embeddings
        return out


def onnx_encoder(export_dir, onnx_path=None, threads: Optional[int] = None) -> OnnxEncoder:
    """An object with ``encode(texts, batch_size)`` over the export's ONNX graph (for benchmarks/inference.py)."""
    return OnnxEncoder(export_dir, onnx_path, threads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", help="a Hugging Face export directory (python -m launch.export)")
    parser.add_argument("--out", default=None, help="output file (default: EXPORT_DIR/onnx/model.onnx)")
    parser.add_argument("--pooling", default="mean", choices=POOLINGS)
    parser.add_argument("--fp16", action="store_true", help="also write onnx/model_fp16.onnx")
    args = parser.parse_args(argv)
    try:
        path = export_onnx(args.export_dir, args.out, pooling=args.pooling, fp16=args.fp16)
    except OnnxExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
