"""Export a trained checkpoint as a Hugging Face model directory (JinaBERT layout, sentence-transformers ready).

    python -m launch.export --checkpoint runs/de/checkpoints --tokenizer tokenizers/de-en --out exports/de
    python -m launch.export --checkpoint runs/de/checkpoints/20000 --tokenizer ... --out ... --dtype float16
    python -m launch.export --checkpoint runs/mlm/checkpoints --tokenizer ... --out ... --mlm_head

``--checkpoint`` is an orbax checkpoint root (the latest step is taken) or one step directory. A fine-tuned
classifier (the ``finetune`` stage's checkpoint) exports as ``JinaBertForSequenceClassification`` (``bert.*`` +
``classifier.*``, the pooler when it pools the CLS token) with its label names.
``--mlm_head`` needs a masked-LM checkpoint and adds the head (``AutoModelForMaskedLM``).
``--auto_map upstream`` points the config at the released models' code on the Hub instead of the code shipped
in the directory: ``jinaai/jina-bert-implementation``, or ``jinaai/jina-bert-v2-qk-post-norm`` for the
qk-post-norm layout of base-es (loading then needs the Hub).
``--format onnx`` also writes ``onnx/model.onnx`` (dynamic batch and length, ALiBi built in the graph, mean
pooled ``sentence_embedding`` output; ``--onnx_pooling none`` for hidden states only, ``--onnx_fp16`` adds
``onnx/model_fp16.onnx``) from the exported weights, for onnxruntime / transformers.js
(``bilingual.export.onnx_export``; needs onnx and onnxruntime, the test/export extra).
A checkpoint trained with Matryoshka losses (``meta["matryoshka_dims"]``) records its nested embedding sizes
in config.json (``matryoshka_dimensions``) and the model card (``SentenceTransformer(dir, truncate_dim=d)``);
``--matryoshka_dims 768,256,64`` sets them (over the checkpoint's): positive, at most the hidden size, distinct.
``--out`` may hold other files (a cloned Hub repository's ``.git/``, notes): they are kept. Without
``--overwrite`` an ``--out`` that already holds a file an export writes is refused; with it, exactly those
files are replaced (``bilingual.export.hf_export.write_model_dir``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bilingual.artifacts import (encoder_config_of, load_classifier, load_encoder, load_meta,  # noqa: E402
                                 load_model_tree, resolve_step)
from bilingual.export.hf_config import AUTO_MAP_KINDS, EXPORT_DTYPES, matryoshka_dims  # noqa: E402
from bilingual.export.hf_export import ExportError, export_hf  # noqa: E402
from bilingual.export.hf_classifier import export_classifier  # noqa: E402
from launch import cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="orbax checkpoint root or step directory")
    parser.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer directory (tokenizer.json, ...)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--dtype", default="float32", choices=EXPORT_DTYPES, help="storage dtype of the weights")
    parser.add_argument("--mlm_head", action="store_true", help="include the masked-LM head")
    parser.add_argument("--auto_map", default="local", choices=AUTO_MAP_KINDS)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier export at --out (other files there are kept)")
    parser.add_argument("--name", default=None, help="model name for the model card (default: the --out name)")
    parser.add_argument("--format", default="hf", choices=("hf", "onnx"),
                        help="hf: the Hugging Face directory; onnx: the same plus onnx/model.onnx")
    parser.add_argument("--onnx_pooling", default="mean", choices=("mean", "none"),
                        help="with --format onnx: add the mean-pooled sentence_embedding output (default) or not")
    parser.add_argument("--onnx_fp16", action="store_true", help="with --format onnx: also write onnx/model_fp16.onnx")
    parser.add_argument("--matryoshka_dims", default=None, metavar="D1,D2,...",
                        help="nested embedding sizes to record, e.g. 768,256,64 (default: the checkpoint meta's "
                             "matryoshka_dims, if any)")
    return parser.parse_args(argv)


def _matryoshka_dims(option, meta: dict, hidden_size: int, step_dir):
    """The sizes to record: ``--matryoshka_dims`` if given, else ``meta["matryoshka_dims"]``, else None; checked
    against ``hidden_size`` (an ``ExportError`` naming where the bad value came from)."""
    try:
        if option is not None:
            return matryoshka_dims(option, "--matryoshka_dims", hidden_size)
        if meta.get("matryoshka_dims"):
            return matryoshka_dims(meta["matryoshka_dims"], f"meta['matryoshka_dims'] of checkpoint {step_dir}",
                                   hidden_size)
    except ValueError as err:
        hint = "" if option is not None else " (pass --matryoshka_dims to set the sizes to record)"
        raise ExportError(f"{err}{hint}") from None
    return None


@cli.entry_point
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.format == "onnx":
        from bilingual.export.onnx_export import require_onnx

        require_onnx()  # before any work: names the missing packages
    root, step = resolve_step(args.checkpoint)
    meta = load_meta(root / str(step))
    mlm_params = None
    if meta.get("model") == "sequence_classification":
        if args.format == "onnx":
            raise ExportError("--format onnx exports encoders (sentence embeddings); this checkpoint is a "
                              "sequence classifier: export it with --format hf")
        if args.matryoshka_dims is not None:
            raise ExportError("--matryoshka_dims records the nested sizes of sentence embeddings; this checkpoint "
                              "is a sequence classifier")
        config, head, meta, params = load_classifier(root / str(step))
        out = export_classifier(config, head, params, args.out, tokenizer_dir=args.tokenizer,
                                labels=meta.get("labels"), dtype=args.dtype, auto_map=args.auto_map,
                                model_name=args.name, overwrite=args.overwrite)
        print(f"exported step {step} of {root} ({head.task} head, {head.num_labels} outputs, {head.pooling} "
              f"pooling) to {out}: AutoModelForSequenceClassification, auto_map={args.auto_map}")
        return 0
    # checked before the weights are read
    dims = _matryoshka_dims(args.matryoshka_dims, meta, encoder_config_of(meta).hidden_size, root / str(step))
    if args.mlm_head:
        if meta.get("model") != "masked_lm":
            raise ExportError(f"--mlm_head needs a masked_lm checkpoint; {root / str(step)} holds a "
                              f"{meta.get('model')!r} model")
        config, _, tree = load_model_tree(root / str(step))
        params, mlm_params = tree["bert"], tree["cls"]
    else:
        config, params = load_encoder(root / str(step))
    out = export_hf(config, params, args.out, tokenizer_dir=args.tokenizer, dtype=args.dtype,
                    mlm_params=mlm_params, auto_map=args.auto_map, model_name=args.name,
                    overwrite=args.overwrite, matryoshka_dims=dims)
    size = (pathlib.Path(out) / "model.safetensors").stat().st_size
    print(f"exported step {step} of {root} ({meta.get('model')}{' + MLM head' if mlm_params else ''}) to {out}: "
          f"model.safetensors {size / 2**20:.1f} MiB ({args.dtype}), auto_map={args.auto_map}"
          + (f", matryoshka_dimensions {','.join(map(str, sorted(dims, reverse=True)))}" if dims else ""))
    if args.format == "onnx":
        from bilingual.export.onnx_export import export_onnx

        path = export_onnx(out, pooling=args.onnx_pooling, fp16=args.onnx_fp16)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB; encoder only, float32, dynamic batch and "
              f"length, pooling={args.onnx_pooling}){' and model_fp16.onnx' if args.onnx_fp16 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.exit_status(main()))
