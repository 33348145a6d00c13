"""Flax parameters <-> the exported state dict (names, shapes, the ``bert.`` prefix and the tied decoder).

Builds on ``bilingual.hf_layout`` (the mechanical Flax-path <-> reference-name mapping) and adds what an
export needs on top: the target structure of a config (from the Flax model itself, via ``jax.eval_shape``,
so every parameter the model has is accounted for), the masked-LM form (``bert.``-prefixed encoder plus
``cls.predictions.*`` and the tied ``cls.predictions.decoder.weight``), and checks that report every
missing, unexpected and mis-shaped name at once.
"""

from __future__ import annotations

from typing import Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bilingual import hf_layout, modeling
from bilingual.config import EncoderConfig

BERT_PREFIX = "bert."
DECODER_WEIGHT = "cls.predictions.decoder.weight"
DECODER_BIAS = "cls.predictions.decoder.bias"
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


class StateDictMismatch(ValueError):
    """Names or shapes that do not match the model; the message lists all of them."""

    def __init__(self, source: str, missing=(), unexpected=(), shapes=()):
        self.missing, self.unexpected, self.shapes = sorted(missing), sorted(unexpected), sorted(shapes)
        lines = [f"{source}: the tensors do not match the model"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        if self.shapes:
            lines.append(f"  shape mismatches ({len(self.shapes)}): " + ", ".join(
                f"{name} has {tuple(got)}, expected {tuple(want)}" for name, got, want in self.shapes))
        super().__init__("\n".join(lines))


def reference_shapes(config: EncoderConfig, *, masked_lm: bool) -> dict[str, tuple[int, ...]]:
    """``{name: PyTorch shape}`` of every parameter of the Flax model for ``config`` (no tied decoder).

    Names are ``bert.``-prefixed plus ``cls.predictions.*`` when ``masked_lm``. Nothing is computed:
    the Flax ``init`` is traced abstractly.
    """
    ids = jnp.zeros((1, 2), jnp.int32)
    model = modeling.JinaBertForMaskedLM(config) if masked_lm else modeling.JinaBert(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, ids)["params"])
    shapes = flax.linen.meta.unbox(shapes)
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        shape = tuple(leaf.shape)
        out[hf_layout.flax_path_to_name(path)] = shape[::-1] if path[-1] == "kernel" else shape
    return out


def check_names_and_shapes(tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple], source: str) -> None:
    missing = set(expected) - set(tensors)
    unexpected = set(tensors) - set(expected)
    shapes = [(name, tensors[name].shape, expected[name]) for name in set(expected) & set(tensors)
              if tuple(tensors[name].shape) != tuple(expected[name])]
    if missing or unexpected or shapes:
        raise StateDictMismatch(source, missing, unexpected, shapes)


def to_export_state_dict(params, mlm_params=None) -> dict[str, np.ndarray]:
    """Encoder ``params`` (and the masked-LM head ``mlm_params``, the ``cls`` subtree) -> reference names.

    With a head, encoder names get the ``bert.`` prefix and the tied ``cls.predictions.decoder.weight``
    (a copy of the word embeddings) is added, as the masked-LM class saves it.
    """
    if mlm_params is None:
        return hf_layout.to_state_dict(params)
    tensors = hf_layout.to_state_dict({"bert": params, "cls": mlm_params})
    tensors[DECODER_WEIGHT] = tensors[BERT_PREFIX + WORD_EMBEDDINGS]
    return tensors


def split_params(tree) -> tuple[dict, Optional[dict]]:
    """``(encoder params, cls params or None)`` from a ``from_state_dict`` tree of either form."""
    tree = dict(tree)
    if "bert" in tree:
        return tree["bert"], tree.get("cls")
    return tree, None
