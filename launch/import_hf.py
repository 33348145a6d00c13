"""Import a Hugging Face JinaBERT directory (ours or a published one) as an orbax checkpoint.

    python -m launch.import_hf --hf exports/de --out runs/imported/checkpoints [--step 0] [--overwrite]

Writes ``<out>/<step>/`` with ``bilingual.artifacts.save_model``: a ``masked_lm`` checkpoint when the
directory has the masked-LM head, else an ``encoder`` one; the directory's tokenizer, when it has one, is
recorded with it (``<out>/tokenizer``). Every tensor must map to a parameter and every parameter must be
present; otherwise the error lists the missing, unexpected and mis-shaped names.

The checkpoint is written to a staging directory beside ``--out`` and moved into place only when complete,
so an interrupted import leaves nothing half-written in ``--out``. An ``--out`` (a local directory) that
already holds checkpoint steps is refused; ``--overwrite`` writes anyway and replaces only the step it
writes (other steps stay, and so does their tokenizer: a different one is refused while they remain).
"""

from __future__ import annotations

import filecmp
import os
import pathlib
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bilingual.artifacts import TOKENIZER_DIR, CheckpointError, save_model  # noqa: E402
from bilingual.export.hf_import import import_hf  # noqa: E402
from launch import cli  # noqa: E402


def parse_args(argv=None):
    parser = cli.parser(__doc__)
    parser.add_argument("--hf", required=True, help="Hugging Face model directory (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="orbax checkpoint root to write (a local directory)")
    parser.add_argument("--step", type=int, default=0, help="step number to save under (default 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out that holds steps, replacing --step if it is one of them")
    return parser.parse_args(argv)


def _steps(root: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []


def _same_tokenizer(a: pathlib.Path, b: pathlib.Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    _, different, unreadable = filecmp.cmpfiles(a, b, names, shallow=False)
    return not different and not unreadable


def _install(staging: pathlib.Path, out: pathlib.Path, step: int, existing: list[int]) -> None:
    """Move ``staging/<step>`` (and its tokenizer) into ``out``, replacing only ``out/<step>`` and, when no
    other step uses it, ``out/tokenizer``."""
    new, old = staging / TOKENIZER_DIR, out / TOKENIZER_DIR
    others = [s for s in existing if s != step]
    stale = old.is_dir() and not (new.is_dir() and _same_tokenizer(new, old))
    if stale and others and new.is_dir():
        raise CheckpointError(f"--out {out}: its {TOKENIZER_DIR}/ (used by steps {others}) differs from the "
                              "tokenizer being imported; import into a new --out")
    out.mkdir(parents=True, exist_ok=True)
    moves = [(staging / str(step), out / str(step))]
    if new.is_dir() and (stale or not old.exists()):
        moves.append((new, old))
    elif stale and not others:  # the replaced step's tokenizer must not pass for the new step's
        moves.append((None, old))
    for source, target in moves:
        if target.exists():  # only with --overwrite: the step being rewritten, and then its tokenizer
            target.rename(staging / f"replaced-{target.name}")  # removed with the staging directory
        if source is not None:
            source.rename(target)


def _matryoshka_dims(hf_dir: str) -> list[int]:
    """``config.json``'s ``matryoshka_dimensions`` (written by ``launch.export``), or []."""
    import json

    try:
        with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
            return list(json.load(f).get("matryoshka_dimensions") or [])
    except (OSError, ValueError):
        return []  # import_hf has already read (or refused) the config; nothing to carry


@cli.entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    if "://" in args.out:
        raise cli.UsageError(f"--out {args.out}: import into a local directory (then copy it)")
    out = pathlib.Path(args.out).absolute()
    existing = _steps(out)
    if existing and not args.overwrite:
        raise CheckpointError(f"--out {out} already holds checkpoint steps {existing}; choose a new directory, "
                              f"or pass --overwrite to write step {args.step} there (replacing it if it exists)")
    config, params, extras = import_hf(args.hf)
    masked_lm = extras["mlm_params"] is not None
    tree = {"bert": params, "cls": extras["mlm_params"]} if masked_lm else params
    meta = {"imported_from": os.path.abspath(args.hf), "source_dtype": extras["dtype"]}
    matryoshka = _matryoshka_dims(args.hf)
    if matryoshka:  # exported from a Matryoshka run: a re-export records them again (launch.export reads meta)
        meta["matryoshka_dims"] = matryoshka
    has_tokenizer = os.path.isfile(os.path.join(args.hf, "tokenizer.json"))
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_model(staging, args.step, config, tree, model_kind="masked_lm" if masked_lm else "encoder",
                   extra_meta=meta, tokenizer=args.hf if has_tokenizer else None)
        _install(staging, out, args.step, existing)
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoint step {args.step} under {out}: {err}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    replaced = f" (replaced the earlier step {args.step})" if args.step in existing else ""
    print(f"imported {extras['source']} ({extras['dtype']}, {'masked_lm' if masked_lm else 'encoder'}, "
          f"{config.num_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}) to "
          f"{out / str(args.step)}{replaced}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
