"""Reference points for the eval suites: a lexical baseline and an untrained tiny JinaBERT.

    python benchmarks/eval_reference_points.py [--suites de es en] [--data DIR]

A trained model must beat both. "char n-grams": hashed character 3-4-gram counts (scikit-learn
HashingVectorizer, 2^14 features), a strong lexical baseline for STS and same-language retrieval and
near chance across languages. "tiny random": ``tiny`` preset, random weights, a byte-level BPE trained on
the eval texts' own sentences (so no unknown tokens). Both go through the same suite runner.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from sklearn.feature_extraction.text import HashingVectorizer  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from encode_throughput import demo_texts, train_tokenizer  # noqa: E402

from bilingual import JinaBert, get_config  # noqa: E402
from bilingual.encoder_api import Encoder  # noqa: E402
from bilingual.evaluation import suites  # noqa: E402


class CharNgrams:
    def __init__(self):
        self.vectorizer = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 4), n_features=2 ** 14,
                                            alternate_sign=False)

    def encode(self, texts):
        return self.vectorizer.transform(texts).toarray()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", default=["de", "es", "en"])
    parser.add_argument("--data", type=pathlib.Path, default=None)
    args = parser.parse_args()

    tokenizer = train_tokenizer(demo_texts())
    config = get_config("tiny", vocab_size=len(tokenizer))
    params = nn.meta.unbox(JinaBert(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    encoder = Encoder(config, params, tokenizer)

    class Tiny:
        def encode(self, texts):
            return encoder.encode(texts, batch_size=32, max_length=512)

    print(f"{'suite':6s} {'task':28s} {'metric':11s} {'char n-grams':>12s} {'tiny random':>12s}")
    for suite in args.suites:
        tasks = suites.get_suite(suite)
        lexical = suites.run_suite(CharNgrams(), tasks, args.data)
        tiny = suites.run_suite(Tiny(), tasks, args.data)
        for name in lexical["tasks"]:
            a, b = lexical["tasks"][name], tiny["tasks"][name]
            print(f"{suite:6s} {name:28s} {a['main_metric']:11s} {a['main_score']:12.2f} {b['main_score']:12.2f}")
        print(f"{suite:6s} {'average':28s} {'':11s} {suites.average_main_score(lexical):12.2f} "
              f"{suites.average_main_score(tiny):12.2f}   "
              f"(seconds: {lexical['timings']['total_seconds']:.1f} / {tiny['timings']['total_seconds']:.1f})")


if __name__ == "__main__":
    main()
