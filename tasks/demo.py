"""Tasks and mixtures over the bundled demo training data (``data/demo/train``, see its SOURCE.md).

    from tasks import demo
    demo.register_demo_tasks("/tmp/tok")          # a tokenizer directory (launch.train_tokenizer)

Tasks (type in the name; ``<l1>_<l2>`` = bilingual):

| task | type | data |
|---|---|---|
| ``mlm_de``, ``mlm_en``, ``mlm_es`` | mlm | ``mlm/{de,en,es}.txt`` |
| ``pairs_de_en``, ``pairs_es_en`` | pairs | Tatoeba translation pairs |
| ``pairs_de`` | pairs | STSb-de train pairs scored >= 4 |
| ``retrieval_de``, ``retrieval_es`` | retrieval (3 hard negatives) | ICT on literature; SQuAD-es + SQAC |
| ``sts_de``, ``sts_en``, ``sts_es`` | sts | STSb train subsets |

Mixtures (one task per batch): ``mlm_de_en`` and ``mlm_es_en`` (English : target 1:1, TRAINING.md stage 1),
``pairs_mix_de`` (``pairs_de_en`` + ``pairs_de``) and ``pairs_mix_es`` (``pairs_es_en``) by size (stage 2),
``multitask_de`` (``retrieval_de``, ``sts_de``, ``sts_en``) and ``multitask_es`` (``retrieval_es``,
``sts_es``, ``sts_en``) by size (stage 3).
"""

from __future__ import annotations

import pathlib

import gin

from tasks import mixtures, registry

DEMO_TRAIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "data" / "demo" / "train"
NUM_NEGATIVES = 3

TASKS = ("mlm_de", "mlm_en", "mlm_es", "pairs_de_en", "pairs_es_en", "pairs_de", "retrieval_de", "retrieval_es",
         "sts_de", "sts_en", "sts_es")
MIXTURES = ("mlm_de_en", "mlm_es_en", "pairs_mix_de", "pairs_mix_es", "multitask_de", "multitask_es")


@gin.configurable
def register_demo_tasks(tokenizer=gin.REQUIRED, data_dir: str | pathlib.Path = DEMO_TRAIN_DIR) -> list[str]:
    """Registers (or re-registers) every demo task and mixture with ``tokenizer``; returns their names."""
    d = pathlib.Path(data_dir)
    for lang in ("de", "en", "es"):
        registry.register_text_task(f"mlm_{lang}", str(d / f"mlm/{lang}.txt"), tokenizer)
        registry.register_sts_task(f"sts_{lang}", str(d / f"sts/{lang}.tsv"), tokenizer)
    for pair in ("de-en", "es-en"):
        registry.register_pairs_task(f"pairs_{pair.replace('-', '_')}", str(d / f"pairs/{pair}.tsv"), tokenizer)
    registry.register_pairs_task("pairs_de", str(d / "pairs/de.tsv"), tokenizer)
    for lang in ("de", "es"):
        registry.register_retrieval_task(f"retrieval_{lang}", str(d / f"retrieval/{lang}.tsv"), tokenizer,
                                         num_negatives=NUM_NEGATIVES)
    mixtures.register_mixture("mlm_de_en", {"mlm_en": 1.0, "mlm_de": 1.0})
    mixtures.register_mixture("mlm_es_en", {"mlm_en": 1.0, "mlm_es": 1.0})
    mixtures.register_mixture("pairs_mix_de", ["pairs_de_en", "pairs_de"], rates="size")
    mixtures.register_mixture("pairs_mix_es", ["pairs_es_en"], rates="size")
    mixtures.register_mixture("multitask_de", ["retrieval_de", "sts_de", "sts_en"], rates="size")
    mixtures.register_mixture("multitask_es", ["retrieval_es", "sts_es", "sts_en"], rates="size")
    return list(TASKS + MIXTURES)
