"""Encoder.encode (length-sorted, bucketed) against two naive batching baselines.

    python benchmarks/encode_throughput.py [--preset tiny] [--n 2000] [--batch-size 32]

Texts: the distinct texts of the bundled demo eval data (STS sentences, PAWS-X pairs, FLORES sentences,
XQuAD passages), so the lengths vary like a real evaluation. Model: randomly initialised (speed does not
depend on the weights). Baselines run the same jitted forward pass:
  - "exact": batches in input order, each padded to its own longest text (one compilation per new length);
  - "max":   batches in input order, all padded to max_length (one compilation, most padding).
Each variant is timed twice: the first pass includes compilation, the second is steady state.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from bilingual import JinaBert, get_config  # noqa: E402
from bilingual.encoder_api import Encoder, _compiled_forward  # noqa: E402

DEMO = pathlib.Path(__file__).resolve().parent.parent / "data" / "demo" / "eval"


def demo_texts() -> list[str]:
    texts = []
    for name in ("stsb_multi_mt/de-test.tsv", "pawsx_de/de-test.tsv", "flores200_devtest/de-en-devtest.tsv"):
        for line in (DEMO / name).read_text(encoding="utf-8").splitlines()[1:]:
            texts.extend(line.split("\t")[:2])
    for lang in ("de", "en", "es"):
        for line in (DEMO / f"xquad/corpus-{lang}.jsonl").read_text(encoding="utf-8").splitlines():
            texts.append(json.loads(line)["text"])
    texts = list(dict.fromkeys(texts))
    np.random.default_rng(0).shuffle(texts)  # mixed lengths, as when a corpus is not sorted
    return texts


def train_tokenizer(texts, vocab_size=4000) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", mask_token="<mask>", model_max_length=8192)


def naive(encoder: Encoder, texts, batch_size: int, max_length: int, pad_to_max: bool):
    forward = _compiled_forward(encoder.config)
    ids = encoder.tokenize(texts, max_length)
    shapes, out = set(), []
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        length = max_length if pad_to_max else max(map(len, batch))
        x = np.full((batch_size, length), encoder.pad_token_id, np.int32)
        m = np.zeros((batch_size, length), np.int32)
        m[len(batch):, 0] = 1
        for r, row in enumerate(batch):
            x[r, :len(row)], m[r, :len(row)] = row, 1
        shapes.add(x.shape)
        out.append(np.asarray(forward(encoder.params, x, m))[:len(batch)])
    return np.concatenate(out), len(shapes)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--n", type=int, default=2000, help="number of texts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()

    texts = demo_texts()[: args.n]
    tokenizer = train_tokenizer(texts)
    config = get_config(args.preset, vocab_size=max(len(tokenizer), 128))
    params = nn.meta.unbox(JinaBert(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    lengths = np.array([len(x) for x in tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]])
    print(f"{len(texts)} texts, tokens per text: median {np.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}, "
          f"max {lengths.max()}; preset {args.preset}; batch {args.batch_size}; device {jax.devices()[0].platform}")

    rows = []
    variants = {
        "Encoder.encode (sorted, buckets)": lambda enc: (enc.encode(texts, args.batch_size, args.max_length,
                                                                    normalize=False, show_progress=False), None),
        "baseline: input order, exact pad": lambda enc: naive(enc, texts, args.batch_size, args.max_length, False),
        "baseline: input order, pad to max": lambda enc: naive(enc, texts, args.batch_size, args.max_length, True),
    }
    reference = None
    for i, (name, run) in enumerate(variants.items()):
        # a distinct config per variant, so no variant reuses another's compilations
        enc = Encoder(config.replace(layer_norm_eps=config.layer_norm_eps * (1 + 1e-6 * i)), params, tokenizer)
        (emb, n_shapes), first = timed(lambda: run(enc))
        _, second = timed(lambda: run(enc))
        if n_shapes is None:
            n_shapes = len(enc.used_shapes)
        if reference is None:
            reference = emb
        err = float(np.abs(emb - reference).max())
        rows.append((name, n_shapes, first, second, len(texts) / second, err))
    print(f"{'variant':36s} {'shapes':>6s} {'1st pass s':>10s} {'2nd pass s':>10s} {'texts/s':>8s} {'max |diff|':>10s}")
    for name, shapes, first, second, rate, err in rows:
        print(f"{name:36s} {shapes:6d} {first:10.2f} {second:10.2f} {rate:8.0f} {err:10.2e}")


if __name__ == "__main__":
    main()
