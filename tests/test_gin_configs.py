"""Every gin file parses and binds; run files build a complete TrainConfig."""

import pathlib
import re

import gin
import pytest

from bilingual.training.trainer import STAGES, TrainConfig
from launch import configurables, data_factory, train_tokenizer  # noqa: F401  (register gin configurables)

GIN = pathlib.Path(__file__).resolve().parent.parent / "gin"
# finetune_*.gin runs build a FinetuneConfig instead (tests/test_finetune.py)
RUNS = sorted(p for p in (GIN / "runs").glob("*.gin") if not p.stem.startswith("finetune_"))


pytestmark = pytest.mark.usefixtures("clean_gin")  # tests/conftest.py


def demo_bindings(run) -> list[str]:
    """Runs on the bundled demo data name the demo's tokenizer, full-scale runs the ``TOKENIZER`` of their
    paths file (gs://): bind the test tokenizer in its place."""
    from tokenizer_fixture import tokenizer_dir

    text = run.read_text()
    if "datasets/demo.gin" in text:
        return [f"DEMO_TOKENIZER = '{tokenizer_dir()}'"]
    if re.search(r"include 'datasets/\w+_en_(mlm|pairs|multitask)\.gin'", text):
        return [f"TOKENIZER = '{tokenizer_dir()}'"]
    return []


@pytest.mark.parametrize("run", RUNS, ids=[p.stem for p in RUNS])
def test_run_files_build_a_train_config(run):
    configurables.parse([str(run)], demo_bindings(run))
    config, data, evaluation = configurables.build()
    config = config.resolved()
    assert isinstance(config, TrainConfig) and config.stage in STAGES
    assert config.num_steps >= 1 and config.batch_size >= 1
    assert config.optimizer.total_steps == config.num_steps >= config.optimizer.warmup_steps
    assert data["name"] and data["split"] == "train"
    assert "model" in config.__dataclass_fields__ and config.model.hidden_size % config.model.num_heads == 0


@pytest.mark.parametrize("path", sorted(GIN.rglob("*.gin")), ids=lambda p: str(p.relative_to(GIN)))
def test_every_gin_file_parses(path):
    gin.parse_config_file(str(path))


def test_full_scale_runs_have_the_paper_shapes():
    # TrainConfig.tokenizer unbound: the preset's vocabulary (the paths file names a gs:// tokenizer)
    configurables.parse([str(GIN / "runs" / "de_en_tpu_v4_64_mlm.gin")], ["TrainConfig.tokenizer = None"])
    config, data, _ = configurables.build()
    assert (config.model.vocab_size, config.model.num_layers, config.model.hidden_size) == (61056, 12, 768)
    assert config.model.compute_dtype == "bfloat16" and config.stage == "mlm" and data["name"] == "mlm_de_en_full"
    assert data["options"] == {"sequence_lengths": {"text": 512}, "mlm_rate": 0.3}  # TRAINING.md stage 1
    gin.clear_config()
    configurables.parse([str(GIN / "runs" / "es_en_tpu_v5e_64_pairs.gin")], ["TrainConfig.tokenizer = None"])
    config, data, _ = configurables.build()
    assert config.model.qk_layernorm and config.step.gradcache_chunks == 8 and data["name"] == "pairs_es_en_full"
    assert config.init_from == "gs://YOUR_BUCKET/bilingual/es-en/mlm/checkpoints"  # the chain's previous stage


def test_demo_runs_name_registered_demo_data(tmp_path):
    """The data names in the demo runs exist once the demo tasks are registered."""
    from tasks import demo, mixtures
    from tokenizer_fixture import tokenizer_dir

    registered = set(demo.register_demo_tasks(str(tokenizer_dir())))
    for stage in ("mlm", "pairs", "multitask"):
        gin.clear_config()
        configurables.parse([str(GIN / "runs" / f"demo_de_en_{stage}.gin")], [f"DEMO_TOKENIZER = '{tokenizer_dir()}'"])
        _, data, _ = configurables.build()
        assert data["name"] in registered, (stage, data["name"])


def test_bindings_override_files():
    run = GIN / "runs" / "cpu_smoke.gin"
    configurables.parse([str(run)], demo_bindings(run) + ["TrainConfig.num_steps = 7", "encoder.num_layers = 1"])
    config, _, _ = configurables.build()
    assert config.num_steps == 7 and config.model.num_layers == 1
    assert config.resolved().optimizer.total_steps == 7  # the schedule follows num_steps


def test_vocab_size_comes_from_the_tokenizer():
    """Derived, not repeated: the demo runs take encoder.vocab_size from TrainConfig.tokenizer; a bound value
    that disagrees is an error naming both keys; a missing tokenizer names its path."""
    from bilingual.config import ConfigError
    from tokenizer_fixture import build_tokenizer

    run = GIN / "runs" / "demo_de_en_pairs.gin"
    configurables.parse([str(run)], demo_bindings(run))
    config, _, _ = configurables.build()
    assert config.model.vocab_size == len(build_tokenizer()) and config.tokenizer
    gin.clear_config()
    configurables.parse([str(run)], demo_bindings(run) + ["encoder.vocab_size = 8192"])
    with pytest.raises(ConfigError, match="encoder.vocab_size=8192 but TrainConfig.tokenizer="):
        configurables.build()
    gin.clear_config()
    configurables.parse([str(run)], ["DEMO_TOKENIZER = '/nonexistent/tokenizer'"])
    with pytest.raises(ConfigError, match="TrainConfig.tokenizer='/nonexistent/tokenizer'"):
        configurables.build()


def test_unknown_binding_is_an_error_naming_it():
    with pytest.raises(ValueError, match="no_such_field"):
        configurables.parse([str(GIN / "runs" / "cpu_smoke.gin")], ["TrainConfig.no_such_field = 3"])
