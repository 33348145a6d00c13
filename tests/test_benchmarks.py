"""`make bench` keeps working: the suite runs end to end on the tiny preset and its table reads its JSON."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import suite  # noqa: E402


def test_suite_runs_train_and_gradcache_on_tiny(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--preset", "tiny",
                           "--sections", "train,gradcache", "--set", "step_repeats=1", "--set", "matmul_sizes=256",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    train, gc = results["train"], results["gradcache"]
    for key in ("mlm", "pairs"):
        assert train[key]["tokens_per_s"] > 0 and 0 < train[key]["mfu_measured_peak"]
        # tokens/s and FLOP/s come from the same step time
        tokens = train[key]["batch"] * train[key]["length"] * (2 if key == "pairs" else 1)
        assert train[key]["tokens_per_s"] == pytest.approx(tokens / train[key]["seconds"])
    assert gc["large"] == 4096 and gc["gradcache_large_bytes"] > 0 and gc["plain_small_bytes"] > 0
    text = proc.stdout
    assert "MLM step 2 x 512, tokens/s" in text and "GradCache pair step memory, 4096 vs 256 pairs" in text
    assert f"{gc['gradcache_large_bytes'] / gc['gradcache_small_bytes']:.3f} (flat = 1)" in text


def test_overrides_are_typed_and_checked():
    errors = []

    def error(msg):
        errors.append(msg)
        raise SystemExit(2)

    p = suite.apply_overrides(suite.PROFILES["cpu"], ["mlm_batch=8", "matmul_sizes=512,1024",
                                                      "compute_dtype=bfloat16"], error)
    assert (p.mlm_batch, p.matmul_sizes, p.compute_dtype) == (8, (512, 1024), "bfloat16")
    with pytest.raises(SystemExit):
        suite.apply_overrides(p, ["mlm_batchez=8"], error)
    assert "mlm_batchez" in errors[-1] and "mlm_batch" in errors[-1]
    with pytest.raises(SystemExit):
        suite.apply_overrides(p, ["mlm_batch=eight"], error)
    assert "'eight' is not a valid int" in errors[-1]


def test_table_from_recorded_gpu_run():
    """The committed H200 figures render into the same table rows the CPU run prints."""
    results = json.loads((ROOT / "benchmarks" / "results" / "h200_2026-11-29.json").read_text())
    rows = suite.table(results, suite.Profile(**{**results["config"],
                                                 "matmul_sizes": tuple(results["config"]["matmul_sizes"])}))
    names = [r[0] for r in rows]
    assert names[0] == "inference 32 x 128 tokens, tokens/s"
    assert any(n.startswith("pair step 4096 x 2 x 128, GradCache 16 chunks") for n in names)
    assert rows[-1][1] == "not run"  # the pipeline row: no tensorflow on that image
