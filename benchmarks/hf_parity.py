"""Flax encoder vs its Hugging Face export (transformers and sentence-transformers): largest differences.

    PYTHONPATH=. python benchmarks/hf_parity.py [--lengths 1,16,128,600,2048] [--layout qk_post_norm]

Trains a byte-level BPE on the bundled demo sentences, initialises a ``tiny`` encoder (LayerNorms perturbed so
none is the identity), exports it (float32, float16, bfloat16, and with the MLM head) and prints, per check,
the largest absolute difference next to the tolerance the tests use. Lengths above 1024 tokens take the Flax
chunked attention and the PyTorch query-blocked path. CPU, float32 matmuls at full precision.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import pathlib
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from bilingual import modeling  # noqa: E402
from bilingual.config import get_config  # noqa: E402
from bilingual.export.hf_export import export_hf  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "demo" / "train" / "pairs" / "de-en.tsv"


def sentences() -> list[str]:
    with DATA.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [cell for row in rows for cell in row[:2]]


def train_tokenizer(texts, out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", model_max_length=8192)
    fast.save_pretrained(str(out_dir))
    return fast


def init(config, masked_lm, seed=0):
    model = modeling.JinaBertForMaskedLM(config) if masked_lm else modeling.JinaBert(config)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = flax.linen.meta.unbox(model.init(jax.random.PRNGKey(seed), ids, jnp.ones_like(ids))["params"])
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, params))
    for path, value in flat.items():
        if path[-1] == "scale":
            flat[path] = (1 + 0.3 * rng.standard_normal(value.shape)).astype(np.float32)
        elif path[-1] == "bias" and (path[-2] in ("LayerNorm", "layernorm", "predictions")
                                     or path[-2].startswith("layer_norm")):
            flat[path] = (0.1 * rng.standard_normal(value.shape)).astype(np.float32)
    return traverse_util.unflatten_dict(flat)


def batch(tokenizer, texts, lengths):
    ids = np.full((len(lengths), max(lengths)), 1, np.int32)
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        tokens = tokenizer(" ".join(texts[(row + i) % len(texts)] for i in range(length // 3 + 1)))["input_ids"]
        assert len(tokens) >= length, (len(tokens), length)
        tokens = tokens[:length]
        ids[row, :length], mask[row, :length] = tokens, 1
    return ids, mask


def parse_args(description: str) -> tuple[list[int], str]:
    """``--lengths`` (the batch rows' token counts) and ``--layout``, the options of both parity scripts."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1,16,128,600,2048")
    parser.add_argument("--layout", default="post_ln", choices=("post_ln", "qk_post_norm"),
                        help="EncoderConfig.layer_layout; qk_post_norm is the jina-bert-v2-qk-post-norm layer "
                             "(base-es), exported under its published names")
    args = parser.parse_args()
    return [int(x) for x in args.lengths.split(",")], args.layout


@contextlib.contextmanager
def parity_setup(texts, lengths, layout):
    """The set-up both parity scripts share, in a temporary directory ``tmp``: torch on 2 threads, a BPE
    trained on ``texts`` (saved in ``tmp/tok``), the ``tiny`` config in ``layout`` and the batch of
    ``lengths``. Yields ``(tmp, tokenizer, config, ids, mask)``."""
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        tokenizer = train_tokenizer(texts, tmp / "tok")
        config = get_config("tiny", vocab_size=1024, hidden_dropout=0.0, pad_token_id=1, layer_layout=layout,
                            qk_layernorm=layout == "qk_post_norm")
        ids, mask = batch(tokenizer, texts, lengths)
        yield tmp, tokenizer, config, ids, mask


def main() -> None:
    lengths, layout = parse_args(__doc__)

    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    rows = []
    with parity_setup(sentences(), lengths, layout) as (tmp, tokenizer, config, ids, mask):
        params = init(config, masked_lm=True)
        valid = mask.astype(bool)
        start = time.perf_counter()
        logits, flax_out = modeling.JinaBertForMaskedLM(config).apply({"params": params}, jnp.asarray(ids),
                                                                      jnp.asarray(mask))
        flax_hidden = np.asarray(flax_out.last_hidden_state)
        flax_emb = np.asarray(flax_out.embedding)
        flax_s = time.perf_counter() - start

        def torch_run(path, cls="AutoModel", cast_float=False):
            model = getattr(transformers, cls).from_pretrained(str(path), trust_remote_code=True).eval()
            model = model.float() if cast_float else model
            with torch.no_grad():
                return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))

        f32 = export_hf(config, params["bert"], tmp / "f32", tokenizer_dir=tmp / "tok")
        start = time.perf_counter()
        out = torch_run(f32)
        torch_s = time.perf_counter() - start
        hidden = out.last_hidden_state.numpy()
        m = mask[..., None]
        emb = (hidden * m).sum(1) / m.sum(1)
        rows.append(("transformers f32: last hidden (valid tokens)", np.abs(hidden - flax_hidden)[valid].max(), 1e-5))
        rows.append(("transformers f32: mean embedding", np.abs(emb - flax_emb).max(), 1e-5))

        st = SentenceTransformer(str(f32), trust_remote_code=True, device="cpu")
        st_texts = [tokenizer.decode(row[1:n - 1]) for row, n in zip(ids, mask.sum(1)) if n > 2]
        enc = tokenizer(st_texts, padding=True, return_tensors="np")
        ref = np.asarray(modeling.JinaBert(config).apply({"params": params["bert"]}, jnp.asarray(enc["input_ids"]),
                                                         jnp.asarray(enc["attention_mask"])).embedding)
        ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        rows.append(("sentence-transformers: normalised embedding", np.abs(st.encode(st_texts) - ref).max(), 1e-5))

        mlm = export_hf(config, params["bert"], tmp / "mlm", tokenizer_dir=tmp / "tok", mlm_params=params["cls"])
        torch_logits = torch_run(mlm, "AutoModelForMaskedLM").logits.numpy()
        rows.append(("transformers MLM head: logits", np.abs(torch_logits - np.asarray(logits))[valid].max(), 1e-4))

        for dtype in ("float16", "bfloat16"):
            path = export_hf(config, params["bert"], tmp / dtype, tokenizer_dir=tmp / "tok", dtype=dtype)
            h = torch_run(path, cast_float=True).last_hidden_state.numpy()
            rows.append((f"transformers {dtype} weights: last hidden", np.abs(h - flax_hidden)[valid].max(),
                         2e-2 if dtype == "float16" else 1e-1))

    print(f"tiny encoder, layer_layout={config.layer_layout}, batch lengths {lengths} (padded to {max(lengths)}), "
          f"vocab {config.vocab_size}")
    print(f"{'check':48s} {'max |diff|':>12s} {'tolerance':>10s}")
    for name, diff, tol in rows:
        print(f"{name:48s} {diff:12.3e} {tol:10.0e}  {'ok' if diff <= tol else 'FAIL'}")
    print(f"forward time, whole batch: Flax {flax_s:.2f} s (incl. compile), PyTorch {torch_s:.2f} s")


if __name__ == "__main__":
    main()
