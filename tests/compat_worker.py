"""Loads exports on another stack (run by tests/test_export_compat.py with .venv-compat's Python: transformers
4.44, tokenizers 0.19, sentence-transformers 3.4); imports nothing of the project.

    .venv-compat/bin/python tests/compat_worker.py REQUEST.json RESULT.npz

``REQUEST.json``: ``{"exports": [dir, ...], "texts": [...]}``. For every export ``i`` the result holds
``ids_i`` / ``mask_i`` (AutoTokenizer, padded batch), ``automodel_i`` (AutoModel with trust_remote_code: masked
mean of ``last_hidden_state``, L2-normalised, computed here), ``encode_i`` (the shipped ``model.encode``) and
``st_i`` (``SentenceTransformer(dir, trust_remote_code=True).encode``), plus ``versions`` (JSON).
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402


def main(request_path: str, result_path: str) -> None:
    request = json.loads(open(request_path, encoding="utf-8").read())
    texts = request["texts"]
    result = {"versions": np.array(json.dumps({
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "sentence_transformers": sentence_transformers.__version__, "torch": torch.__version__}))}
    for i, export in enumerate(request["exports"]):
        tokenizer = AutoTokenizer.from_pretrained(export)
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        model = AutoModel.from_pretrained(export, trust_remote_code=True).eval()
        with torch.no_grad():
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        result[f"ids_{i}"] = batch["input_ids"].numpy()
        result[f"mask_{i}"] = batch["attention_mask"].numpy()
        result[f"automodel_{i}"] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        result[f"encode_{i}"] = model.encode(texts, batch_size=4)
        st = sentence_transformers.SentenceTransformer(export, trust_remote_code=True, device="cpu")
        result[f"st_{i}"] = st.encode(texts, batch_size=4)
    np.savez(result_path, **result)


if __name__ == "__main__":
    main(*sys.argv[1:])
