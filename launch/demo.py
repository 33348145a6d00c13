"""The three-stage CPU demo on the bundled data: tokenizer -> MLM -> pairs -> multi-task -> evaluation -> export.

    python -m launch.demo [--workdir runs/demo] [--fresh]

Each stage is the same trainer and gin run file a user would launch by hand (``gin/runs/demo_de_en_*.gin``);
after each stage the encoder is evaluated on the bundled held-out test splits (``data/demo/eval``) and one
table is printed at the end. The final model is exported to a Hugging Face directory, reloaded with
sentence-transformers, and compared with the JAX embeddings. The last step scores the final model on the
long-document suite ``long-de`` (passkey, needle and literature retrieval at 256 ... 8192 tokens,
``--long-documents`` per length; 0 skips it) and prints its rows next to the short-text table. Running
again with the same ``--workdir`` reuses finished stages (checkpoints resume); ``--fresh`` starts over.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from launch import cli  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
GIN_DIR = ROOT / "gin"
TABLE_TASKS = ("STSb-de", "STSb-de-en", "STSb-en", "Tatoeba-de-en", "XQuAD-de-de", "XQuAD-de-en")
STAGES = ("mlm", "pairs", "multitask")
LONG_SUITE = "long-de"
LONG_DOCUMENTS = 8
DEMO_TRAINED_LENGTH = 128  # the longest rows the demo stages train on (MLM 128; pairs 64; multi-task <= 96)


def train_tokenizer(out: pathlib.Path) -> None:
    if (out / "tokenizer.json").exists():
        print(f"[tokenizer] reusing {out}")
        return
    from launch import train_tokenizer as launcher
    launcher.main(["--gin_file", str(GIN_DIR / "tokenizer" / "demo_de_en.gin"), "--out", str(out)])


def run_stage(stage: str, workdir: pathlib.Path, tokenizer: pathlib.Path, init_from, overrides=()) -> pathlib.Path:
    import gin

    from bilingual.training.trainer import train
    from launch import configurables, data_factory

    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    bindings = [f"DEMO_TOKENIZER = '{tokenizer}'"] + list(overrides)
    if init_from:
        bindings.append(f"TrainConfig.init_from = '{init_from}'")
    configurables.parse([str(GIN_DIR / "runs" / f"demo_de_en_{stage}.gin")], bindings)
    config, data, _ = configurables.build()
    batches = data_factory.make_batches(config, data)
    print(f"\n[{stage}] {config.num_steps} steps, global batch {config.batch_size}, data {data['name']}", flush=True)
    start = time.perf_counter()
    try:
        train(config, workdir / stage, batches, operative_config=gin.config_str())
    finally:
        batches.close()
    print(f"[{stage}] done in {time.perf_counter() - start:.0f}s", flush=True)
    return workdir / stage / "checkpoints"


def evaluate(checkpoint, tokenizer: pathlib.Path, names=TABLE_TASKS) -> dict[str, float]:
    """Main scores of the named suite tasks on the bundled held-out data."""
    from bilingual import Encoder
    from bilingual.evaluation import suites

    encoder = Encoder.from_checkpoint(checkpoint, tokenizer=tokenizer)
    tasks = [t for name in names for t in suites.get_suite(name)]
    result = suites.run_suite(_Adapter(encoder), tasks)
    return {name: r["main_score"] for name, r in result["tasks"].items()}


def evaluate_long(checkpoint, tokenizer: pathlib.Path, documents: int = LONG_DOCUMENTS, lengths=None) -> dict:
    """The long-document suite on the bundled data: the result document of ``suites.run_suite``."""
    from bilingual import Encoder
    from bilingual.evaluation import suites
    from bilingual.evaluation.configured import ConfiguredEncoder

    encoder = ConfiguredEncoder(Encoder.from_checkpoint(checkpoint, tokenizer=tokenizer), batch_size=64,
                                log=lambda m: print(f"[long] {m}", flush=True), trained_length=DEMO_TRAINED_LENGTH)
    options = {"documents": documents, "lengths": lengths}
    return suites.run_suite(encoder, suites.get_suite(LONG_SUITE), long_options=options)


class _Adapter:
    def __init__(self, encoder):
        self.encoder = encoder

    def encode(self, texts):
        return self.encoder.encode(list(texts), batch_size=64, max_length=256, show_progress=False)


@cli.entry_point
def main(argv=None) -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--workdir", type=pathlib.Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--fresh", action="store_true", help="delete the workdir first")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="extra gin bindings for every stage, e.g. 'TrainConfig.num_steps = 20'")
    parser.add_argument("--long-documents", type=int, default=LONG_DOCUMENTS,
                        help=f"documents per length in the final {LONG_SUITE} step (0: skip it)")
    parser.add_argument("--long-lengths", type=int, nargs="+", help="lengths of the final step (default 256 ... 8192)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.fresh and args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    tokenizer = args.workdir / "tokenizer"
    train_tokenizer(tokenizer)
    rows = {}
    previous = None
    for stage in STAGES:
        checkpoint = run_stage(stage, args.workdir, tokenizer, previous, args.gin_bindings)
        rows[stage] = evaluate(checkpoint, tokenizer)
        print(f"[{stage}] " + "  ".join(f"{k} {v:.1f}" for k, v in rows[stage].items()), flush=True)
        previous = checkpoint

    print("\nHeld-out test splits (bundled subsets; STS: Spearman x100, Tatoeba: F1 x100, XQuAD: nDCG@10 x100)")
    header = f"{'stage':10s}" + "".join(f"{name:>15s}" for name in TABLE_TASKS)
    print(header)
    for stage, scores in rows.items():
        print(f"{stage:10s}" + "".join(f"{scores.get(name, float('nan')):15.1f}" for name in TABLE_TASKS))
    if args.long_documents:
        from launch.evaluate import format_long_table

        long_start = time.perf_counter()
        long = evaluate_long(previous, tokenizer, args.long_documents, args.long_lengths)
        print(f"\nLong documents, final model (suite {LONG_SUITE}, {args.long_documents} documents per length; "
              "passkey/needle: accuracy x100, literature: nDCG@10 x100; by length in tokens)")
        print(format_long_table([("multitask", long)]))
        print(f"[long] {time.perf_counter() - long_start:.0f}s")

    export_dir = export_and_compare(previous, tokenizer, args.workdir / "export")
    print(f"\ntotal {time.perf_counter() - start:.0f}s. Use the model:\n"
          f"  from sentence_transformers import SentenceTransformer\n"
          f"  model = SentenceTransformer('{export_dir}', trust_remote_code=True)\n"
          f"  model.encode(['Ein Hund läuft im Park.', 'A dog runs in the park.'])")


def export_and_compare(checkpoint, tokenizer: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from bilingual import Encoder
    from bilingual.artifacts import load_encoder
    from bilingual.export.hf_export import export_hf

    config, params = load_encoder(checkpoint)
    export_dir = export_hf(config, params, out, tokenizer_dir=tokenizer, overwrite=True)
    texts = ["Ein Mädchen bürstet sich die Haare.", "A girl is brushing her hair.",
             "Der Zug kommt um acht Uhr an.", "The train arrives at eight o'clock."]
    jax_emb = Encoder(config, params, tokenizer).encode(texts)
    st_emb = SentenceTransformer(str(export_dir), trust_remote_code=True, device="cpu").encode(
        texts, normalize_embeddings=True)
    print(f"\nexported to {export_dir}; sentence-transformers vs JAX embeddings: max |diff| = "
          f"{np.abs(st_emb - jax_emb).max():.2e}")
    return export_dir


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
