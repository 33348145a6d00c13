"""Hard-negative mining: ``bilingual.negative_mining`` against a brute-force numpy reference, its IVF index,
its seeded sampling, and ``launch.mine_negatives`` end to end on the bundled German pairs."""

import json

import numpy as np
import pytest

from tokenizer_fixture import write_tiny_checkpoint
from bilingual.encoder_api import Encoder
from bilingual.negative_mining import MiningConfig, mine, normalize_text
from launch import mine_negatives
from rehearsal import DEMO
from tasks.records import open_records
from tasks.row_parser import RowParser

Q, N, H = 40, 300, 16


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def toy(seed=0):
    """Queries near their positive (cosine about 0.9), among 300 random passages (cosines about N(0, 1/16))."""
    rng = np.random.default_rng(seed)
    corpus = unit(rng.normal(size=(N, H)))
    positives = rng.choice(N, size=Q, replace=False)
    queries = unit(corpus[positives] + 0.45 * unit(rng.normal(size=(Q, H))))
    query_keys = [f"q{i}" for i in range(Q)]
    corpus_keys = [f"p{j}" for j in range(N)]
    return queries, corpus, positives, query_keys, corpus_keys


def brute_force(queries, corpus, positives, config, query_keys, corpus_keys):
    """The module docstring's rules, written out over the full score matrix (no index, no top-k)."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    out = []
    for i, row in enumerate(scores):
        p = positives[i]
        ranked = [j for j in np.argsort(-row, kind="stable")
                  if j != p and corpus_keys[j] not in (corpus_keys[p], query_keys[i])]
        ok = []
        for j in ranked[config.range_min:config.range_max]:
            s, ps = row[j], row[p]
            if ((config.max_score is None or s <= config.max_score)
                    and (config.min_score is None or s >= config.min_score)
                    and (config.absolute_margin is None or s <= ps - config.absolute_margin)
                    and (config.relative_margin is None or s <= ps * (1 - config.relative_margin))):
                ok.append(int(j))
        out.append(ok)
    return out


def test_exact_search_with_every_filter_equals_brute_force():
    queries, corpus, positives, qkeys, ckeys = toy()
    scores = queries @ corpus.T
    # duplicates: the best non-positive passage of query 0 carries query 0's text, and that of query 1
    # its positive's text; neither may be taken
    for i, key_of in ((0, lambda i: qkeys[i]), (1, lambda i: ckeys[positives[i]])):
        best = next(j for j in np.argsort(-scores[i]) if j != positives[i])
        ckeys[best] = key_of(i)
    config = MiningConfig(num_negatives=4, range_min=2, range_max=10, relative_margin=0.05, absolute_margin=0.02,
                          max_score=0.5, min_score=-0.5)
    got = mine(queries, corpus, positives, config, qkeys, ckeys, search_batch=7)
    reference = brute_force(queries, corpus, positives, config, qkeys, ckeys)
    assert got.exact
    # float32 scores from faiss vs float64 here: |error| <= H * 2^-24 ~ 1e-6, far below the gaps between
    # 300 random cosines (about 1e-3 apart near the top), so the rankings and filter decisions agree
    assert got.negatives == [r[:4] for r in reference]
    for i, (ids, values) in enumerate(zip(got.negatives, got.scores)):
        np.testing.assert_allclose(values, scores[i, ids], atol=1e-5)
    assert got.counts() == {k: sum(len(r[:4]) == k for r in reference) for k in range(5)}
    # the filters did something: without them the first 4 ranks would be taken
    plain = brute_force(queries, corpus, positives, MiningConfig(num_negatives=4, range_max=10), qkeys, ckeys)
    assert sum(a != b[:4] for a, b in zip(got.negatives, plain)) > Q // 2
    assert sum(len(n) < 4 for n in got.negatives) > 0  # max_score leaves some queries short


def test_random_sampling_is_seeded_per_query_and_within_the_eligible():
    queries, corpus, positives, qkeys, ckeys = toy(1)
    config = MiningConfig(num_negatives=3, range_max=20, sampling="random", seed=5)
    a = mine(queries, corpus, positives, config, qkeys, ckeys, search_batch=3)
    b = mine(queries[::-1].copy(), corpus, positives[::-1].copy(), config, qkeys[::-1], ckeys)
    eligible = brute_force(queries, corpus, positives, MiningConfig(num_negatives=3, range_max=20), qkeys, ckeys)
    for i in range(Q):
        assert len(a.negatives[i]) == 3 and set(a.negatives[i]) <= set(eligible[i])
        assert a.negatives[i] == sorted(a.negatives[i], key=eligible[i].index)  # rank order
    # query i is seeded by (seed, i): here i counts the reversed order, so compare the draws by position
    assert a.negatives == mine(queries, corpus, positives, config, qkeys, ckeys).negatives
    assert a.negatives != [eligible[i][:3] for i in range(Q)]  # not simply the top 3
    assert b.negatives != a.negatives[::-1]  # another query index draws another sample
    other = mine(queries, corpus, positives, MiningConfig(num_negatives=3, range_max=20, sampling="random", seed=6),
                 qkeys, ckeys)
    assert other.negatives != a.negatives


def test_ivf_index_searching_every_list_equals_exact_search():
    rng = np.random.default_rng(2)
    corpus = unit(rng.normal(size=(2000, H)))
    positives = rng.choice(2000, size=30, replace=False)
    queries = unit(corpus[positives] + 0.45 * unit(rng.normal(size=(30, H))))
    base = dict(num_negatives=5, range_min=1, range_max=40, relative_margin=0.05)
    exact = mine(queries, corpus, positives, MiningConfig(**base))
    # 2000 passages, exact_limit 100: IVF with nlist = min(4 sqrt(2000), 2000 // 39) = 51 lists
    everywhere = mine(queries, corpus, positives, MiningConfig(**base, exact_limit=100, nprobe=64))
    assert exact.exact and not everywhere.exact
    assert everywhere.negatives == exact.negatives
    few = [mine(queries, corpus, positives, MiningConfig(**base, exact_limit=100, nprobe=8)) for _ in range(2)]
    assert few[0].negatives == few[1].negatives  # seeded k-means: the same index twice
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(few[0].negatives, exact.negatives)])
    assert overlap > 0.5, overlap  # 8 of 51 lists around each query still find most of its neighbours


def test_bad_settings_name_the_option():
    with pytest.raises(ValueError, match="fewer than num_negatives=5"):
        MiningConfig(num_negatives=5, range_min=10, range_max=12)
    with pytest.raises(ValueError, match="sampling must be one of"):
        MiningConfig(sampling="hardest")
    with pytest.raises(ValueError, match=r"relative_margin must be in \[0, 1\)"):
        MiningConfig(relative_margin=1.5)
    assert normalize_text("  Ｔhe\tCAT\n sat ") == "the cat sat"  # NFKC folds the full-width letter


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    config, params = write_tiny_checkpoint(path)
    return path


def test_command_writes_a_retrieval_file_that_loads_as_a_task(tiny_model, tmp_path, capsys):
    lines = (DEMO / "pairs" / "de.tsv").read_text(encoding="utf-8").splitlines()
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("\n".join(lines[:81]) + "\n", encoding="utf-8")  # header + 80 pairs
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join((DEMO / "mlm" / "de.txt").read_text(encoding="utf-8").splitlines()[:100]) + "\n",
                      encoding="utf-8")
    argv = ["--model", str(tiny_model), "--pairs", str(pairs), "--corpus", str(corpus), "--num_negatives", "3",
            "--range_min", "1", "--range_max", "30", "--relative_margin", "0.02", "--max_length", "64"]
    out = tmp_path / "mined.tsv"
    report = mine_negatives.main(argv + ["--out", str(out)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(report))
    assert report["queries"] == 80 and sum(report["queries_by_negatives_found"].values()) == 80
    # an untrained model scores most passages about as high as the positive, so the margin leaves many
    # queries without negatives; those are counted and left out
    assert report["written"] == report["queries_by_negatives_found"][3] > 0

    records = open_records([str(out)], RowParser("retrieval", num_negatives=3), validate=True)
    assert len(records) == report["written"]
    encoder = Encoder.from_checkpoint(tiny_model)
    rows = [records[i] for i in range(len(records))]
    for row in rows:
        texts = [row["query"], row["passage"], *row["negatives"]]
        keys = [normalize_text(t) for t in texts]
        assert len(set(keys)) == 5, texts  # no negative equals its query, its positive or another negative
        q, p, *negs = encoder.encode(texts, max_length=64)
        # cosines recomputed here, one text per call: f32 over the tiny model's 128 dims, <= 1e-5 apart from
        # the command's batched ones, so 1e-4 of slack for the margin
        assert all(q @ n <= (q @ p) * (1 - 0.02) + 1e-4 for n in negs)
    # a second run writes the same bytes (the search is exact and the choice deterministic)
    again = tmp_path / "again.tsv"
    assert mine_negatives.main(argv + ["--out", str(again)])["written"] == report["written"]
    assert again.read_bytes() == out.read_bytes()
    assert mine_negatives.main(argv + ["--out", str(again)]) == 2  # exists, no --overwrite
    assert "give --overwrite" in capsys.readouterr().err
