"""``Encoder.as_mteb()`` against the installed mteb's ``EncoderProtocol``, called the way mteb calls it,
and ``mteb.evaluate`` (offline, on mteb's mock tasks filled with our bundled demo data) agreeing with our
own evaluators."""

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mteb
from datasets import Dataset, DatasetDict
from mteb._create_dataloaders import create_dataloader
from mteb.mocks.mock_tasks import bitext_mining, pair_classification, retrieval as mock_retrieval, sts
from mteb.models.models_protocols import EncoderProtocol

from tokenizer_fixture import build_tokenizer
from bilingual import JinaBert, get_config
from bilingual.encoder_api import Encoder
from bilingual.evaluation import suites
from bilingual.evaluation.bitext import evaluate_bitext
from bilingual.evaluation.pair_classification import evaluate_pair_classification
from bilingual.evaluation.retrieval import evaluate_retrieval
from bilingual.evaluation.sts import evaluate_sts
from bilingual.mteb_adapter import MtebEncoder

N = 60


@pytest.fixture(scope="module")
def encoder():
    config = get_config("tiny", vocab_size=1024)
    params = nn.meta.unbox(JinaBert(config).init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"])
    return Encoder(config, params, build_tokenizer())


def test_satisfies_the_installed_protocol(encoder):
    adapter = encoder.as_mteb(languages=["deu-Latn", "eng-Latn"])
    assert isinstance(adapter, EncoderProtocol)
    for method in ("encode", "similarity", "similarity_pairwise"):
        expected = inspect.signature(getattr(EncoderProtocol, method)).parameters
        got = inspect.signature(getattr(adapter, method)).parameters
        for name, param in expected.items():
            if name == "self" or param.kind is param.VAR_KEYWORD:
                continue
            assert name in got, f"{method} lacks parameter {name}"
            assert got[name].kind == param.kind, f"{method}.{name}: {got[name].kind} != {param.kind}"
            assert (got[name].default is param.empty) == (param.default is param.empty), f"{method}.{name} default"
    init = inspect.signature(MtebEncoder.__init__).parameters
    assert list(init)[1:3] == ["model_name", "revision"] and init["device"].kind is inspect.Parameter.KEYWORD_ONLY
    meta = adapter.mteb_model_meta
    assert meta.embed_dim == encoder.config.hidden_size and meta.similarity_fn_name.value == "cosine"


def test_encode_called_like_mteb(encoder):
    adapter = encoder.as_mteb()
    texts = [f"Satz Nummer {i} über das Wetter in Berlin." * (1 + i % 3) for i in range(11)]
    loader = create_dataloader(Dataset.from_dict({"text": texts}), task_metadata=sts.MockSTSTask.metadata,
                               batch_size=4)
    got = adapter.encode(loader, task_metadata=sts.MockSTSTask.metadata, hf_split="test", hf_subset="default",
                         prompt_type=None, batch_size=4)
    np.testing.assert_allclose(got, encoder.encode(texts), atol=1e-6)
    sims = np.asarray(adapter.similarity(got[:3], got[3:5]))
    np.testing.assert_allclose(sims, got[:3] @ got[3:5].T, atol=1e-5)


def _load(name):
    task = suites.get_suite(name)[0]
    return suites.load_task_data(task, suites.DEMO_DATA_ROOT, limit=N)


class DemoData:
    """Mixin for an mteb mock task: ``load_data`` fills it with the first ``N`` rows of our suite task
    ``demo_task`` (bundled demo data), in the layout ``dataset_from(data)`` builds."""

    demo_task: str

    def load_data(self, num_proc=None, **kwargs):
        self.dataset = self.dataset_from(_load(self.demo_task))
        self.data_loaded = True


def _test_split(columns):
    return DatasetDict({"test": Dataset.from_dict(columns)})


class DemoSTS(DemoData, sts.MockSTSTask):
    demo_task = "STSb-de"
    min_score, max_score = 0, 5

    def dataset_from(self, d):
        return _test_split({"sentence1": d.sentences1, "sentence2": d.sentences2, "score": d.values.tolist()})


class DemoBitext(DemoData, bitext_mining.MockBitextMiningTask):
    demo_task = "Tatoeba-de-en"

    def dataset_from(self, d):
        return _test_split({"sentence1": d.source, "sentence2": d.target})


class DemoPairs(DemoData, pair_classification.MockPairClassificationTask):
    demo_task = "SQAC-QNLI-es"

    def dataset_from(self, d):
        return _test_split({"sentence1": d.sentences1, "sentence2": d.sentences2, "labels": d.values.tolist()})


class DemoRetrieval(DemoData, mock_retrieval.MockRetrievalTask):
    demo_task = "XQuAD-de-de"

    def dataset_from(self, d):
        split = mock_retrieval.base_retrieval_datasplit()
        split["queries"] = Dataset.from_list([{"id": q, "text": t} for q, t in d.queries.items()])
        split["corpus"] = Dataset.from_list([{"id": i, "text": t} for i, t in d.corpus.items()])
        split["relevant_docs"] = d.qrels
        split["top_ranked"] = None
        return {"default": {"test": split, "val": split}}


class Short:
    """Our evaluators' view of the encoder, truncating like the adapter below (128 tokens keeps this fast)."""

    def __init__(self, encoder):
        self.encoder = encoder

    def encode(self, texts):
        return self.encoder.encode(texts, max_length=128)


def test_mteb_evaluate_agrees_with_our_evaluators(encoder):
    adapter = encoder.as_mteb(max_length=128)
    result = mteb.evaluate(adapter, [DemoSTS(), DemoBitext(), DemoPairs(), DemoRetrieval()], cache=None,
                           show_progress_bar=False)
    scores = {r.task_name: r.scores["test"][0] for r in result.task_results}

    ours = evaluate_sts(Short(encoder), _load("STSb-de"))
    assert 100 * scores["MockSTSTask"]["cosine_spearman"] == pytest.approx(ours["spearman"], abs=1e-3)

    ours = evaluate_bitext(Short(encoder), _load("Tatoeba-de-en"))  # mteb scores sentence1 -> sentence2 only
    assert 100 * scores["MockBitextMiningTask"]["f1"] == pytest.approx(ours["f1_de->en"], abs=1e-3)
    assert 100 * scores["MockBitextMiningTask"]["accuracy"] == pytest.approx(ours["accuracy_de->en"], abs=1e-3)
    assert 0 < ours["f1_de->en"] < 100

    # (not PAWS-X: its pairs share all words, so an untrained model's cosines tie to ~1e-8 and the
    # ranking depends on float rounding)
    ours = evaluate_pair_classification(Short(encoder), _load("SQAC-QNLI-es"))
    assert 100 * scores["MockPairClassificationTask"]["cosine_ap"] == pytest.approx(ours["ap"], abs=1e-3)

    ours = evaluate_retrieval(Short(encoder), _load("XQuAD-de-de"))
    got = scores["MockRetrievalTask"]
    for metric in ("ndcg_at_10", "mrr_at_10", "recall_at_100"):
        assert 100 * got[metric] == pytest.approx(ours[metric], abs=0.01), metric
    assert 0 < ours["ndcg_at_10"] < 100
