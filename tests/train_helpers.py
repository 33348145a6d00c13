"""Synthetic batches in the trainer's batch layout (shapes and dtypes of tasks.batching), for step tests."""

import numpy as np


def _seq(rng, batch, length, vocab, min_len=2):
    lengths = rng.randint(min_len, length + 1, batch)
    ids = rng.randint(5, vocab, (batch, length)).astype(np.int32)
    ids[:, 0] = 0
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask, ids, 1).astype(np.int32)
    ids[np.arange(batch), lengths - 1] = 2
    return ids, mask


def synthetic_batch(task_type, batch=8, length=16, vocab=512, negatives=2, seed=0):
    rng = np.random.RandomState(seed)
    if task_type == "mlm":
        ids, mask = _seq(rng, batch, length, vocab, min_len=length // 2)
        weights = ((rng.rand(batch, length) < 0.3) & (mask == 1)).astype(np.float32)
        weights[:, 0] = 0
        inputs = np.where(weights > 0, 4, ids).astype(np.int32)
        segments = mask.copy()
        segments[:, length // 2:] *= 2
        return {"input_ids": inputs, "attention_mask": mask, "segment_ids": segments.astype(np.int32),
                "targets": ids, "loss_weights": weights}
    if task_type == "pairs":
        q, qm = _seq(rng, batch, length, vocab)
        p, pm = _seq(rng, batch, length, vocab)
        return {"query_ids": q, "query_mask": qm, "passage_ids": p, "passage_mask": pm}
    if task_type == "retrieval":
        out = synthetic_batch("pairs", batch, length, vocab, seed=seed + 1)
        n, nm = _seq(rng, batch * negatives, length, vocab)
        out["negative_ids"] = n.reshape(batch, negatives, length)
        out["negative_mask"] = nm.reshape(batch, negatives, length)
        return out
    if task_type == "sts":
        a, am = _seq(rng, batch, length, vocab)
        b, bm = _seq(rng, batch, length, vocab)
        return {"a_ids": a, "a_mask": am, "b_ids": b, "b_mask": bm,
                "score": rng.uniform(0, 5, batch).astype(np.float32)}
    raise ValueError(task_type)


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
