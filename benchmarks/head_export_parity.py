"""Fine-tuning heads (``bilingual.heads``) vs their Hugging Face export: largest logit differences.

    PYTHONPATH=. python benchmarks/head_export_parity.py [--lengths 1,16,128,600,2048] [--layout qk_post_norm]

Same set-up as ``hf_parity.py`` (a byte-level BPE, here trained on the bundled demo MLM text
``data/demo/train/mlm/{de,en,es}.txt``, a ``tiny`` encoder with perturbed LayerNorms) plus random heads with
non-zero biases. Each head is exported with
``bilingual.export.hf_classifier.export_classifier`` and loaded with transformers' ``AutoModelFor*``
(``trust_remote_code=True``); the batch is a packed pair (second half of each row token type 1). Printed per
head: the largest absolute logit difference (over real tokens for the per-token heads) next to the tolerance
the tests use. CPU, float32 matmuls at full precision.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from hf_parity import init, parity_setup, parse_args  # same directory: the encoder parity script

jax.config.update("jax_default_matmul_precision", "highest")

from bilingual.export.hf_classifier import ARCHITECTURES, AUTO_CLASSES, export_classifier  # noqa: E402
from bilingual.heads import HeadConfig, init_head_params, model_for_head  # noqa: E402

MLM_TEXT = pathlib.Path(__file__).resolve().parent.parent / "data" / "demo" / "train" / "mlm"


def sentences(per_language: int = 300) -> list[str]:
    """The first lines of the bundled demo MLM text in each language."""
    out = []
    for language in ("de", "en", "es"):
        lines = (MLM_TEXT / f"{language}.txt").read_text(encoding="utf-8").splitlines()
        out.extend(line for line in lines[:per_language] if line.strip())
    return out


HEADS = {
    "classification, cls pooler": HeadConfig("classification", num_labels=3, pooling="cls"),
    "classification, mean pooling": HeadConfig("classification", num_labels=3, pooling="mean"),
    "regression, cls pooler": HeadConfig("regression", num_labels=1, pooling="cls"),
    "regression, mean pooling": HeadConfig("regression", num_labels=1, pooling="mean"),
    "token classification": HeadConfig("token_classification", num_labels=7),
    "question answering": HeadConfig("question_answering"),
}


def head_params(config, head, encoder, seed=0):
    params = jax.tree.map(np.asarray, init_head_params(model_for_head(config, head), jax.random.key(seed), encoder))
    rng = np.random.default_rng(seed)
    out = "qa_outputs" if head.task == "question_answering" else "classifier"
    params[out]["bias"] = (0.5 * rng.standard_normal(head.num_outputs)).astype(np.float32)
    if head.uses_pooler:
        params["bert"]["pooler"]["dense"]["bias"] = (0.1 * rng.standard_normal(config.hidden_size)).astype(np.float32)
    return params


def main() -> None:
    lengths, layout = parse_args(__doc__)

    import torch
    import transformers

    rows = []
    with parity_setup(sentences(), lengths, layout) as (tmp, tokenizer, config, ids, mask):
        encoder = init(config, masked_lm=False)
        types = ((np.arange(ids.shape[1])[None, :] >= np.asarray(lengths)[:, None] // 2) * mask).astype(np.int32)
        valid = mask.astype(bool)
        inputs = dict(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                      token_type_ids=torch.tensor(types, dtype=torch.long))
        for seed, (name, head) in enumerate(HEADS.items()):
            params = head_params(config, head, encoder, seed)
            flax_out = model_for_head(config, head).apply(
                {"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
            path = export_classifier(config, head, params, tmp / f"head{seed}", tokenizer_dir=tmp / "tok")
            auto = getattr(transformers, AUTO_CLASSES[ARCHITECTURES[head.task]])
            model = auto.from_pretrained(str(path), trust_remote_code=True).eval()
            with torch.no_grad():
                out = model(**inputs)
            if head.task == "question_answering":
                diff = max(np.abs(out.start_logits.numpy() - np.asarray(flax_out[0]))[valid].max(),
                           np.abs(out.end_logits.numpy() - np.asarray(flax_out[1]))[valid].max())
            elif head.task == "token_classification":
                diff = np.abs(out.logits.numpy() - np.asarray(flax_out))[valid].max()
            else:
                diff = np.abs(out.logits.numpy() - np.asarray(flax_out)).max()
            rows.append((f"{name} ({type(model).__name__})", diff, 1e-5))

    print(f"tiny encoder, layer_layout={config.layer_layout}, packed-pair batch lengths {lengths} "
          f"(padded to {max(lengths)}), float32 export")
    print(f"{'head (transformers class)':72s} {'max |diff|':>12s} {'tolerance':>10s}")
    for name, diff, tol in rows:
        print(f"{name:72s} {diff:12.3e} {tol:10.0e}  {'ok' if diff <= tol else 'FAIL'}")


if __name__ == "__main__":
    main()
