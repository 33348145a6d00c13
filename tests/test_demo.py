"""The main job end to end at toy step counts: tokenizer, three stages, evaluation table, export, reload."""

import re

from launch import demo


def test_demo_runs_all_stages_and_exports(tmp_path, capsys):
    # 2 steps: the schedule follows num_steps, so its warmup must fit in them
    demo.main(["--workdir", str(tmp_path), "--gin_bindings", "TrainConfig.num_steps = 2",
               "--gin_bindings", "OptimizerConfig.warmup_steps = 1",
               "--gin_bindings", "TrainConfig.batch_size = 8", "--gin_bindings", "TrainConfig.log_every = 1",
               "--long-documents", "2", "--long-lengths", "256"])
    out = capsys.readouterr().out
    for task in ("Passkey-de", "Needle-de", "LongLit-de"):  # the final long-document step's rows
        assert re.search(rf"^multitask\s+{task}\s+\S+\s+\d+\.\d", out, re.M), out[-2000:]
    for stage in ("mlm", "pairs", "multitask"):
        assert re.search(rf"^{stage}\s+(-?\d+\.\d\s+){{5}}-?\d+\.\d$", out, re.M), out[-2000:]
        assert (tmp_path / stage / "checkpoints" / "2").is_dir()
    diff = float(re.search(r"max \|diff\| = ([0-9.e+-]+)", out).group(1))
    assert diff < 1e-5
    assert (tmp_path / "export" / "config.json").is_file() and (tmp_path / "tokenizer" / "tokenizer.json").is_file()


def test_ablation_runs_each_sts_variant(tmp_path, capsys):
    from launch import ablation

    demo.main(["--workdir", str(tmp_path / "demo"), "--gin_bindings", "TrainConfig.num_steps = 2",
               "--gin_bindings", "OptimizerConfig.warmup_steps = 1", "--gin_bindings", "TrainConfig.batch_size = 8",
               "--long-documents", "0"])
    ablation.main(["--pairs", str(tmp_path / "demo" / "pairs" / "checkpoints"),
                   "--tokenizer", str(tmp_path / "demo" / "tokenizer"), "--workdir", str(tmp_path / "ablation"),
                   "--seeds", "0", "1", "--gin_bindings", "TrainConfig.num_steps = 2",
                   "--gin_bindings", "OptimizerConfig.warmup_steps = 1",
                   "--gin_bindings", "TrainConfig.batch_size = 8"])
    out = capsys.readouterr().out
    for variant in ("pearson", "mse", "no STS"):
        assert re.search(rf"^{variant}\s+-?\d", out, re.M), out[-1500:]
    # The no-STS variant trained on retrieval batches only: no STS step was compiled in its runs.
    no_sts_part = out[out.index("[mse seed 1]"):out.index("[no STS seed 1]")]
    assert "compiled retrieval step" in no_sts_part and "compiled sts step" not in no_sts_part
    import json
    summary = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    assert set(summary) == {"pearson", "mse", "no STS"} and len(summary["mse"]["runs"]) == 2

    # Matryoshka and other retrieval data: the multitask stage with the dims recorded for the export, and
    # with the demo data read from a copy whose retrieval file has other negatives (here: rotated by one row).
    import shutil
    from bilingual import artifacts
    from data_helpers import DEMO_TRAIN
    data = tmp_path / "mined_data"
    shutil.copytree(DEMO_TRAIN, data)
    lines = (data / "retrieval" / "de.tsv").read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    rotated = [r[:2] + rows[(i + 1) % len(rows)][2:] for i, r in enumerate(rows)]
    (data / "retrieval" / "de.tsv").write_text("\n".join([lines[0]] + ["\t".join(r) for r in rotated]) + "\n",
                                               encoding="utf-8")
    ablation.main(["--pairs", str(tmp_path / "demo" / "pairs" / "checkpoints"),
                   "--tokenizer", str(tmp_path / "demo" / "tokenizer"), "--workdir", str(tmp_path / "ablation2"),
                   "--seeds", "0", "--variants", "matryoshka", "--retrieval_data", str(data),
                   "--gin_bindings", "TrainConfig.num_steps = 2", "--gin_bindings", "OptimizerConfig.warmup_steps = 1",
                   "--gin_bindings", "TrainConfig.batch_size = 8"])
    out = capsys.readouterr().out
    assert re.search(r"^matryoshka\s+-?\d", out, re.M) and re.search(r"^mined\s+-?\d", out, re.M), out[-1500:]
    meta = artifacts.load_meta(tmp_path / "ablation2" / "matryoshka" / "seed0" / "multitask" / "checkpoints" / "2")
    assert meta["matryoshka_dims"] == [128, 64, 32, 16]
    operative = (tmp_path / "ablation2" / "mined" / "seed0" / "multitask").rglob("*.gin")
    assert any(str(data) in f.read_text() for f in operative)
