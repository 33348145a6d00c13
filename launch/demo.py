"""The CPU demo (main job).

Current scope: encode the bundled German/English sentence pairs with a freshly initialised ``tiny``
JinaBERT and print their cosine similarities. A byte-level BPE tokenizer is trained on the same sentences
first (seconds), so nothing is downloaded. Without training the similarities are near-random: this shows
the pipeline runs end to end, not a trained model.
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers  # noqa: E402

from bilingual import JinaBert, get_config  # noqa: E402
import flax.linen as nn  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "demo" / "sentences-de-en.tsv"
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def read_pairs(path: pathlib.Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    for i, row in enumerate(body, start=2):
        if len(row) != 2 or not all(cell.strip() for cell in row):
            raise ValueError(f"{path}:{i}: expected two non-empty tab-separated columns {header}, got {row!r}")
    return [(a, b) for a, b in body]


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def encode_batch(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    bos, eos, pad = (tokenizer.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
    ids = [[bos] + tokenizer.encode(t).ids + [eos] for t in texts]
    length = max(map(len, ids))
    out = np.full((len(ids), length), pad, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for i, row in enumerate(ids):
        out[i, : len(row)], mask[i, : len(row)] = row, 1
    return out, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, default=DATA, help="TSV with header 'de\\ten'")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pairs = read_pairs(args.data)
    german, english = [p[0] for p in pairs], [p[1] for p in pairs]
    start = time.perf_counter()
    tokenizer = train_tokenizer(german + english, vocab_size=600)
    print(f"trained a byte-level BPE tokenizer ({tokenizer.get_vocab_size()} tokens) on {len(pairs)} pairs "
          f"in {time.perf_counter() - start:.2f}s")

    config = get_config("tiny", vocab_size=tokenizer.get_vocab_size(), hidden_dropout=0.0)
    model = JinaBert(config)
    ids, mask = encode_batch(tokenizer, german + english)
    params = nn.meta.unbox(model.init(jax.random.key(args.seed), ids[:1], mask[:1])["params"])
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"initialised a tiny JinaBERT: {config.num_layers} layers, hidden {config.hidden_size}, "
          f"{config.num_heads} heads, {n_params:,} parameters, on {jax.devices()[0].platform}")

    start = time.perf_counter()
    embed = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m).embedding)
    emb = np.array(embed(params, jnp.asarray(ids), jnp.asarray(mask)))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    print(f"encoded {len(ids)} sentences ({int(mask.sum())} tokens) in {time.perf_counter() - start:.2f}s "
          f"(including compilation)\n")

    sims = emb[: len(pairs)] @ emb[len(pairs):].T
    print("cosine similarity, German (rows) x English (columns); untrained model, so no structure yet:")
    print("      " + " ".join(f"en{j:<4d}" for j in range(len(pairs))))
    for i, row in enumerate(sims):
        print(f"de{i:<3d} " + " ".join(f"{s:+.3f}" for s in row))
    correct = int((sims.argmax(axis=1) == np.arange(len(pairs))).sum())
    print(f"\nnearest-English accuracy: {correct}/{len(pairs)} (chance: 1/{len(pairs)})")
    for i, (de, en) in enumerate(pairs[:3]):
        print(f"  de{i}: {de}\n  en{i}: {en}")


if __name__ == "__main__":
    main()
