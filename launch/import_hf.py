"""Import a Hugging Face JinaBERT directory (ours or a published one) as an orbax checkpoint.

    python -m launch.import_hf --hf exports/de --out runs/imported/checkpoints [--step 0]

Writes ``<out>/<step>/`` with ``bilingual.artifacts.save_model``: a ``masked_lm`` checkpoint when the
directory has the masked-LM head, else an ``encoder`` one; the directory's tokenizer, when it has one, is
recorded with it. Every tensor must map to a parameter and every
parameter must be present; otherwise the error lists the missing, unexpected and mis-shaped names.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bilingual.artifacts import save_model  # noqa: E402
from bilingual.export.hf_config import HFConfigError  # noqa: E402
from bilingual.export.hf_import import HFImportError, import_hf  # noqa: E402
from bilingual.export.hf_state import StateDictMismatch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="Hugging Face model directory (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="orbax checkpoint root to write")
    parser.add_argument("--step", type=int, default=0, help="step number to save under (default 0)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config, params, extras = import_hf(args.hf)
    except (HFConfigError, HFImportError, StateDictMismatch) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    masked_lm = extras["mlm_params"] is not None
    tree = {"bert": params, "cls": extras["mlm_params"]} if masked_lm else params
    meta = {"imported_from": os.path.abspath(args.hf), "source_dtype": extras["dtype"]}
    try:
        has_tokenizer = os.path.isfile(os.path.join(args.hf, "tokenizer.json"))
        path = save_model(args.out, args.step, config, tree, model_kind="masked_lm" if masked_lm else "encoder",
                          extra_meta=meta, tokenizer=args.hf if has_tokenizer else None)
    except Exception as err:  # orbax: existing step, unwritable directory, ...
        print(f"error: cannot write checkpoint step {args.step} under {args.out}: {err}", file=sys.stderr)
        return 2
    print(f"imported {extras['source']} ({extras['dtype']}, {'masked_lm' if masked_lm else 'encoder'}, "
          f"{config.num_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}) to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
