"""The extrapolation check: windows cover every held-out token once; the loss at one length equals the
training loss (``losses.mlm_loss``) on the same rows; every length scores the same masked tokens; and
``launch.evaluate --mlm-by-length`` runs on a masked-LM checkpoint."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokenizer_fixture import build_tokenizer, tokenizer_dir
from bilingual import get_config
from bilingual.artifacts import save_model
from bilingual.evaluation import extrapolation
from bilingual.losses import mlm_loss
from bilingual.modeling import JinaBertForMaskedLM
from bilingual.tokenizer import MASK_ID, word_start_table
from launch import evaluate as launch_evaluate
from tasks.mlm import whole_word_mask


@pytest.fixture(scope="module")
def mlm():
    tok = build_tokenizer()
    config = get_config("tiny", vocab_size=len(tok))
    params = nn.meta.unbox(JinaBertForMaskedLM(config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    return tok, config, params


def masked_stream(tok, rows=2, length=300, seed=0):
    text = " ".join(["Der Hund läuft über die Wiese und der Zug kommt um acht Uhr an."] * 80)
    ids = np.asarray([tok(text, add_special_tokens=False)["input_ids"][r * 7:r * 7 + length] for r in range(rows)],
                     np.int32)
    return ids, whole_word_mask(ids, word_start_table(tok.backend_tokenizer), np.random.default_rng(seed), rate=0.3,
                                mask_id=MASK_ID, num_special=5, vocab_size=len(tok))


def test_windows_cover_each_token_once():
    content = np.arange(10, 10 + 2 * 23, dtype=np.int32).reshape(2, 23)
    ids, mask, index = extrapolation.windows(content, 10)
    assert ids.shape == (6, 10)  # ceil(23 / 8) = 3 windows per row
    assert sorted(index[index >= 0].tolist()) == list(range(46))
    assert (ids[index >= 0] == content.reshape(-1)[index[index >= 0]]).all()
    assert (ids[:, 0] == 0).all() and ids[2, 8] == 2 and mask[2].sum() == 7 + 2  # last window: 7 tokens


def test_loss_matches_the_training_loss_and_tokens_are_shared(mlm):
    tok, config, params = mlm
    ids, m = masked_stream(tok)
    rows = extrapolation.mlm_by_length(config, params, m["input_ids"], m["targets"], m["loss_weights"], [64, 302])
    assert rows[0]["tokens"] == rows[1]["tokens"] == int(m["loss_weights"].sum())
    # at 302 each row is one full window: the loss equals the training objective on <s> row </s>
    full = np.concatenate([np.zeros((2, 1), np.int32), m["input_ids"], np.full((2, 1), 2, np.int32)], axis=1)
    targets = np.concatenate([np.zeros((2, 1), np.int32), m["targets"], np.full((2, 1), 2, np.int32)], axis=1)
    weights = np.pad(m["loss_weights"], ((0, 0), (1, 1)))
    logits, _ = JinaBertForMaskedLM(config).apply({"params": params}, full, np.ones_like(full))
    loss, metrics = mlm_loss(logits, targets, weights)
    assert rows[1]["loss"] == pytest.approx(float(loss), rel=1e-4)
    assert rows[1]["accuracy"] == pytest.approx(100 * float(metrics["mlm_accuracy"]), abs=1e-3)
    # the paired difference and its standard error are those of the per-token differences
    assert rows[1]["delta"] == pytest.approx(rows[1]["loss"] - rows[0]["loss"], abs=1e-6)
    assert rows[1]["delta_se"] > 0 and rows[0]["delta"] == 0.0


def test_launch_mlm_by_length(mlm, tmp_path, capsys):
    _, config, params = mlm
    path = tmp_path / "mlm"
    save_model(path, 1, config, params, model_kind="masked_lm", tokenizer=tokenizer_dir())
    assert launch_evaluate.main(["--model", str(path), "--mlm-by-length", "--lengths", "64", "256", "--rows", "1"]) == 0
    out = capsys.readouterr().out
    lines = [l.split() for l in out.splitlines()]
    table = [l for l in lines if l and l[0] in ("64", "256")]
    assert [l[0] for l in table] == ["64", "256"] and table[0][-2] == table[1][-2]  # same masked tokens
    encoder_only = tmp_path / "enc"
    save_model(encoder_only, 1, config, params["bert"], tokenizer=tokenizer_dir())
    assert launch_evaluate.main(["--model", str(encoder_only), "--mlm-by-length"]) == 2
    assert "needs a masked-LM checkpoint" in capsys.readouterr().err
