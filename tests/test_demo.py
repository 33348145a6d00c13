"""The main job end to end at toy step counts: tokenizer, three stages, evaluation table, export, reload."""

import re

from launch import demo


def test_demo_runs_all_stages_and_exports(tmp_path, capsys):
    demo.main(["--workdir", str(tmp_path), "--gin_bindings", "TrainConfig.num_steps = 2",
               "--gin_bindings", "TrainConfig.batch_size = 8", "--gin_bindings", "TrainConfig.log_every = 1"])
    out = capsys.readouterr().out
    for stage in ("mlm", "pairs", "multitask"):
        assert re.search(rf"^{stage}\s+(-?\d+\.\d\s+){{5}}-?\d+\.\d$", out, re.M), out[-2000:]
        assert (tmp_path / stage / "checkpoints" / "2").is_dir()
    diff = float(re.search(r"max \|diff\| = ([0-9.e+-]+)", out).group(1))
    assert diff < 1e-5
    assert (tmp_path / "export" / "config.json").is_file() and (tmp_path / "tokenizer" / "tokenizer.json").is_file()
