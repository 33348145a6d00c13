"""The ``Encoder`` behind the ``mteb`` (2.x) ``EncoderProtocol``, so any MTEB task runs on a checkpoint.

    import mteb
    from bilingual import Encoder
    model = Encoder.from_checkpoint("runs/de/checkpoints").as_mteb(languages=["deu-Latn", "eng-Latn"])
    results = mteb.evaluate(model, mteb.get_tasks(tasks=["GermanSTSBenchmark"]))   # downloads the task data

mteb hands ``encode`` a ``DataLoader`` of batches ``{"text": [...], ...}`` plus task metadata; the
adapter collects the texts (in order) and calls ``Encoder.encode``. Similarity is cosine (the
embeddings are L2-normalised). The model is symmetric: no query/document prompts are added.

mteb is a test extra, so it is imported on first use: ``MtebEncoder`` (a subclass of mteb's
``AbsEncoder``) is built when the name is first looked up, and importing this module needs no mteb.
Dependencies point one way: this module imports ``bilingual.encoder_api``; ``Encoder.as_mteb`` reaches
back here only inside the method.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import numpy as np

from bilingual.encoder_api import Encoder


def __getattr__(name: str):
    if name == "MtebEncoder":
        return mteb_encoder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def mteb_encoder_class() -> type:
    """The ``MtebEncoder`` class (imports mteb; built once, so instances pickle by reference)."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    class MtebEncoder(AbsEncoder):
        """``mteb`` encoder wrapping a :class:`bilingual.encoder_api.Encoder`.

        Args:
          model_name: a checkpoint path (loaded with ``Encoder.from_checkpoint`` unless ``encoder`` is given)
            or, with ``encoder``, just the name recorded in mteb's results.
          revision: recorded in mteb's results (e.g. the training step or a git commit).
          device: accepted for the protocol; placement follows JAX's default devices.
          encoder: an already constructed ``Encoder``.
          tokenizer: with ``model_name`` only, the tokenizer ``Encoder.from_checkpoint`` loads.
          languages: ISO 639-3 + script codes, e.g. ``["deu-Latn", "eng-Latn"]``.
          max_length: tokens per text passed to ``Encoder.encode``.
        """

        def __init__(self, model_name: Optional[str] = None, revision: Optional[str] = None, *,
                     device: Optional[str] = None, encoder: Optional[Encoder] = None, tokenizer=None,
                     languages: Optional[Sequence[str]] = None, max_length: Optional[int] = None,
                     **kwargs: Any):
            if encoder is None:
                if model_name is None:
                    raise ValueError("MtebEncoder needs an encoder or a checkpoint path as model_name")
                encoder = Encoder.from_checkpoint(model_name, tokenizer=tokenizer)
            self.model = encoder
            self.max_length = max_length
            name = model_name or encoder.name
            if "/" not in name:  # mteb expects "organisation/model" names
                name = f"bilingual/{name}"
            n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(encoder.params))
            self.mteb_model_meta = ModelMeta(
                loader=None, name=name, revision=revision, release_date=None,
                languages=list(languages) if languages else None, n_parameters=n_params, memory_usage_mb=None,
                max_tokens=min(encoder.config.max_length, 8192), embed_dim=encoder.config.hidden_size,
                license=None, open_weights=None, public_training_code=None, public_training_data=None,
                framework=["JAX"], similarity_fn_name=ScoringFunction.COSINE, use_instructions=False,
                training_datasets=None)

        def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None,
                   **kwargs: Any) -> np.ndarray:
            """``inputs``: an iterable of batches ``{"text": list[str], ...}`` -> float32 ``[n, hidden]``."""
            texts: list[str] = []
            for batch in inputs:
                if "text" not in batch:
                    raise ValueError(f"{task_metadata.name}: the bilingual encoder embeds text only; batch keys "
                                     f"are {sorted(batch)}")
                texts.extend(batch["text"])
            return self.model.encode(texts, batch_size=int(kwargs.get("batch_size") or 32),
                                     max_length=self.max_length, show_progress=kwargs.get("show_progress_bar"))

    MtebEncoder.__module__, MtebEncoder.__qualname__ = __name__, "MtebEncoder"
    return MtebEncoder
