"""Misuse of the entry points: nothing lost, nothing silently wrong (issue 17).

Bad input to any ``launch`` CLI is one ``error:`` line and exit status 2 (``--debug`` / ``BILINGUAL_DEBUG=1``:
the traceback); ``import_hf`` and ``export`` never lose or half-write what is at ``--out``; a truncated weights
file, an unknown task or mixture and a bad data-iterator state in a checkpoint are errors that name the file,
the gin key or the checkpoint step.
"""

import os
import pathlib
import re
import subprocess
import sys

import hf_testing as H
from hf_testing import tokenizer_dir  # noqa: F401 (fixture)
import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file

from bilingual.artifacts import CheckpointError, load_model_tree
from bilingual.artifacts import save_model
from bilingual.config import ConfigError
from bilingual.export import hf_state
from bilingual.export.hf_export import export_hf
from bilingual.export.hf_import import HFImportError, read_tensors
from launch import export as export_cli
from launch import import_hf as import_cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
ENV.pop("BILINGUAL_DEBUG", None)
# Lines a failing run may print before its error that are not about the error: TensorFlow's C++ start-up
# banner (its import prints it whatever TF_CPP_MIN_LOG_LEVEL says) and the run's own log records.
NOISE = re.compile(r"(WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} \d\d:\d\d:\d\d"
                   r"|To enable the following instructions|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+ (INFO|WARNING) )")


def run_cli(module, *args, **env):
    return subprocess.run([sys.executable, "-m", f"launch.{module}", *map(str, args)], cwd=ROOT,
                          env={**ENV, **env}, capture_output=True, text=True, timeout=600)


def strs(*args) -> list[str]:
    return [str(a) for a in args]


def error_line(proc) -> str:
    """The one line a bad input prints (exit status 2, no traceback, nothing else on stderr)."""
    lines = [line for line in proc.stderr.splitlines() if not NOISE.match(line)]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stderr.rstrip().endswith(lines[0])
    return lines[0]


def traceback_of(proc, error_type: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr and error_type in proc.stderr, proc.stderr
    return proc.stderr


def flat_equal(a, b):
    a, b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=str(key))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir):  # noqa: F811
    """Two different encoders A and B: their parameters, orbax checkpoints and Hugging Face exports."""
    base = tmp_path_factory.mktemp("misuse")
    config = H.tiny_config(num_layers=1)
    out = {}
    for name, seed in (("A", 3), ("B", 4)):
        params = H.init_params(config, seed=seed)
        save_model(base / f"ckpt_{name}", 1, config, params)
        export_hf(config, params, base / f"hf_{name}", tokenizer_dir=tokenizer_dir)
        out[name] = (params, base / f"ckpt_{name}", base / f"hf_{name}")
    return config, out


# ------------------------------------------------------------------------------------- 1. import_hf --out


def test_import_into_an_out_with_steps_is_refused_and_overwrite_replaces_only_its_step(models, tmp_path, capsys):
    _, m = models
    out = tmp_path / "imported"
    assert import_cli.main(strs("--hf", m["A"][2], "--out", out)) == 0
    capsys.readouterr()
    assert import_cli.main(strs("--hf", m["B"][2], "--out", out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --out {out} already holds checkpoint steps [0]")
    flat_equal(load_model_tree(out / "0")[2], m["A"][0])
    assert import_cli.main(strs("--hf", m["B"][2], "--out", out, "--step", "5")) == 2  # another step: refused too
    assert sorted(p.name for p in out.iterdir()) == ["0", "tokenizer"]

    assert import_cli.main(strs("--hf", m["B"][2], "--out", out, "--overwrite")) == 0
    assert "(replaced the earlier step 0)" in capsys.readouterr().out
    flat_equal(load_model_tree(out / "0")[2], m["B"][0])
    assert import_cli.main(strs("--hf", m["A"][2], "--out", out, "--step", "7", "--overwrite")) == 0
    flat_equal(load_model_tree(out / "0")[2], m["B"][0])  # only the step written is replaced
    flat_equal(load_model_tree(out / "7")[2], m["A"][0])
    assert not list(tmp_path.glob(".imported.partial-*"))


def test_an_interrupted_import_leaves_nothing_at_out(models, tmp_path, monkeypatch):
    _, m = models

    def save_then_die(root, *args, **kwargs):
        save_model(root, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(import_cli, "save_model", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        import_cli.main(strs("--hf", m["A"][2], "--out", tmp_path / "imported"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ 2. export --out


def test_export_overwrite_replaces_only_the_files_it_owns(models, tmp_path, tokenizer_dir, capsys):  # noqa: F811
    config, m = models
    out = tmp_path / "hub-clone"
    (out / ".git" / "objects").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / "NOTES.md").write_text("mine\n")
    args = ["--tokenizer", tokenizer_dir, "--out", out]
    assert export_cli.main(strs("--checkpoint", m["A"][1], *args)) == 0  # a clone holding no export files: fine
    assert export_cli.main(strs("--checkpoint", m["B"][1], *args, "--auto_map", "upstream")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(r"error: output directory .* already holds files an export writes "
                                             r"\(1_Pooling, 2_Normalize, README.md, config.json, ", err)
    assert export_cli.main(strs("--checkpoint", m["B"][1], *args, "--auto_map", "upstream", "--overwrite")) == 0
    assert not (out / "modeling_bert.py").exists()  # the earlier export's code is not left stale
    assert export_cli.main(strs("--checkpoint", m["B"][1], *args, "--overwrite")) == 0
    assert (out / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n" and (out / ".git" / "objects").is_dir()
    assert (out / "NOTES.md").read_text() == "mine\n"
    assert not list(tmp_path.glob(".hub-clone.*"))
    tensors = load_file(str(out / "model.safetensors"))
    expected = hf_state.to_export_state_dict(m["B"][0])
    assert sorted(tensors) == sorted(expected)
    for name in tensors:
        np.testing.assert_array_equal(tensors[name], expected[name])

    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ids, mask = H.padded_batch(tokenizer, [9, 4])
    model = AutoModel.from_pretrained(str(out), trust_remote_code=True).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask))[0].numpy()
    flax_hidden, _ = H.flax_encoder(config, m["B"][0], ids, mask)
    np.testing.assert_allclose(hidden[mask == 1], flax_hidden[mask == 1], atol=1e-5, rtol=0)


def test_classifier_export_keeps_foreign_files_and_drops_stale_ones(models, tmp_path, tokenizer_dir):  # noqa: F811
    from bilingual.export.hf_classifier import export_classifier, import_classifier
    from bilingual.export.hf_export import ExportError
    from bilingual.heads import HeadConfig, init_head_params, model_for_head

    config, m = models
    out = tmp_path / "model"
    export_hf(config, m["A"][0], out, tokenizer_dir=tokenizer_dir)
    (out / ".git").mkdir()
    (out / ".git" / "config").write_text("[core]\n")
    head = HeadConfig("classification", num_labels=2, pooling="mean")
    params = jax.tree.map(np.asarray, init_head_params(model_for_head(config, head), jax.random.key(0), m["B"][0]))
    with pytest.raises(ExportError, match="already holds files an export writes"):
        export_classifier(config, head, params, out, tokenizer_dir=tokenizer_dir)
    export_classifier(config, head, params, out, tokenizer_dir=tokenizer_dir, overwrite=True)
    assert (out / ".git" / "config").read_text() == "[core]\n"
    assert not (out / "modules.json").exists() and not (out / "1_Pooling").exists()  # the encoder's, not left
    _, got_head, got_params, _ = import_classifier(out)
    assert got_head == head
    for got, want in zip(jax.tree.leaves(got_params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------- 3. truncated safetensors


def test_a_truncated_safetensors_file_is_named(models, tmp_path):
    import shutil

    _, m = models
    broken = tmp_path / "broken"
    shutil.copytree(m["A"][2], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(HFImportError, match=f"{re.escape(str(weights))} is truncated or not a safetensors file"):
        read_tensors(broken)
    line = error_line(run_cli("import_hf", "--hf", broken, "--out", tmp_path / "ckpt"))
    assert f"{weights} is truncated or not a safetensors file" in line
    assert not (tmp_path / "ckpt").exists()


# ---------------------------------------------------------------------------- 4. one error path for every CLI


@pytest.fixture(scope="module")
def bad_rows_gin(tmp_path_factory, tokenizer_dir):  # noqa: F811
    base = tmp_path_factory.mktemp("bad_rows")
    (base / "pairs.tsv").write_text("query\tpassage\nHallo Welt\tHello world\nnur eine Spalte\nDer Hund\tThe dog\n")
    gin_file = base / "bad_rows.gin"
    gin_file.write_text(f"""include 'models/tiny.gin'
include 'stages/pairs.gin'
register_data.tasks = [@pairs_bad/register_pairs_task()]
pairs_bad/register_pairs_task.name = 'pairs_bad'
pairs_bad/register_pairs_task.files = ['{base / "pairs.tsv"}']
pairs_bad/register_pairs_task.tokenizer = '{tokenizer_dir}'
TrainConfig.tokenizer = '{tokenizer_dir}'
data.name = 'pairs_bad'
data.options = {{'sequence_lengths': {{'query': 16, 'passage': 16}}}}
TrainConfig.num_steps = 2
TrainConfig.batch_size = 8
OptimizerConfig.warmup_steps = 1
""")
    return base, gin_file


def smoke(tokenizer):
    return ["--gin_file", "gin/runs/cpu_smoke.gin", "--gin_bindings", f"DEMO_TOKENIZER = '{tokenizer}'"]


def test_train_with_an_unknown_gin_binding(tokenizer_dir, tmp_path):  # noqa: F811
    args = [*smoke(tokenizer_dir), "--gin_bindings", "TrainConfig.no_such_field = 3", "--workdir", tmp_path]
    line = error_line(run_cli("train", *args))
    assert line.startswith("error: gin bindings: Configurable 'TrainConfig' doesn't have a parameter named "
                           "'no_such_field'. In bindings string line 2")
    traceback_of(run_cli("train", *args, "--debug"), "ConfigError")


def test_train_with_a_bad_gin_file_names_it(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("TrainConfig.num_steps = 3\nNoSuchThing.value = 2\n")
    line = error_line(run_cli("train", "--gin_file", bad, "--workdir", tmp_path / "w"))
    assert line == (f"error: gin file {bad}: No configurable matching 'NoSuchThing'. "
                    f"In file \"{bad}\", line 2 NoSuchThing.value = 2")


def test_train_with_an_unknown_data_name(tokenizer_dir, tmp_path):  # noqa: F811
    line = error_line(run_cli("train", *smoke(tokenizer_dir), "--gin_bindings", "data.name = 'mlm_fr'",
                              "--workdir", tmp_path))
    assert "data.name='mlm_fr' is not a registered task or mixture" in line
    assert "tasks (11): mlm_de, mlm_en, mlm_es, pairs_de," in line and "mixtures (6): mlm_de_en," in line
    assert not (tmp_path / "checkpoints").exists()


def test_train_with_a_malformed_data_row(bad_rows_gin, tmp_path):
    base, gin_file = bad_rows_gin
    line = error_line(run_cli("train", "--gin_file", gin_file, "--workdir", tmp_path))
    assert line == f"error: {base / 'pairs.tsv'}:3: 1 tab-separated columns, expected 2"
    traceback_of(run_cli("train", "--gin_file", gin_file, "--workdir", tmp_path, BILINGUAL_DEBUG="1"),
                 "DataError")


def test_export_with_a_missing_checkpoint(tokenizer_dir, tmp_path):  # noqa: F811
    args = ["--checkpoint", tmp_path / "nothing", "--tokenizer", tokenizer_dir, "--out", tmp_path / "out"]
    assert error_line(run_cli("export", *args)) == f"error: checkpoint path {tmp_path / 'nothing'} does not exist"
    traceback_of(run_cli("export", *args, "--debug"), "CheckpointError")


def test_evaluate_with_an_unknown_suite(tmp_path):
    line = error_line(run_cli("evaluate", "--model", tmp_path, "--suite", "fr"))
    assert line.startswith("error: unknown suite 'fr'; suites: de, ")
    traceback_of(run_cli("evaluate", "--model", tmp_path, "--suite", "fr", BILINGUAL_DEBUG="1"), "SuiteError")


def test_every_entry_point_uses_the_one_error_path():
    for path in sorted((ROOT / "launch").glob("*.py")):
        if path.name in ("__init__.py", "cli.py", "configurables.py", "data_factory.py", "topology.py"):
            continue
        text = path.read_text()
        assert "@cli.entry_point\ndef main(" in text and "cli.parser(__doc__)" in text, path.name
        assert 'sys.exit(cli.exit_status(main()))' in text and "SystemExit" not in text, path.name


def test_entry_point_reports_known_errors_on_every_process_and_lets_bugs_through(monkeypatch, capsys):
    from launch import cli

    monkeypatch.setattr(jax, "process_index", lambda: 3)  # a worker process reports its own error too

    @cli.entry_point
    def bad_config(argv=None):
        raise ConfigError("TrainConfig.batch_size=6:\n  not divisible")

    @cli.entry_point
    def bug(argv=None):
        raise ZeroDivisionError("a bug")

    @cli.entry_point
    def outer(argv=None):
        return bad_config([])  # an entry point called by another: the outer one reports

    assert bad_config([]) == 2 and outer([]) == 2
    assert capsys.readouterr().err == "error: TrainConfig.batch_size=6: not divisible\n" * 2
    with pytest.raises(ZeroDivisionError):
        bug([])
    with pytest.raises(ConfigError):
        bad_config(["--debug"])
    assert cli.exit_status(["lines"]) == 0 and cli.exit_status(2) == 2


# --------------------------------------------------------------------------------- 5. unknown task or mixture


def test_unknown_task_names_data_name_and_lists_the_registered_ones(monkeypatch, tokenizer_dir):  # noqa: F811
    from tasks import batching, demo, mixtures

    demo.register_demo_tasks(str(tokenizer_dir))
    with pytest.raises(mixtures.UnknownNameError, match=r"data.name='retrieval_fr' is not a registered task or "
                                                        r"mixture .*; tasks \(\d+\): .*\bmlm_de, .*\bmlm_en\b.*; "
                                                        r"mixtures \(\d+\): .*\bmlm_de_en\b"):
        batching.make_batch_iterator("retrieval_fr")
    monkeypatch.setattr(mixtures, "MIXTURES", {f"mix_{i:03d}": None for i in range(100)})
    with pytest.raises(ConfigError, match=r"mixtures \(\d+\): mix_000, mix_001, .*mix_039, \.\.\. and \d+ more$"):
        mixtures.resolve("nope")


# --------------------------------------------------------------------------- 6. data-iterator state on resume


def test_a_malformed_iterator_state_names_the_field(tokenizer_dir):  # noqa: F811
    from tasks import batching, demo

    demo.register_demo_tasks(str(tokenizer_dir))
    it = batching.make_batch_iterator("pairs_de", batch_size=2)
    good = it.get_state()
    for bad, field in [({**good, "step": "7"}, "'step': '7'"), ({**good, "tasks": None}, "'tasks': None"),
                       ({**good, "tasks": {"pairs_de": {"position": -1, "offset": 0}}},
                        "'tasks.pairs_de': {'position': -1"), ([], "'(the state)': []")]:
        with pytest.raises(ValueError, match=f"data iterator state has malformed fields {{{re.escape(field)}"):
            it.set_state(bad)
    it.set_state(good)


def test_a_bad_data_state_in_a_checkpoint_names_the_step(tmp_path):
    from bilingual import get_config, sharding
    from bilingual.optim import OptimizerConfig
    from bilingual.training import steps
    from bilingual.training.trainer import TrainConfig, train
    from train_helpers import SyntheticBatches

    class BadState(SyntheticBatches):
        def get_state(self):
            return {"position": "seven"}

    def config(num_steps):
        return TrainConfig(stage="pairs", model=get_config("tiny", vocab_size=512, num_layers=1),
                           num_steps=num_steps, batch_size=8, checkpoint_every=2, log_every=2,
                           optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=4),
                           mesh=sharding.MeshConfig(data=4, fsdp=2), peak_flops_per_device=1e11,
                           step=steps.StepConfig(max_predictions=8))

    train(config(2), tmp_path, BadState(["pairs"]))
    with pytest.raises(CheckpointError, match=rf"checkpoint {re.escape(str(tmp_path / 'checkpoints' / '2'))}: its "
                                              r"data iterator state cannot be restored \(invalid literal"):
        train(config(4), tmp_path, SyntheticBatches(["pairs"]))


def test_gin_include_survives_an_importable_namespace_package_of_the_same_name(tmp_path, monkeypatch):
    """A ``models/`` directory on ``sys.path`` makes ``models`` a namespace package; gin's package reader then
    failed with TypeError on ``include 'models/tiny.gin'`` before trying our search path (CI, 2026-12-02)."""
    import importlib.util

    import gin

    from launch import cli, configurables  # noqa: F401  (registers the configurables tiny.gin binds)

    (tmp_path / "models").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert importlib.util.find_spec("models").origin is None  # the condition that broke gin
    run = tmp_path / "run.gin"
    run.write_text("include 'models/tiny.gin'\n")
    gin.clear_config()
    gin.add_config_file_search_path(str(ROOT / "gin"))
    try:
        cli.parse_gin([str(run)], [])
        assert gin.query_parameter("encoder.preset") == "tiny"
    finally:
        gin.clear_config()
