"""Inference side by side: the JAX encoder versus the exported model in sentence-transformers (PyTorch).

One run, same machine, same random `base-de` weights (exported once to a temporary Hugging Face directory):

* 2,000 bundled sentences (`data/demo/eval/`, de/en/es) embedded by `bilingual.Encoder` (length-sorted,
  bucketed) and by `SentenceTransformer(export, trust_remote_code=True)` with 2 torch threads: tokens/s and
  the ratio;
* one 8192-token document through each: wall time (compiled / warm) and peak RSS.

Each measurement runs in a fresh subprocess, so peak RSS is that measurement's own. A byte-level BPE
tokenizer is trained on the same sentences first (seconds); the model is untrained, which does not change speed.

    python benchmarks/inference.py [--sentences 2000] [--skip_long] [--preset base-de]
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


def prepare(workdir: pathlib.Path, preset: str, n: int) -> None:
    """Tokenizer, random weights, export; the texts and the long document as JSON."""
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
    abstract = jax.eval_shape(lambda: nn.meta.unbox(JinaBert(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
    rng = np.random.default_rng(0)
    # Random matrices leaf by leaf (a whole-model jitted init alone peaks at ~2 GB); biases 0, LayerNorm scales 1.
    params = jax.tree.map(lambda s: (rng.standard_normal(s.shape, np.float32) * 0.02) if len(s.shape) > 1
                          else np.zeros(s.shape, np.float32), abstract)
    params = _layer_norm_ones(params)
    export_hf(config, params, workdir / "export", tokenizer_dir=workdir / "tokenizer")
    (workdir / "inputs.json").write_text(json.dumps({"texts": texts,
                                                     "long": long_document(fast, 8192, texts)}))


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


def run_jax(workdir: pathlib.Path, which: str) -> dict:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bilingual import Encoder

    inputs = json.loads((workdir / "inputs.json").read_text())
    encoder = Encoder.from_checkpoint(workdir / "export")
    return _timed(lambda texts, max_length: encoder.encode(texts, batch_size=32, max_length=max_length,
                                                           show_progress=False),
                  encoder.tokenizer, inputs, which)


def run_torch(workdir: pathlib.Path, which: str) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    inputs = json.loads((workdir / "inputs.json").read_text())
    model = SentenceTransformer(str(workdir / "export"), trust_remote_code=True, device="cpu")

    def encode(texts, max_length):
        model.max_seq_length = max_length
        with torch.inference_mode():
            return model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)

    return _timed(encode, model.tokenizer, inputs, which)


def _timed(encode, tokenizer, inputs, which) -> dict:
    if which == "sentences":
        texts = inputs["texts"]
        tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"])
        start = time.perf_counter()
        encode(texts, 512)
        first = time.perf_counter() - start
        start = time.perf_counter()
        encode(texts, 512)
        second = time.perf_counter() - start
        return {"tokens": tokens, "first_s": first, "second_s": second, "tokens_per_s": tokens / second}
    doc = inputs["long"]
    tokens = len(tokenizer(doc, truncation=True, max_length=8192)["input_ids"])
    start = time.perf_counter()
    encode([doc], 8192)
    first = time.perf_counter() - start
    start = time.perf_counter()
    encode([doc], 8192)
    return {"tokens": tokens, "first_s": first, "second_s": time.perf_counter() - start}


def child(kind: str, which: str, workdir: pathlib.Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--which", which, "--workdir", str(workdir)],
                         capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"{kind} {which} failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--preset", default="base-de")
    parser.add_argument("--skip_long", action="store_true")
    parser.add_argument("--child", choices=["prepare", "jax", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--which", default="sentences", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        workdir = pathlib.Path(args.workdir)
        if args.child == "prepare":
            prepare(workdir, args.preset, args.sentences)
            result = {}
        else:
            result = (run_jax if args.child == "jax" else run_torch)(workdir, args.which)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        print(json.dumps(result))
        return

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; preset {args.preset}, float32, random weights")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        subprocess.run([sys.executable, __file__, "--child", "prepare", "--workdir", tmp, "--preset", args.preset,
                        "--sentences", str(args.sentences)], check=True, capture_output=True)
        jax_s, torch_s = child("jax", "sentences", workdir), child("torch", "sentences", workdir)
        print(f"\n{args.sentences} bundled sentences ({jax_s['tokens']} tokens), batch 32, max 512 tokens")
        print(f"  {'':34s} {'JAX':>10s} {'PyTorch':>10s}")
        print(f"  {'tokens/s (second pass)':34s} {jax_s['tokens_per_s']:10.0f} {torch_s['tokens_per_s']:10.0f}")
        print(f"  {'first pass incl. compile (s)':34s} {jax_s['first_s']:10.1f} {torch_s['first_s']:10.1f}")
        print(f"  {'peak RSS (GB)':34s} {jax_s['peak_rss_gb']:10.2f} {torch_s['peak_rss_gb']:10.2f}")
        print(f"  JAX / PyTorch throughput: {jax_s['tokens_per_s'] / torch_s['tokens_per_s']:.2f}x")
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
