"""Each evaluator against a hand-computed case and a brute-force numpy reference on random data."""

import math

import numpy as np
import pytest

from bilingual.evaluation import bitext, classification, clustering, pair_classification, retrieval, sts
from bilingual.evaluation.data_files import Bitext, Labelled, PairScores, RetrievalData
from eval_fakes import TableEncoder


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------- STS
def test_sts_hand_computed():
    # cosines of the pairs: 1, 0, -1, 0.6 ; gold 5, 2, 0, 4 -> ranks agree except the tie-free order
    emb1 = np.array([[1, 0], [1, 0], [1, 0], [1, 0]], float)
    emb2 = np.array([[2, 0], [0, 3], [-1, 0], [0.6, 0.8]], float)
    gold = np.array([5.0, 1.0, 0.0, 4.0])
    # cos = [1, 0, -1, 0.6] -> ranks [4, 2, 1, 3]; gold ranks [4, 2, 1, 3] -> Spearman 1
    assert sts.sts_scores(emb1, emb2, gold)["spearman"] == pytest.approx(100.0)
    gold = np.array([5.0, 4.0, 0.0, 1.0])  # gold ranks [4, 3, 1, 2]; d = [0, -1, 0, 1] -> 1 - 6*2/(4*15) = 0.8
    assert sts.sts_scores(emb1, emb2, gold)["spearman"] == pytest.approx(80.0)


def test_sts_matches_numpy_on_random_data():
    rng = np.random.default_rng(0)
    emb1, emb2 = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    gold = rng.uniform(0, 5, size=50)
    cos = np.array([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(emb1, emb2)])
    rank = lambda x: np.argsort(np.argsort(x)).astype(float)  # no ties in continuous data
    expected = 100 * np.corrcoef(rank(cos), rank(gold))[0, 1]
    got = sts.sts_scores(emb1, emb2, gold)
    assert got["spearman"] == pytest.approx(expected, abs=1e-9)
    assert got["pearson"] == pytest.approx(100 * np.corrcoef(cos, gold)[0, 1], abs=1e-9)


def test_sts_evaluator_encodes_each_text_once():
    enc = TableEncoder({"a": [1, 0], "b": [1, 0.1], "c": [0, 1]})
    data = PairScores(["a", "a", "c"], ["b", "c", "b"], np.array([5.0, 0.0, 2.0]))
    out = sts.evaluate_sts(enc, data)
    assert out["spearman"] == pytest.approx(100.0)
    assert sorted(enc.calls[0]) == ["a", "b", "c"]


# ---------------------------------------------------------------- pair classification
def test_average_precision_hand_computed():
    emb1 = np.array([[1, 0]] * 4, float)
    # cosines 1.0, 0.8, 0.6, 0.0 with labels 1, 0, 1, 0 -> AP = (1/1 + 2/3) / 2
    emb2 = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]], float)
    got = pair_classification.pair_classification_scores(emb1, emb2, np.array([1, 0, 1, 0]))
    assert got["ap"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_average_precision_matches_numpy_on_random_data():
    rng = np.random.default_rng(1)
    emb1, emb2 = rng.normal(size=(80, 6)), rng.normal(size=(80, 6))
    labels = rng.integers(0, 2, size=80)
    cos = np.sum(_unit(emb1) * _unit(emb2), axis=1)
    order = np.argsort(-cos)
    hits = labels[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    expected = 100 * precision_at[hits == 1].mean()
    got = pair_classification.pair_classification_scores(emb1, emb2, labels)["ap"]
    assert got == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------- bitext mining
def test_bitext_hand_computed():
    # source 0 and 1 both find target 0; source 2 finds target 2.
    source = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1]], float)
    target = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    assert list(bitext.nearest_neighbours(source, target)) == [0, 0, 2]
    got = bitext.mining_scores(np.array([0, 0, 2]))
    assert got["accuracy"] == pytest.approx(100 * 2 / 3)
    # weighted F1 (support 1 per gold index): class 0: P=1/2, R=1 -> 2/3; class 1: 0; class 2: 1
    assert got["f1"] == pytest.approx(100 * (2 / 3 + 0 + 1) / 3)
    # target -> source: target 0 -> source 0; target 1 (0,1,0) -> source 1 (0.9, 0.1): cos .11 > 0; target 2 -> 2
    both = bitext.bitext_scores(source, target, "de", "en")
    assert both["accuracy_de->en"] == pytest.approx(100 * 2 / 3)
    assert both["accuracy_en->de"] == pytest.approx(100.0)
    assert both["accuracy"] == pytest.approx((100 * 2 / 3 + 100) / 2)


def _brute_force_mining(source, target):
    n = len(source)
    sims = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in target] for a in source])
    pred = sims.argmax(axis=1)
    counts = np.bincount(pred, minlength=n)
    correct = pred == np.arange(n)
    # Support is 1 for every gold index i; P_i = 1/count_i when correct, R_i = 1 -> F1_i = 2 / (1 + count_i).
    f1 = np.where(correct, 2.0 / (1.0 + counts[np.arange(n)]), 0.0).mean()
    return 100 * correct.mean(), 100 * f1


def test_bitext_matches_numpy_on_random_data():
    rng = np.random.default_rng(2)
    source = rng.normal(size=(40, 5))
    target = source + rng.normal(scale=0.9, size=(40, 5))  # noisy translations: some mismatches
    got = bitext.bitext_scores(source, target, "a", "b")
    for name, (q, c) in {"a->b": (source, target), "b->a": (target, source)}.items():
        acc, f1 = _brute_force_mining(q, c)
        assert 0 < acc < 100
        assert got[f"accuracy_{name}"] == pytest.approx(acc)
        assert got[f"f1_{name}"] == pytest.approx(f1)


# ---------------------------------------------------------------- retrieval
def _brute_force_ranking(qrels, query_emb, doc_emb, query_ids, doc_ids):
    sims = _unit(query_emb) @ _unit(doc_emb).T
    ndcg, mrr, recall = [], [], []
    for qi, q in enumerate(query_ids):
        ranked = [doc_ids[j] for j in np.argsort(-sims[qi])]
        rel = qrels[q]
        gains = [rel.get(d, 0) for d in ranked]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:10]))
        ideal = sorted(rel.values(), reverse=True)
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:10]))
        ndcg.append(dcg / idcg)
        first = next((i for i, g in enumerate(gains[:10]) if g > 0), None)
        mrr.append(0.0 if first is None else 1.0 / (first + 1))
        recall.append(sum(1 for d in ranked[:100] if d in rel) / len(rel))
    return {"ndcg_at_10": 100 * np.mean(ndcg), "mrr_at_10": 100 * np.mean(mrr), "recall_at_100": 100 * np.mean(recall)}


def test_retrieval_hand_computed():
    # One query; docs ranked d0 > d1 > d2 by cosine; only d1 relevant.
    query = np.array([[1.0, 0.0]])
    docs = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    qrels = {"q": {"d1": 1}}
    idx, scores = retrieval.top_k(query, docs, 100)
    run = retrieval.make_run(["q"], ["d0", "d1", "d2"], idx, scores)
    got = retrieval.ranking_scores(qrels, run)
    assert got["ndcg_at_10"] == pytest.approx(100 / math.log2(3))
    assert got["mrr_at_10"] == pytest.approx(50.0)
    assert got["recall_at_100"] == pytest.approx(100.0)


def test_retrieval_mrr_and_recall_cutoffs():
    # 120 documents; the relevant one is ranked 11th: MRR@10 = 0, nDCG@10 = 0, Recall@100 = 1.
    docs = np.stack([np.cos(np.linspace(0, 1.5, 120)), np.sin(np.linspace(0, 1.5, 120))], axis=1)
    query = np.array([[1.0, 0.0]])
    doc_ids = [f"d{i}" for i in range(120)]
    idx, scores = retrieval.top_k(query, docs, 100)
    got = retrieval.ranking_scores({"q": {"d10": 1}}, retrieval.make_run(["q"], doc_ids, idx, scores))
    assert got == pytest.approx({"ndcg_at_10": 0.0, "mrr_at_10": 0.0, "recall_at_100": 100.0})
    got = retrieval.ranking_scores({"q": {"d105": 1}}, retrieval.make_run(["q"], doc_ids, idx, scores))
    assert got["recall_at_100"] == 0.0


def test_retrieval_matches_numpy_on_random_data():
    rng = np.random.default_rng(3)
    n_q, n_d = 30, 150
    doc_emb = rng.normal(size=(n_d, 8))
    query_ids, doc_ids = [f"q{i}" for i in range(n_q)], [f"d{i}" for i in range(n_d)]
    qrels = {}
    for q in query_ids:
        relevant = rng.choice(n_d, size=rng.integers(1, 4), replace=False)
        qrels[q] = {doc_ids[j]: int(rng.integers(1, 3)) for j in relevant}  # graded relevance 1-2
    # queries near one of their relevant documents, with noise so that ranks vary
    query_emb = np.stack([doc_emb[doc_ids.index(next(iter(qrels[q])))] for q in query_ids])
    query_emb = query_emb + rng.normal(scale=1.2, size=query_emb.shape)
    idx, scores = retrieval.top_k(query_emb, doc_emb, 100)
    got = retrieval.ranking_scores(qrels, retrieval.make_run(query_ids, doc_ids, idx, scores))
    expected = _brute_force_ranking(qrels, query_emb, doc_emb, query_ids, doc_ids)
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0 < expected["ndcg_at_10"] < 100 and 0 < expected["recall_at_100"] < 100


def test_retrieval_evaluator_cross_lingual_ids():
    # Queries and corpus from different "languages" share ids only through qrels.
    enc = TableEncoder({"wo?": [1, 0], "wer?": [0, 1], "the place": [1, 0.1], "the person": [0.1, 1]})
    data = RetrievalData({"p1": "the place", "p2": "the person"}, {"a": "wo?", "b": "wer?"},
                         {"a": {"p1": 1}, "b": {"p2": 1}})
    assert retrieval.evaluate_retrieval(enc, data) == pytest.approx(
        {"ndcg_at_10": 100.0, "mrr_at_10": 100.0, "recall_at_100": 100.0})


# ---------------------------------------------------------------- clustering
def _brute_force_v_measure(labels, clusters):
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    n = len(labels)
    lab, cl = np.unique(labels), np.unique(clusters)
    table = np.array([[np.sum((labels == a) & (clusters == b)) for b in cl] for a in lab], float)
    def entropy(counts):
        p = counts[counts > 0] / counts.sum()
        return -np.sum(p * np.log(p))
    h_c, h_k = entropy(table.sum(1)), entropy(table.sum(0))
    h_c_given_k = -sum(table[i, j] / n * np.log(table[i, j] / table[:, j].sum())
                       for i in range(len(lab)) for j in range(len(cl)) if table[i, j] > 0)
    h_k_given_c = -sum(table[i, j] / n * np.log(table[i, j] / table[i, :].sum())
                       for i in range(len(lab)) for j in range(len(cl)) if table[i, j] > 0)
    homogeneity = 1.0 if h_c == 0 else 1 - h_c_given_k / h_c
    completeness = 1.0 if h_k == 0 else 1 - h_k_given_c / h_k
    return 100 * 2 * homogeneity * completeness / (homogeneity + completeness)


def test_clustering_hand_computed():
    # Labels a and b sit at the same point, c is split into two far-apart blobs; k = 3 finds
    # {a, b}, {c-left}, {c-right} whatever the seed.
    points = {"a": [0, 0], "b": [0, 0], "c1": [100, 0], "c2": [0, 100]}
    layout = ["a", "a", "b", "b", "c1", "c1", "c2", "c2"]
    labels = ["a", "a", "b", "b", "c", "c", "c", "c"]
    emb = np.array([points[p] for p in layout], float)
    # H(C) = entropy(1/4, 1/4, 1/2) = 1.5 ln2; H(C|K) = 1/2 * ln 2 -> homogeneity = 2/3.
    # H(K) = 1.5 ln2 too; H(K|C) = 1/2 * ln 2 (class c splits in half) -> completeness = 2/3.
    got = clustering.clustering_scores(emb, labels, seeds=(0, 1, 2))
    assert got["v_measure"] == pytest.approx(100 * 2 / 3)
    assert got["v_measure_std"] == pytest.approx(0.0)


def test_v_measure_of_kmeans_matches_numpy_on_random_data():
    rng = np.random.default_rng(4)
    labels = list(rng.choice(["x", "y", "z", "w"], size=60))
    centers = {"x": [0, 0], "y": [2, 0], "z": [0, 2], "w": [2, 2]}
    emb = np.array([centers[l] for l in labels]) + rng.normal(scale=0.9, size=(60, 2))
    seeds = (0, 1, 2)
    expected = np.mean([_brute_force_v_measure(labels, clustering.kmeans_assignments(emb, 4, s)) for s in seeds])
    got = clustering.clustering_scores(emb, labels, seeds)["v_measure"]
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0 < got < 100


def test_kmeans_assignments_are_a_local_optimum():
    # Lloyd's fixed point, checked independently: every point sits with its nearest centroid.
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(50, 3))
    assign = clustering.kmeans_assignments(emb, 4, seed=0)
    centroids = np.stack([emb[assign == c].mean(0) for c in range(4)])
    nearest = np.argmin(((emb[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest, assign)


# ---------------------------------------------------------------- classification
def test_classification_separable_and_chance():
    rng = np.random.default_rng(6)
    labels = ["pos"] * 20 + ["neg"] * 20
    emb = np.concatenate([rng.normal(5, 0.5, size=(20, 4)), rng.normal(-5, 0.5, size=(20, 4))])
    assert classification.classification_scores(emb, labels, folds=5)["accuracy"] == 100.0
    got = classification.classification_scores(emb[::2], labels[::2], emb[1::2], labels[1::2])
    assert got == {"accuracy": 100.0, "f1_macro": 100.0}


def test_cross_validation_is_stratified_and_out_of_fold():
    # Each row's only non-zero feature is its own: a model that has not seen row i has weight 0 on feature
    # i (no training signal, L2 keeps it at 0), so every held-out row of a fold looks the same to it and
    # gets the same label. A stratified 5-fold split of 10 + 10 + 10 rows holds 2 rows of each label per
    # fold, so exactly 2 of 6 predictions per fold are right: accuracy 100/3 exactly. In-sample predictions
    # would be all right (checked below), and unstratified folds would not give exactly 10 of 30.
    labels = np.array(["a", "b", "c"] * 10)
    emb = np.eye(30)
    predicted = classification.cross_validated_predictions(emb, labels, folds=5, seed=0)
    assert np.sum(predicted == labels) == 10
    got = classification.classification_scores(emb, labels, folds=5, seed=0)
    assert got["accuracy"] == pytest.approx(100 / 3, abs=1e-12)  # error model: one float64 division
    assert classification.classification_scores(emb, labels, emb, labels)["accuracy"] == 100.0


def _numpy_logistic_regression(x, y, num_classes, C=1.0):
    """Multinomial logistic regression, ``min 0.5 * |W|^2 + C * sum_i cross_entropy(W x_i + b, y_i)``
    (L2 on the weights, intercept unpenalised: scikit-learn's ``LogisticRegression`` defaults, which MTEB's
    classification probe uses), solved to a 1e-9 gradient by BFGS on this objective written out here."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax, softmax

    n, d = x.shape
    onehot = np.eye(num_classes)[y]

    def objective(theta):
        w, b = theta[:num_classes * d].reshape(num_classes, d), theta[num_classes * d:]
        z = x @ w.T + b
        loss = 0.5 * np.sum(w ** 2) - C * np.sum(onehot * log_softmax(z, axis=1))
        residual = C * (softmax(z, axis=1) - onehot)
        return loss, np.concatenate([(w + residual.T @ x).ravel(), residual.sum(0)])

    result = minimize(objective, np.zeros(num_classes * (d + 1)), jac=True, method="BFGS",
                      options={"gtol": 1e-9, "maxiter": 10_000})
    assert np.max(np.abs(objective(result.x)[1])) < 1e-6
    return result.x[:num_classes * d].reshape(num_classes, d), result.x[num_classes * d:]


def test_classification_matches_a_numpy_probe():
    """Train/test mode against an independent probe: features standardised with the training rows' mean
    and (population) standard deviation (this library's protocol, module docstring), then the L2 logistic
    regression above; accuracy and macro-F1 from the predictions, computed here."""
    rng = np.random.default_rng(9)
    names = np.array(["x", "y", "z"])
    centres = rng.normal(0, 1.0, (3, 4))
    scales = np.array([1.0, 30.0, 0.01, 5.0])  # unequal feature scales: standardisation matters

    def sample(n):
        y = rng.integers(0, 3, n)
        return (centres[y] + rng.normal(0, 1.0, (n, 4))) * scales + 7.0, y

    (train, y_train), (test, y_test) = sample(60), sample(300)
    mean, std = train.mean(0), train.std(0)
    w, b = _numpy_logistic_regression((train - mean) / std, y_train, 3)
    z = ((test - mean) / std) @ w.T + b
    predicted = z.argmax(1)
    # Error model: scikit-learn's lbfgs stops at a 1e-4 gradient; the objective's Hessian is >= I in W, so its
    # weights are within ~1e-4 * sqrt(15) of these and its decision values within ~1e-3 on standardised
    # |x| <~ 3: a prediction can only differ where the top two decision values are that close. Such test
    # rows are left out (a handful), so the predictions are determined.
    top2 = np.sort(z, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-2
    assert clear.sum() > 280
    test, y_test, predicted = test[clear], y_test[clear], predicted[clear]
    accuracy = 100.0 * np.mean(predicted == y_test)
    f1 = []
    for k in range(3):
        tp, fp, fn = np.sum((predicted == k) & (y_test == k)), np.sum((predicted == k) & (y_test != k)), \
            np.sum((predicted != k) & (y_test == k))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    assert 40 < accuracy < 95  # not a trivial case: errors exist for the settings to matter
    got = classification.classification_scores(train, names[y_train], test, names[y_test])
    # Error model: identical predictions (above), so the scores agree up to float64 rounding of a mean.
    assert got["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert got["f1_macro"] == pytest.approx(100.0 * np.mean(f1), abs=1e-9)


def test_classification_is_invariant_to_offset_and_scale():
    # Embeddings = shared direction + small class signal (what normalised embeddings of a weak model look like).
    rng = np.random.default_rng(8)
    labels = np.array(["a", "b"] * 30)
    signal = np.where(labels[:, None] == "a", 1.0, -1.0) * np.array([[1, 0, 0, 0]]) + rng.normal(0, 0.3, (60, 4))
    squashed = 100.0 + 1e-3 * signal
    assert (classification.classification_scores(squashed, labels, folds=5)
            == classification.classification_scores(signal, labels, folds=5))


def test_classification_needs_enough_rows_per_label():
    with pytest.raises(ValueError, match="rarest label has 2"):
        classification.classification_scores(np.zeros((12, 2)), ["a"] * 10 + ["b"] * 2, folds=5)


def test_evaluators_through_a_table_encoder():
    enc = TableEncoder({"x1": [1, 0], "x2": [0.9, 0.1], "y1": [0, 1], "y2": [0.1, 0.9], "x3": [1, 0.05],
                        "y3": [0.05, 1]})
    data = Labelled(["x", "x", "x", "y", "y", "y"], ["x1", "x2", "x3", "y1", "y2", "y3"])
    assert clustering.evaluate_clustering(enc, data)["v_measure"] == pytest.approx(100.0)
    bt = Bitext(["x1", "y1"], ["x2", "y2"], "de", "en")
    assert bitext.evaluate_bitext(enc, bt)["f1"] == 100.0


def test_chunked_search_equals_one_block():
    # Chunking over queries (forced small by the budget) must not change the results.
    from bilingual.evaluation.common import query_chunks
    rng = np.random.default_rng(9)
    queries, docs = rng.normal(size=(37, 6)), rng.normal(size=(300, 6))
    assert [s.start for s in query_chunks(37, 300, budget=3000)] == list(range(0, 37, 10))
    sims = _unit(queries) @ _unit(docs).T
    idx, scores = retrieval.top_k(queries, docs, 100, budget=3000)
    np.testing.assert_array_equal(idx, np.argsort(-sims, axis=1)[:, :100])
    np.testing.assert_allclose(scores, -np.sort(-sims, axis=1)[:, :100])
    np.testing.assert_array_equal(bitext.nearest_neighbours(queries, docs, budget=3000), sims.argmax(1))
