"""What a rehearsal of a full-scale run file changes, and the bundled data it points the run file at.

A rehearsal (tests/test_rehearsal.py, tests/test_launchers.py) runs a slice or cluster run file as written,
with only these overrides:

* the model: the ``tiny`` preset (with the architecture switches of the run's own preset, e.g. base-es's
  qk-LayerNorm layout) in float32 (this CPU has no fast bfloat16); ``remat`` and the rest stay as written;
* a few steps (``TrainConfig.num_steps``, and the warmup cut to fit them);
* a small batch: the run's devices x GradCache chunks rows (the least the run's own mesh and chunking take);
* its data paths: the macros of ``gin/datasets/<pair>_paths.gin``, the same gin keys a user sets, pointed at
  files made here from the bundled demo data (``data/demo``), in the formats the macros name: a prepared TFDS
  ``wikipedia/20230601.<lang>``, ArrayRecord shards made by ``launch.prepare_data`` from a parquet file,
  Hugging Face ``save_to_disk`` directories, parquet files, JSONL, and the bundled TSV/text files as they are;
  ``EVAL_DATA`` is a cut of the bundled evaluation data (``eval_subset``);
* the previous stage's checkpoints (``MLM_CHECKPOINTS`` / ``PAIRS_CHECKPOINTS``) and the tokenizer
  (``TOKENIZER``), which the chain itself produced.

Mesh axes, stage logic, sequence lengths, checkpointing, the evaluation hook and data sharding stay as written.
"""

from __future__ import annotations

import csv
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
GIN = ROOT / "gin"
DEMO = ROOT / "data" / "demo" / "train"
DEMO_EVAL = ROOT / "data" / "demo" / "eval"
# 3, not 2: the multi-task mixtures are drawn by size (STS is the larger) and with seed 0 the first two
# batches are STS ones; the third is retrieval, so the rehearsal trains both task types' steps
# (tests/test_rehearsal.py checks the data states for it)
STEPS = 3
WIKI_ROWS = 300  # of each language's demo text; the rest becomes the "CulturaX" shards
EVAL_ROWS = 24  # rows per evaluation file (queries for XQuAD) in the rehearsal's EVAL_DATA


def read_tsv(path: pathlib.Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]


def write_jsonl(path: pathlib.Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def save_to_disk(path: pathlib.Path, columns: dict[str, list]) -> str:
    import datasets

    datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    return str(path)


def to_parquet(path: pathlib.Path, columns: dict[str, list]) -> str:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns).to_parquet(str(path))
    return str(path)


def demo_lines(lang: str) -> list[str]:
    return [line for line in (DEMO / "mlm" / f"{lang}.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


def culturax_shards(out: pathlib.Path, lang: str, lines: list[str]) -> list[str]:
    """``CULTURAX_<LANG>``: a parquet file with a ``text`` column converted by ``launch.prepare_data``, as the
    paths file's comment says to do with CulturaX."""
    from launch import prepare_data

    parquet = to_parquet(out / f"culturax/{lang}/{lang}_part_00000.parquet", {"text": lines})
    prepare_data.main(["--kind", "text", "--shards", "2", "--out", str(out / f"culturax-ar/{lang}"), parquet])
    return [str(out / f"culturax-ar/{lang}/*.array_record")]


def retrieval_columns(lang: str) -> dict[str, list]:
    rows = read_tsv(DEMO / "retrieval" / f"{lang}.tsv")
    return {"query": [r[0] for r in rows], "positive": [r[1] for r in rows], "negatives": [r[2:] for r in rows]}


def sts_columns(lang: str) -> dict[str, list]:
    rows = read_tsv(DEMO / "sts" / f"{lang}.tsv")
    return {"sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows],
            "similarity_score": [float(r[2]) for r in rows]}


def eval_subset(out: pathlib.Path, rows: int = EVAL_ROWS) -> str:
    """``EVAL_DATA``: the bundled evaluation data (``data/demo/eval``, the layout of ``shared/data``) with every
    TSV cut to ``rows`` rows taken at an even stride (so SIB-200 keeps its labels), and XQuAD to its first
    ``rows`` queries, their qrels and the passages those name. The suites run unchanged; the encoder compiles
    fewer shapes (what a rehearsal's evaluation costs is compiling, not encoding)."""
    for path in sorted(DEMO_EVAL.rglob("*.tsv")):
        if path.parent.name == "xquad":
            continue
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        body = lines[1:]
        step = max(1, len(body) // rows)
        target = out / path.relative_to(DEMO_EVAL)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(lines[0] + "".join(body[::step][:rows]), encoding="utf-8")
    xquad, target = DEMO_EVAL / "xquad", out / "xquad"
    target.mkdir(parents=True, exist_ok=True)
    first = [json.loads(line)["_id"] for line in (xquad / "queries-de.jsonl").read_text(encoding="utf-8").splitlines()]
    keep = set(first[:rows])
    qrels = (xquad / "qrels-test.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in qrels[1:] if line.split("\t")[0] in keep]
    (target / "qrels-test.tsv").write_text(qrels[0] + "".join(kept), encoding="utf-8")
    passages = {line.split("\t")[1] for line in kept}
    for path in xquad.glob("*.jsonl"):
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        chosen = [r for r in records if (r["_id"] in keep if path.name.startswith("queries") else r["_id"] in passages)]
        write_jsonl(target / path.name, chosen)
    return str(out)


def data_macros(pair: str, out: pathlib.Path) -> dict[str, object]:
    """Every path macro of ``gin/datasets/<pair>_paths.gin`` (pair ``de_en`` or ``es_en``) -> bundled data
    written under ``out`` (or a bundled file as it is). ``TOKENIZER`` is set by the caller."""
    from prepared_tfds import write_prepared_tfds

    lang = pair.split("_")[0]
    L = lang.upper()
    macros: dict[str, object] = {"EVAL_DATA": eval_subset(out / "eval"), "TFDS_DATA_DIR": str(out / "tfds")}
    for code in (lang, "en"):
        lines = demo_lines(code)
        write_prepared_tfds(out / "tfds", f"wikipedia/20230601.{code}",
                            [{"title": f"{code} {i}", "text": t} for i, t in enumerate(lines[:WIKI_ROWS])])
        macros[f"CULTURAX_{code.upper()}"] = culturax_shards(out, code, lines[WIKI_ROWS:])
        macros[f"OPUS_MONO_{code.upper()}"] = [str(DEMO / "mlm" / f"{code}.txt")]
        macros[f"STS_{code.upper()}"] = [to_parquet(out / f"stsb_multi_mt/{code}/train-00000-of-00001.parquet",
                                                    sts_columns(code))]
    retrieval = retrieval_columns(lang)
    if lang == "de":  # German STSb train pairs scored >= 4 (the demo's pairs_de), as JSONL
        own = [{"query": r[0], "passage": r[1]} for r in read_tsv(DEMO / "pairs" / "de.tsv")]
    else:  # no Spanish-only pairs are bundled: the Spanish retrieval (question, passage) pairs
        own = [{"query": q, "passage": p} for q, p in zip(retrieval["query"], retrieval["positive"])]
    macros[f"PAIRS_{L}"] = [write_jsonl(out / f"pairs/{lang}/part-0.jsonl", own)]
    english = [{"query": a, "passage": b} for a, b, s in zip(*sts_columns("en").values()) if s >= 4.0]
    macros["PAIRS_EN"] = [write_jsonl(out / "pairs/en/part-0.jsonl", english)]
    macros[f"PAIRS_{L}_EN"] = [str(DEMO / "pairs" / f"{lang}-en.tsv")]
    macros[f"QA_{L}"] = [save_to_disk(out / f"hf/qa-{lang}", {"question": retrieval["query"],
                                                                 "context": retrieval["positive"]})]
    macros[f"RETRIEVAL_{L}"] = [save_to_disk(out / f"hf/retrieval-{lang}", retrieval)]
    # no English retrieval set is bundled: the target language's rows stand in, as JSONL
    macros["RETRIEVAL_EN"] = [write_jsonl(out / "retrieval/en/part-0.jsonl",
                                          [{"query": q, "positive": p, "negatives": n}
                                           for q, p, n in zip(*retrieval.values())])]
    return macros


def train_tokenizer(pair: str, macros: dict, out: pathlib.Path) -> str:
    """The chain's first step, as the README gives it: ``launch.train_tokenizer`` with
    ``gin/tokenizer/<pair>_chain.gin`` (full-size settings), its corpora macros pointed at the bundled text."""
    lang = pair.split("_")[0]
    bindings = [f"{m} = {macros[m]!r}" for m in (f"OPUS_MONO_{lang.upper()}", "OPUS_MONO_EN")]
    cmd = [sys.executable, "-m", "launch.train_tokenizer", f"--gin_file=gin/tokenizer/{pair}_chain.gin",
           *[f"--gin_bindings={b}" for b in bindings], f"--out={out}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return str(out)


def run_overrides(run_file: pathlib.Path, devices: int) -> list[str]:
    """The model, steps and batch overrides of a rehearsal of ``run_file`` on ``devices`` devices."""
    from bilingual.config import PRESETS
    from gin_helpers import bound_values

    preset, chunks = bound_values(run_file, "encoder.preset", "StepConfig.gradcache_chunks")
    arch = {k: PRESETS[preset][k] for k in ("qk_layernorm", "layer_layout") if k in PRESETS[preset]}
    return ["encoder.preset = 'tiny'", "encoder.compute_dtype = 'float32'",
            *[f"encoder.{k} = {v!r}" for k, v in arch.items()],
            f"TrainConfig.num_steps = {STEPS}", "OptimizerConfig.warmup_steps = 1",
            f"TrainConfig.batch_size = {devices * (chunks or 1)}"]


def bindings_for(run_file: pathlib.Path, macros: dict, devices: int = 8, **extra) -> list[str]:
    """All the gin bindings of a rehearsal of ``run_file``: data macros, then model/steps/batch, then
    ``extra`` macros (``TOKENIZER``, ``MLM_CHECKPOINTS``, ...)."""
    return ([f"{k} = {v!r}" for k, v in macros.items()] + run_overrides(run_file, devices)
            + [f"{k} = {v!r}" for k, v in extra.items()])
