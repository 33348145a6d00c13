"""Synthetic batches in the layout of ``bilingual.task_types`` (the producer's), for step and trainer tests."""

import math

import numpy as np

from bilingual import task_types, text_identity


def _seq(rng, batch, length, vocab, min_len=2):
    lengths = rng.randint(min_len, length + 1, batch)
    ids = rng.randint(5, vocab, (batch, length)).astype(np.int32)
    ids[:, 0] = 0
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask, ids, 1).astype(np.int32)
    ids[np.arange(batch), lengths - 1] = 2
    return ids, mask


def synthetic_batch(task_type, batch=8, length=16, vocab=512, negatives=2, seed=0):
    """Random arrays with the keys, shapes and dtypes of the ``task_types`` entry (every side ``length``
    tokens, ``negatives`` hard negatives per row), checked against it."""
    spec = task_types.get(task_type)
    lengths = dict.fromkeys(spec.sides, length)
    shapes = spec.batch_shapes(batch, lengths, negatives)
    rng = np.random.RandomState(seed)
    if task_type == "mlm":
        ids, mask = _seq(rng, batch, length, vocab, min_len=length // 2)
        weights = ((rng.rand(batch, length) < 0.3) & (mask == 1)).astype(np.float32)
        weights[:, 0] = 0
        segments = mask.copy()
        segments[:, length // 2:] *= 2
        out = {"input_ids": np.where(weights > 0, 4, ids), "attention_mask": mask, "segment_ids": segments,
               "targets": ids, "loss_weights": weights}
    else:
        out = {}
        for ids_key, mask_key in spec.views.values():
            shape = shapes[ids_key].shape
            ids, mask = _seq(rng, math.prod(shape[:-1]), length, vocab)
            out[ids_key], out[mask_key] = ids.reshape(shape), mask.reshape(shape)
        out.update({key: rng.uniform(0, 5, shapes[key].shape) for key in spec.scalars})  # STS scores
        out.update({key: text_identity.distinct_keys(*shapes[key].shape[:-1], name=key) for key in spec.text_keys.values()})
    out = {key: out[key].astype(s.dtype) for key, s in shapes.items()}
    spec.check_batch(out, batch, lengths)
    return out


class SyntheticBatches:
    """A deterministic, resumable batch iterator cycling through ``task_types`` (trainer tests)."""

    def __init__(self, task_types, batch=8, length=16, vocab=512, seed=0, on_batch=None, shard_index=0,
                 num_shards=1):
        """``batch`` is the global batch; shard ``shard_index`` of ``num_shards`` yields its own rows."""
        self.task_types, self.batch, self.length, self.vocab, self.seed = task_types, batch, length, vocab, seed
        self.position = 0
        self.on_batch = on_batch
        self.shard_index, self.num_shards = shard_index, num_shards

    def __iter__(self):
        return self

    def __next__(self):
        task_type = self.task_types[self.position % len(self.task_types)]
        out = synthetic_batch(task_type, self.batch, self.length, self.vocab, seed=self.seed + self.position)
        rows = self.batch // self.num_shards
        out = {k: v[self.shard_index * rows:(self.shard_index + 1) * rows] for k, v in out.items()}
        self.position += 1
        if self.on_batch:
            self.on_batch(self.position)
        return {**out, "task": f"synthetic_{task_type}", "task_type": task_type}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = int(state["position"])
