"""Train the bilingual byte-level BPE tokenizer from a gin config.

    python -m launch.train_tokenizer --gin_file=gin/tokenizer/demo_de_en.gin --out=/tmp/tok
    python -m launch.train_tokenizer --gin_file=gin/tokenizer/de_en.gin \
        --gin_bindings='train_tokenizer.corpora = {"de": ["gs://bucket/de/*.txt"], "en": ["gs://bucket/en/*.txt"]}' \
        --out=gs://bucket/tokenizers/de-en   # written locally, then copied with tf.io.gfile

Every argument of ``train_tokenizer`` below is a gin parameter. The operative config is logged at start and
written next to the tokenizer (``operative_config.gin``). Progress: the ``tokenizers`` trainer prints its own
progress bars (pre-processing, pair counting, merges).
"""

from __future__ import annotations

import logging
import pathlib
import shutil
import sys
import tempfile
import time

import gin

from bilingual import tokenizer as bpe
from launch import cli

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"


@gin.configurable
def train_tokenizer(out: str, corpora: dict = gin.REQUIRED, vocab_size: int = bpe.DEFAULT_VOCAB_SIZE,
                    min_frequency: int = 2, balance: str = "downsample", max_chars_per_language: int | None = None,
                    seed: int = 0, model_max_length: int = bpe.DEFAULT_MODEL_MAX_LENGTH,
                    show_progress: bool = True, streaming: bool = False) -> pathlib.Path:
    """Trains and saves; ``corpora`` maps language code -> list of text files/globs (one document per line).

    ``streaming=True`` balances the languages in two passes over the files instead of in memory (large corpora).
    """
    start = time.perf_counter()
    path = bpe.train_and_save(corpora, out, vocab_size=vocab_size, min_frequency=min_frequency, balance=balance,
                              max_chars_per_language=max_chars_per_language, seed=seed,
                              model_max_length=model_max_length, show_progress=show_progress,
                              streaming=streaming)
    tok = bpe.load(path)
    logging.info("trained a %d-token tokenizer in %.1f s -> %s", tok.get_vocab_size(), time.perf_counter() - start,
                 path)
    return path


@cli.entry_point
def main(argv=None) -> pathlib.Path | str:
    parser = cli.parser(__doc__)
    parser.add_argument("--gin_file", action="append", default=[], help="gin file(s), applied in order")
    parser.add_argument("--gin_bindings", action="append", default=[], help="extra gin bindings")
    parser.add_argument("--out", required=True, help="output directory (created; gs:// and other tf.io.gfile URLs work)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with gin.unlock_config():  # main() may run more than once in a process (tests)
        gin.clear_config()
        gin.add_config_file_search_path(str(GIN_DIR))  # includes such as 'tokenizer/de_en.gin', as launch.train
        cli.parse_gin(args.gin_file, args.gin_bindings)
    logging.info("gin config:\n%s", gin.config_str())
    remote = "://" in args.out
    local = tempfile.mkdtemp(prefix="tokenizer-") if remote else args.out
    path = train_tokenizer(out=local)
    (pathlib.Path(path) / "operative_config.gin").write_text(gin.operative_config_str())
    tok = bpe.load(path)
    sample = "Größere Straßen, mañana: ¿Qué tal? The quick brown fox."
    print(f"tokenizer: {args.out} ({tok.get_vocab_size()} tokens)")
    print(f"example: {sample!r} -> {tok.encode(sample).tokens}")
    if remote:
        import tensorflow as tf

        tf.io.gfile.makedirs(args.out)
        for file in sorted(pathlib.Path(path).iterdir()):
            tf.io.gfile.copy(str(file), f"{args.out.rstrip('/')}/{file.name}", overwrite=True)
        shutil.rmtree(local)
    return args.out if remote else pathlib.Path(path)


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
