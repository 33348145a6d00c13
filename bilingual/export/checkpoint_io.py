"""Restore the full stored model tree of a checkpoint (the masked-LM head included).

``bilingual.checkpoints.load_encoder`` returns only the encoder; exporting a masked-LM model with its head
needs the ``cls`` subtree too. Same layout, same errors (``CheckpointError`` naming the path).
"""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp

from bilingual.checkpoints import CheckpointError, encoder_config_from_dict, load_meta, resolve_step
from bilingual.config import EncoderConfig


def load_model_tree(path) -> tuple[EncoderConfig, dict, dict]:
    """``(config, meta, model tree as numpy)`` of a checkpoint root (latest step) or step directory.

    For a ``masked_lm`` checkpoint the tree is ``{"bert": ..., "cls": ...}``; for ``encoder`` the encoder params.
    """
    root, step = resolve_step(path)
    meta = load_meta(root / str(step))
    config = encoder_config_from_dict(meta["encoder_config"])
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(root, options=options, item_names=("model", "meta")) as manager:
        try:
            metadata = manager.item_metadata(step)["model"]
            target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), metadata)
            restored = manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(target)))
        except Exception as err:  # orbax raises several types for damaged directories
            raise CheckpointError(f"cannot restore parameters of checkpoint {root / str(step)}: {err}") from err
    return config, meta, restored.model
