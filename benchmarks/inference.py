"""Inference side by side: the JAX encoder versus the exported model in sentence-transformers (PyTorch).

One run, same machine, same random `base-de` weights (exported once to a temporary Hugging Face directory):

* 2,000 bundled sentences (`data/demo/eval/`, de/en/es) embedded by `bilingual.Encoder` (packed: whole
  texts, longest first, in rows of `Encoder.pack_row_length` tokens, 64 on CPU and 256 on accelerators, and
  two block shapes, `bilingual.packing`; texts above a row padded in length buckets; `--jax_rows 64,256,off`
  adds a JAX column per row length, `off` = `packing=False`), by `SentenceTransformer(export, trust_remote_code=True)` with 2 torch threads, and
  by onnxruntime (CPU, 2 intra-op threads) on the export's `onnx/model.onnx`
  (`bilingual.export.onnx_export.onnx_encoder`: the same tokenizer, batches and pooling as
  sentence-transformers): tokens/s and the ratios;
* one 8192-token document through each: wall time (compiled / warm) and peak RSS.

Each measurement runs in a fresh subprocess, so peak RSS is that measurement's own. A byte-level BPE
tokenizer is trained on the same sentences first (seconds); the model is untrained, which does not change speed.

    python benchmarks/inference.py [--sentences 2000] [--skip_long] [--preset base-de] [--jax_rows default]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
EVAL = ROOT / "data" / "demo" / "eval"


def bundled_sentences(limit: int) -> list[str]:
    texts: list[str] = []
    for path in sorted(EVAL.rglob("*.tsv")):
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
        for row in rows:
            texts.extend(cell for cell in row[:2] if len(cell) > 3 and not cell.replace(".", "").isdigit())
    seen, unique = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    if len(unique) < limit:
        raise SystemExit(f"only {len(unique)} bundled sentences under {EVAL}, asked for {limit}")
    return unique[:limit]


def long_document(tokenizer, tokens: int, texts: list[str]) -> str:
    doc, i = "", 0
    while len(tokenizer(doc)["input_ids"]) < tokens + 16:
        doc += " " + texts[i % len(texts)]
        i += 1
    ids = tokenizer(doc, add_special_tokens=False)["input_ids"][: tokens - 2]
    return tokenizer.decode(ids)


def batch_texts(tokenizer, rows: int, length: int, texts: list[str]) -> list[str]:
    """``rows`` texts of at least ``length`` tokens each (consecutive bundled sentences joined), so that a
    batch truncated at ``length`` is exactly ``rows x length`` tokens."""
    out, i = [], 0
    while len(out) < rows:
        doc = ""
        while len(tokenizer(doc)["input_ids"]) < length + 8:
            doc += " " + texts[i % len(texts)]
            i += 1
        out.append(doc.strip())
    return out


def prepare(workdir: pathlib.Path, preset: str, n: int, rows: int = 32, length: int = 128,
            long_tokens: int = 8192) -> None:
    """Tokenizer, random weights, export; the texts, the ``rows x length`` batch and the long document as JSON."""
    sys.path.insert(0, str(ROOT))
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from bilingual import JinaBert, get_config
    from bilingual.export.hf_export import export_hf

    texts = bundled_sentences(n)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8000, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
                                   model_max_length=8192)
    fast.save_pretrained(workdir / "tokenizer")
    config = get_config(preset, hidden_dropout=0.0, pad_token_id=1)
    with jax.default_device(jax.devices("cpu")[0]):
        abstract = jax.eval_shape(lambda: nn.meta.unbox(
            JinaBert(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
    rng = np.random.default_rng(0)
    # Random matrices leaf by leaf (a whole-model jitted init alone peaks at ~2 GB); biases 0, LayerNorm scales 1.
    params = jax.tree.map(lambda s: (rng.standard_normal(s.shape, np.float32) * 0.02) if len(s.shape) > 1
                          else np.zeros(s.shape, np.float32), abstract)
    params = _layer_norm_ones(params)
    export_hf(config, params, workdir / "export", tokenizer_dir=workdir / "tokenizer")
    from bilingual.export.onnx_export import export_onnx

    export_onnx(workdir / "export")
    (workdir / "inputs.json").write_text(json.dumps({"texts": texts, "rows": rows, "length": length,
                                                     "batch": batch_texts(fast, rows, length, texts),
                                                     "long": long_document(fast, long_tokens, texts)}))


def _layer_norm_ones(params):
    import numpy as np

    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out[key] = _layer_norm_ones(value)
        else:
            out[key] = value
    for key in ("LayerNorm", "layernorm", "layer_norm_q", "layer_norm_k", "layer_norm_1", "layer_norm_2"):
        if key in out and "scale" in out[key]:
            out[key] = {**out[key], "scale": np.ones_like(out[key]["scale"])}
    return out


def run_jax(workdir: pathlib.Path, which: str, compute_dtype: str = "float32", repeats: int = 3,
            attention_impl: str = "auto", rows: str = "default") -> dict:
    """``rows``: the packed-row length (an int), ``default`` (the platform's) or ``off`` (no packing)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax

    from bilingual import Encoder

    inputs = json.loads((workdir / "inputs.json").read_text())
    encoder = Encoder.from_checkpoint(workdir / "export", compute_dtype=compute_dtype, attention_impl=attention_impl,
                                      pack_row_length=None if rows in ("default", "off") else int(rows))
    result = _timed(lambda texts, max_length: encoder.encode(texts, batch_size=32, max_length=max_length,
                                                             show_progress=False, packing=rows != "off"),
                    encoder.tokenizer, inputs, which, repeats)
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats:
        result["peak_device_gb"] = stats.get("peak_bytes_in_use", 0) / 2 ** 30
    result["backend"] = jax.default_backend()
    result["row_length"] = encoder.pack_row_length if rows != "off" else None
    return result


def run_torch(workdir: pathlib.Path, which: str, compute_dtype: str = "float32", repeats: int = 3,
              attention_impl: str = "auto") -> dict:
    import contextlib

    import torch
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 2))
    inputs = json.loads((workdir / "inputs.json").read_text())
    model = SentenceTransformer(str(workdir / "export"), trust_remote_code=True, device=device)
    # f32 weights with bf16 autocast: the same numerics as the JAX side's f32 params + bf16 compute
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if compute_dtype == "bfloat16"
                else contextlib.nullcontext())

    def encode(texts, max_length):
        model.max_seq_length = max_length
        with torch.inference_mode(), autocast:
            out = model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    # CPU: one call of the 8192-token document takes minutes and PyTorch compiles nothing, so no warm-up call
    result = _timed(encode, model.tokenizer, inputs, which, repeats, warm_up=not (which == "long" and device == "cpu"))
    if device == "cuda":
        result["peak_device_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    result["backend"] = device
    return result


def run_onnx(workdir: pathlib.Path, which: str, compute_dtype: str = "float32", repeats: int = 3,
             attention_impl: str = "auto") -> dict:
    sys.path.insert(0, str(ROOT))
    from bilingual.export.onnx_export import onnx_encoder

    if compute_dtype != "float32":
        raise SystemExit("the onnxruntime row runs the float32 graph only")
    inputs = json.loads((workdir / "inputs.json").read_text())
    encoder = onnx_encoder(workdir / "export", threads=min(2, os.cpu_count() or 2))

    def encode(texts, max_length):
        encoder.max_length = max_length
        return encoder.encode(texts, batch_size=32)

    result = _timed(encode, encoder.tokenizer, inputs, which, repeats, warm_up=which != "long")
    result["backend"] = "onnxruntime-cpu"
    return result


def _timed(encode, tokenizer, inputs, which, repeats: int = 3, warm_up: bool = True) -> dict:
    """Seconds of ``encode``: the first call (JAX: includes compilation) and the median of ``repeats`` warm
    calls. ``which``: "sentences" (the bundled sentences, max 512), "batch" (rows x length), "long" (one doc)."""
    if which == "long":
        texts, max_length, repeats = [inputs["long"]], 8192, 1
    elif which == "batch":
        texts, max_length = inputs["batch"], inputs["length"]
    else:
        texts, max_length, repeats = inputs["texts"], 512, 1
    tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
    first = None
    if warm_up:
        start = time.perf_counter()
        encode(texts, max_length)
        first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode(texts, max_length)
        times.append(time.perf_counter() - start)
    warm = sorted(times)[len(times) // 2]
    return {"tokens": tokens, "rows": len(texts), "first_s": first if first is not None else warm,
            "second_s": warm, "tokens_per_s": tokens / warm}


def child(kind: str, which: str, workdir: pathlib.Path, *extra: str) -> dict:
    """Run one measurement in a fresh interpreter (its own peak RSS / device memory); its JSON result."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--which", which, "--workdir", str(workdir),
                          *extra], capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"{kind} {which} failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--preset", default="base-de")
    parser.add_argument("--skip_long", action="store_true")
    parser.add_argument("--child", choices=["prepare", "jax", "torch", "onnx"], help=argparse.SUPPRESS)
    parser.add_argument("--which", default="sentences", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--compute_dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--attention_impl", default="auto", help="JAX side: auto, dense, chunked, cudnn")
    parser.add_argument("--repeats", type=int, default=3, help="warm calls timed per measurement (median)")
    parser.add_argument("--jax_rows", default="default",
                        help="JAX columns, comma-separated: packed-row lengths, 'default' (the platform's: 64 on "
                             "CPU, 256 elsewhere) or 'off' (padded length buckets, packing=False)")
    parser.add_argument("--rows", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, default=128, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        workdir = pathlib.Path(args.workdir)
        if args.child == "prepare":
            prepare(workdir, args.preset, args.sentences, args.rows, args.length)
            result = {}
        else:
            run = {"jax": run_jax, "torch": run_torch, "onnx": run_onnx}[args.child]
            extra = {"rows": args.jax_rows} if args.child == "jax" else {}
            result = run(workdir, args.which, args.compute_dtype, args.repeats, args.attention_impl, **extra)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        print(json.dumps(result))
        return

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; preset {args.preset}, float32, random weights")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        subprocess.run([sys.executable, __file__, "--child", "prepare", "--workdir", tmp, "--preset", args.preset,
                        "--sentences", str(args.sentences)], check=True, capture_output=True)
        variants = [v.strip() for v in args.jax_rows.split(",") if v.strip()]
        jax_runs = [child("jax", "sentences", workdir, "--jax_rows", v) for v in variants]
        jax_s = jax_runs[0]
        torch_s, onnx_s = child("torch", "sentences", workdir), child("onnx", "sentences", workdir)
        columns = [(f"JAX {r['row_length'] or 'off'}" if len(jax_runs) > 1 else "JAX", r) for r in jax_runs]
        columns += [("PyTorch", torch_s), ("ONNX RT", onnx_s)]
        print(f"\n{args.sentences} bundled sentences ({jax_s['tokens']} tokens), batch 32, max 512 tokens"
              + (f"; JAX packed rows of {jax_s['row_length']} tokens" if len(jax_runs) == 1 and jax_s["row_length"]
                 else ""))
        print(f"  {'':34s} " + " ".join(f"{name:>10s}" for name, _ in columns))
        for label, key, fmt in (("tokens/s (second pass)", "tokens_per_s", "10.0f"),
                                ("first pass incl. compile (s)", "first_s", "10.1f"),
                                ("peak RSS (GB)", "peak_rss_gb", "10.2f")):
            print(f"  {label:34s} " + " ".join(format(r[key], fmt) for _, r in columns))
        for name, r in columns[:-2]:
            print(f"  {name} / PyTorch throughput: {r['tokens_per_s'] / torch_s['tokens_per_s']:.2f}x, "
                  f"first pass {r['first_s'] / torch_s['first_s']:.2f}x PyTorch's")
        print(f"  ONNX RT / PyTorch: {onnx_s['tokens_per_s'] / torch_s['tokens_per_s']:.2f}x")
        if not args.skip_long:
            jax_l, torch_l = child("jax", "long", workdir), child("torch", "long", workdir)
            print(f"\none {jax_l['tokens']}-token document")
            print(f"  {'':34s} {'JAX':>10s} {'PyTorch':>10s}")
            print(f"  {'wall time, warm (s)':34s} {jax_l['second_s']:10.1f} {torch_l['second_s']:10.1f}")
            print(f"  {'first call incl. compile (s)':34s} {jax_l['first_s']:10.1f} {torch_l['first_s']:10.1f}")
            print(f"  {'peak RSS (GB)':34s} {jax_l['peak_rss_gb']:10.2f} {torch_l['peak_rss_gb']:10.2f}")
    print("\nPyTorch: the export's own modeling code (ALiBi built per length, no 8192^2 tensor), 2 threads.")


if __name__ == "__main__":
    main()
