"""Flax parameter tree <-> reference (``jina-bert-implementation``) state-dict names and shapes.

The Flax tree is named after the reference layout (``bilingual.modeling``), so the mapping is mechanical:
path components joined with ``.``, ``layer_N`` -> ``layer.N``, ``kernel`` -> ``weight`` transposed to
PyTorch's ``[out, in]``, ``scale`` / ``embedding`` -> ``weight``. The masked-LM model's ``bert/...`` and
``cls/predictions/...`` paths map the same way. Arrays are returned as numpy (host memory).
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np
from flax import traverse_util

_LAYER = re.compile(r"^layer_(\d+)$")
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def flax_path_to_name(path: tuple[str, ...]) -> str:
    """``("encoder", "layer_3", "mlp", "wo", "kernel")`` -> ``"encoder.layer.3.mlp.wo.weight"``."""
    parts = []
    for component in path[:-1]:
        match = _LAYER.match(component)
        parts.extend(["layer", match.group(1)] if match else [component])
    leaf = path[-1]
    if leaf not in _LEAF_NAMES:
        raise ValueError(f"unexpected parameter leaf {'/'.join(path)}")
    parts.append(_LEAF_NAMES[leaf])
    return ".".join(parts)


def name_to_flax_path(name: str) -> tuple[str, ...]:
    """Inverse of ``flax_path_to_name`` for names of this layout (the leaf kind is inferred)."""
    parts = name.split(".")
    path: list[str] = []
    i = 0
    while i < len(parts) - 1:
        if parts[i] == "layer" and i + 1 < len(parts) - 1 and parts[i + 1].isdigit():
            path.append(f"layer_{parts[i + 1]}")
            i += 2
        else:
            path.append(parts[i])
            i += 1
    leaf, owner = parts[-1], path[-1] if path else ""
    if leaf == "bias":
        path.append("bias")
    elif owner.endswith("embeddings"):
        path.append("embedding")
    elif owner in ("LayerNorm", "layernorm") or owner.startswith("layer_norm"):
        path.append("scale")
    else:
        path.append("kernel")
    return tuple(path)


def to_state_dict(params: Mapping) -> dict[str, np.ndarray]:
    """Flax params (nested dict) -> ``{reference name: numpy array in PyTorch shape}``."""
    out = {}
    for path, value in traverse_util.flatten_dict(params).items():
        array = np.asarray(value)
        if path[-1] == "kernel":
            array = array.T
        out[flax_path_to_name(path)] = array
    return out


def from_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
    """``{reference name: array}`` -> nested Flax params (kernels transposed back to ``[in, out]``)."""
    flat = {}
    for name, value in state_dict.items():
        path = name_to_flax_path(name)
        array = np.asarray(value)
        flat[path] = array.T if path[-1] == "kernel" else array
    return traverse_util.unflatten_dict(flat)
