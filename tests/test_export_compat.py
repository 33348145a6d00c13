"""A fresh export loads on the older serving stack (transformers 4.44.2, tokenizers 0.19.1, sentence-transformers
3.4.1, torch 2.13: requirements/compat.txt, installed in .venv-compat by ``make compat`` / ``make test``) and gives
the main environment's embeddings there.

The main environment (this process: transformers 5, tokenizers 0.23) writes two exports of one tiny model: one
with a tokenizer saved by ``bilingual.tokenizer.save`` (the project's training path) and one with a tokenizer
saved by transformers 5's ``save_pretrained`` (``TokenizersBackend`` class, ``[left, right]`` merges: what a
user's own tokenizer directory holds). ``tests/compat_worker.py`` then runs in .venv-compat and loads each with
AutoTokenizer, AutoModel(trust_remote_code=True) and SentenceTransformer.

References, computed here: token ids from this environment's tokenizers (must be equal, exactly), the Flax
encoder's L2-normalised mean embeddings (independent of the PyTorch code), and sentence-transformers 6 on
transformers 5. Tolerance 1e-5 absolute on unit-norm embeddings: float32 throughout; a float32 dot product of K
terms has relative error ~sqrt(K) * 6e-8 (K <= 512 here), a few 1e-7 per layer, ~1e-6 after two layers and the
pooling sum over <= 700 tokens; 1e-5 leaves a margin of ten. (Between the two PyTorch stacks the code, torch and
weights are the same, so they agree far closer; the bound is the same for simplicity.)

Without .venv-compat this test fails (run ``make compat``); set BILINGUAL_SKIP_COMPAT=1 to skip it explicitly.
"""

import json
import os
import pathlib
import subprocess
import sys

import hf_testing as H  # sets HF_HUB_OFFLINE before transformers is imported
from hf_testing import tokenizer_dir  # noqa: F401 (fixture)
import numpy as np
import pytest

from bilingual import tokenizer as tokenizer_lib
from bilingual.export.hf_export import export_hf

REPO = pathlib.Path(__file__).resolve().parent.parent
COMPAT_PYTHON = pathlib.Path(os.environ.get("BILINGUAL_COMPAT_PYTHON", REPO / ".venv-compat" / "bin" / "python"))
EXPECTED_VERSIONS = {"transformers": "4.44.2", "tokenizers": "0.19.1", "sentence_transformers": "3.4.1"}
ATOL = 1e-5


def _compat_python() -> pathlib.Path:
    if os.environ.get("BILINGUAL_SKIP_COMPAT") == "1":
        pytest.skip("BILINGUAL_SKIP_COMPAT=1: the transformers 4.x compatibility check is skipped")
    if not COMPAT_PYTHON.is_file():
        pytest.fail(f"{COMPAT_PYTHON} is missing: build the compatibility environment with `make compat` "
                    "(make test does), or set BILINGUAL_SKIP_COMPAT=1 to skip this check on purpose")
    return COMPAT_PYTHON


@pytest.fixture(scope="module")
def texts(tokenizer_dir):
    from transformers import AutoTokenizer

    main_tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    # Short sentences in three languages plus one of ~700 tokens (ALiBi well past a short input; heavy padding).
    return H.SENTENCES + [H.long_text(2, 700, main_tokenizer), "<mask> und ein Wort", "ÄÖÜ äöü ß ñ é"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("compat")
    project_tokenizer = tokenizer_lib.train_bpe(H.SENTENCES * 4, vocab_size=600, min_frequency=1,
                                                show_progress=False)
    tokenizer_lib.save(project_tokenizer, root / "project-tokenizer")
    config = H.tiny_config()
    params = H.init_params(config, seed=5)
    dirs = [export_hf(config, params, root / name, tokenizer_dir=tok)
            for name, tok in (("project-tokenizer-export", root / "project-tokenizer"),
                              ("transformers5-tokenizer-export", tokenizer_dir))]
    return config, params, dirs


@pytest.fixture(scope="module")
def compat_result(exports, texts, tmp_path_factory):
    python = _compat_python()
    _, _, dirs = exports
    work = tmp_path_factory.mktemp("compat-run")
    request = work / "request.json"
    request.write_text(json.dumps({"exports": [str(d) for d in dirs], "texts": texts}, ensure_ascii=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(work / "hf-home"), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([str(python), str(REPO / "tests" / "compat_worker.py"), str(request), str(work / "out.npz")],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"compat worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    with np.load(work / "out.npz") as data:
        return {k: data[k] for k in data.files}


def test_the_compat_environment_is_the_old_stack(compat_result):
    versions = json.loads(str(compat_result["versions"]))
    assert {k: versions[k] for k in EXPECTED_VERSIONS} == EXPECTED_VERSIONS
    assert versions["torch"].startswith("2.13.")


@pytest.mark.parametrize("index", [0, 1], ids=["project-tokenizer", "transformers5-tokenizer"])
def test_old_stack_tokenizes_and_embeds_as_the_main_environment(index, exports, texts, compat_result):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    config, params, dirs = exports
    export = dirs[index]
    batch = AutoTokenizer.from_pretrained(str(export))(texts, padding=True, return_tensors="np")
    np.testing.assert_array_equal(compat_result[f"ids_{index}"], batch["input_ids"])
    np.testing.assert_array_equal(compat_result[f"mask_{index}"], batch["attention_mask"])
    assert batch["attention_mask"].sum(1).max() >= 700

    _, flax_embedding = H.flax_encoder(config, params, batch["input_ids"].astype(np.int32),
                                       batch["attention_mask"].astype(np.int32))
    reference = H.normalise(flax_embedding)
    main_st = SentenceTransformer(str(export), trust_remote_code=True, device="cpu").encode(texts, batch_size=4)
    np.testing.assert_allclose(main_st, reference, atol=ATOL, rtol=0)
    for name in ("automodel", "encode", "st"):
        got = compat_result[f"{name}_{index}"]
        assert got.shape == reference.shape, name
        np.testing.assert_allclose(got, reference, atol=ATOL, rtol=0, err_msg=f"{name} (old stack) vs Flax")
        np.testing.assert_allclose(got, main_st, atol=ATOL, rtol=0, err_msg=f"{name} (old stack) vs ST 6")


def test_exported_tokenizer_json_is_in_the_portable_form(exports):
    """Both exports' tokenizer.json hold merges as "left right" strings (the form tokenizers 0.19 reads) and no
    transformers-5-only tokenizer class, whatever form the source directory had."""
    for export in exports[2]:
        merges = json.loads((export / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
        assert merges and all(isinstance(m, str) and m.count(" ") == 1 for m in merges)
        config = json.loads((export / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] in ("RobertaTokenizer", "PreTrainedTokenizerFast")


def test_portable_tokenizer_json_refuses_merges_with_spaces():
    data = {"model": {"type": "BPE", "merges": [["a", "b"], ["c d", "e"]]}}
    with pytest.raises(tokenizer_lib.TokenizerError, match="space"):
        tokenizer_lib.portable_tokenizer_json(data)
    assert tokenizer_lib.portable_tokenizer_json({"model": {"type": "BPE", "merges": [["a", "b"], "c d"]}}) == {
        "model": {"type": "BPE", "merges": ["a b", "c d"]}}
