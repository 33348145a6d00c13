"""``Encoder``: texts in, float32 embeddings out, from a checkpoint or in-memory parameters.

``encode`` tokenizes without padding and packs the texts, longest first, whole into blocks of rows of
``Encoder.pack_row_length`` tokens (per platform by default, ``default_pack_row_length``;
``bilingual.packing``: segment ids keep the texts apart, one masked mean per segment), in one of two fixed block shapes (``batch_size`` rows, and an eighth of that for the last texts;
a call with no more texts than the small block has rows, e.g. one query, runs padded, one row per text),
so a whole evaluation compiles the model twice and computes almost no padding; the embeddings equal those
of each text encoded alone (tested, <= 1e-5). Texts longer than a row (up to 8192 tokens) run as before in
batches padded to a small set of bucket shapes (rows and length rounded up), with the chunked attention
above ``chunked_min_length``; ``packing=False`` runs every text that way. Each new compiled shape is logged
(``logging`` INFO on ``bilingual.encoder_api``); truncation is logged as a warning with the count and the
length. Results come back in input order.

Devices: by default the forward pass runs on the first local device. With ``data_parallel=True``
each batch is split across all local devices (parameters replicated), for multi-chip hosts.
"""

from __future__ import annotations

import collections.abc
import functools
import logging
import operator
import time
import os
import pathlib
from typing import Optional, Sequence, Union

import jax
import numpy as np
from tqdm.auto import tqdm

from bilingual import packing as packer
from bilingual.config import EncoderConfig
from bilingual.modeling import JinaBert, segment_mean_pool

logger = logging.getLogger(__name__)

MAX_SUPPORTED_LENGTH = 8192
DEFAULT_MAX_LENGTH = 512
TRAINED_MAX_LENGTH = 512  # the training length of every stage (TRAINING.md); ALiBi extrapolates beyond it
# Tokens per packed row, per platform (``default_pack_row_length``); longer texts take the bucketed path.
# Per-row attention is quadratic in the row, so short rows pay where attention's elementwise work is dear:
# on XLA:CPU at base-de, 1,000 bundled sentences, batch 32 (notes/issue-15.md), rows of 64 ran 461 tokens/s
# (first pass 87 s) against 349 (108 s) for 128 and 288 (131 s) for 256, and the bucket path 434 (104 s).
# Accelerators keep 256 (fewer, fuller blocks for the matrix units), not yet measured on one.
PACK_ROW_LENGTH = 256
PACK_ROW_LENGTH_BY_PLATFORM = {"cpu": 64}
PACK_TOKENS_PER_TEXT = 8  # texts per block at most: rows * row length / this (bounds the pooled output)
SMALL_BLOCK_FRACTION = 8  # the second block shape has batch_size / 8 rows (the last few texts, single queries)
MIN_BUCKET_LENGTH = 16
AUTO_PROGRESS_MIN_BATCHES = 16


def default_pack_row_length(platform: str) -> int:
    """Packed-row length ``encode`` uses on ``platform`` (a ``jax.Device.platform``: "cpu", "gpu", "tpu")."""
    return PACK_ROW_LENGTH_BY_PLATFORM.get(platform, PACK_ROW_LENGTH)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


BUCKETS_PER_OCTAVE = 4


def bucket_length(n_tokens: int, max_length: int) -> int:
    """Padded length for a batch whose longest row has ``n_tokens``, capped at ``max_length``.

    Four buckets per doubling (16, 20, 24, 28, 32, 40, 48, 56, 64, 80, ...): at most 25% padding per batch
    and about ``4 * log2(max_length / 16)`` distinct lengths (28 up to 2048), so compilations stay bounded.
    """
    n = max(MIN_BUCKET_LENGTH, int(n_tokens))
    octave = _next_power_of_two(n) // 2  # the power of two just below (or at) n
    if octave < MIN_BUCKET_LENGTH // 2:
        octave = MIN_BUCKET_LENGTH // 2
    step = max(octave // BUCKETS_PER_OCTAVE, 1)
    return min(-(-n // step) * step, max_length)


def bucket_rows(n_texts: int, batch_size: int, multiple: int = 1) -> int:
    """Rows of every batch of one ``encode`` call over ``n_texts`` texts: ``batch_size``, or the next power
    of two when all texts fit in one smaller batch (cheap single queries); rounded up to ``multiple``
    (the device count). So a long run compiles one shape per bucket length."""
    rows = batch_size if n_texts >= batch_size else min(_next_power_of_two(n_texts), batch_size)
    return -(-rows // multiple) * multiple


def as_texts(texts) -> list[str]:
    """``texts`` (a sequence of str: list, tuple, 1-D numpy array, ...) as a list, checked element by
    element. Anything else is a ``TypeError`` naming its type: a dict (whose keys would be embedded), a
    set (no order), bytes, None, and also generators and other one-pass iterables (pass ``list(...)``)."""
    if isinstance(texts, np.ndarray):
        if texts.ndim != 1:
            raise TypeError(f"texts is a {texts.ndim}-D numpy array of shape {texts.shape}; expected a str "
                            "or a 1-D sequence of str")
    elif isinstance(texts, (bytes, bytearray, memoryview)) or not isinstance(texts, collections.abc.Sequence):
        raise TypeError(f"texts is {type(texts).__name__}; expected a str or a sequence of str (list, tuple, "
                        "1-D numpy array)")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    return texts


def _int_argument(value, name: str, low: int, high: Optional[int] = None, note: str = "") -> int:
    """``value`` as an int in ``[low, high]``: ``TypeError`` for a non-integer (or bool), ``ValueError``
    out of range; both name the argument."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]{note}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


@functools.lru_cache(maxsize=16)
def _compiled_forward(config: EncoderConfig):
    """One jitted forward per configuration, shared by all ``Encoder`` instances (and their shapes)."""
    model = JinaBert(config)

    def forward(params, input_ids, attention_mask):
        return model.apply({"params": params}, input_ids, attention_mask, deterministic=True).embedding

    return jax.jit(forward)


@functools.lru_cache(maxsize=16)
def _compiled_packed_forward(config: EncoderConfig):
    """The jitted forward of one packed block: ``ids, segments [R, L] -> [num_texts, H]`` (one masked mean
    per segment, ``segment_mean_pool``); ``num_texts`` is static."""
    model = JinaBert(config)

    def forward(params, input_ids, segment_ids, num_texts):
        out = model.apply({"params": params}, input_ids, (segment_ids > 0).astype(input_ids.dtype),
                          segment_ids=segment_ids, deterministic=True)
        return segment_mean_pool(out.last_hidden_state, segment_ids, num_texts)

    return jax.jit(forward, static_argnums=(3,))


def load_tokenizer(tokenizer):
    """A ``transformers`` fast tokenizer, or a directory loaded with ``AutoTokenizer.from_pretrained``."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        directory = pathlib.Path(tokenizer)
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
        return AutoTokenizer.from_pretrained(str(directory))
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be a transformers tokenizer or a directory, got {type(tokenizer).__name__}")
    return tokenizer


class Encoder:
    """Embeds texts with a JinaBERT encoder: masked mean pooling, optional L2 normalisation.

    Args:
      config: the model's ``EncoderConfig``.
      params: encoder parameters (``JinaBert``, unboxed; numpy or jax arrays).
      tokenizer: a ``transformers`` fast tokenizer, or its directory. It must add the model's special
        tokens (``<s> ... </s>``) itself, as the published JinaBERT tokenizers do.
      compute_dtype: override ``config.compute_dtype`` (e.g. ``"bfloat16"`` on accelerators).
      attention_impl: override ``config.attention_impl`` (``"dense"``, ``"chunked"``, ``"cudnn"``; default
        ``"auto"`` picks per platform and length).
      data_parallel: split each batch across all local devices.
      pack_row_length: tokens per packed row of ``encode`` (texts up to it are packed, longer ones padded),
        an int from 8 to 8192; ``None``: ``default_pack_row_length`` of the device's platform (64 on CPU,
        256 on accelerators).
    """

    def __init__(self, config: EncoderConfig, params, tokenizer, *, compute_dtype: Optional[str] = None,
                 attention_impl: Optional[str] = None, data_parallel: bool = False,
                 pack_row_length: Optional[int] = None, name: str = "bilingual-encoder"):
        if compute_dtype is not None:
            config = config.replace(compute_dtype=compute_dtype)
        if attention_impl is not None:
            config = config.replace(attention_impl=attention_impl)
        self.config = config
        self.name = name
        self.tokenizer = load_tokenizer(tokenizer)
        vocab = len(self.tokenizer)
        if vocab > config.vocab_size:
            raise ValueError(f"tokenizer has {vocab} tokens but EncoderConfig.vocab_size is {config.vocab_size}; "
                             "this tokenizer does not belong to this model")
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_token_id = config.pad_token_id if pad is None else int(pad)
        self._devices = jax.local_devices() if data_parallel else jax.local_devices()[:1]
        if data_parallel:
            mesh = jax.sharding.Mesh(np.array(self._devices), ("data",))
            self._batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
            param_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        else:
            self._batch_sharding = param_sharding = jax.sharding.SingleDeviceSharding(self._devices[0])
        self._param_sharding = param_sharding
        self.pack_row_length = (default_pack_row_length(self._devices[0].platform) if pack_row_length is None
                                else _int_argument(pack_row_length, "pack_row_length", 8, MAX_SUPPORTED_LENGTH))
        self.set_params(params)
        self._forward = _compiled_forward(config)
        self._packed_forward = _compiled_packed_forward(config)
        self.compiled_shapes: list[tuple[int, int]] = []  # shapes this encoder had to compile
        self.used_shapes: set[tuple[int, int]] = set()  # padded batches and packed blocks, (rows, length)
        self.packed_shapes: set[tuple[int, int]] = set()  # the packed blocks among them
        self._warned_length = False

    def set_params(self, params) -> None:
        """Swap in new parameters of the same model (e.g. during training); nothing is recompiled."""
        self.params = jax.device_put(params, self._param_sharding)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(cls, path, tokenizer=None, **kwargs) -> "Encoder":
        """Load an orbax checkpoint (root or step directory, any stage) or a Hugging Face export directory.

        The tokenizer is ``tokenizer`` if given; else the export directory itself (Hugging Face); else the
        one recorded with the checkpoint (``artifacts.find_tokenizer``).
        """
        from bilingual import artifacts

        config, params = artifacts.load_encoder(path)
        if tokenizer is None:
            tokenizer = path if artifacts.is_hf_directory(path) else artifacts.find_tokenizer(path)
        return cls(config, params, tokenizer, name=str(path), **kwargs)

    # ------------------------------------------------------------------ encoding
    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Token ids with special tokens, truncated to ``max_length`` (no padding). Truncation is logged: a
        warning with the number of texts cut and the length they were cut to."""
        texts = list(texts)
        kwargs = dict(add_special_tokens=True, padding=False, return_attention_mask=False,
                      return_token_type_ids=False, verbose=False)
        ids = self.tokenizer(texts, truncation=False, **kwargs)["input_ids"]
        long = [i for i, row in enumerate(ids) if len(row) > max_length]
        if long:
            longest = max(len(ids[i]) for i in long)
            cut = self.tokenizer([texts[i] for i in long], truncation=True, max_length=max_length, **kwargs)
            for i, row in zip(long, cut["input_ids"]):
                ids[i] = row
            logger.warning("encode: truncated %d of %d texts to max_length=%d tokens (the longest had %d)",
                           len(long), len(texts), max_length, longest)
        return ids

    def encode(self, texts: Union[str, Sequence[str]], batch_size: int = 32, max_length: Optional[int] = None,
               normalize: bool = True, show_progress: Optional[bool] = None, packing: bool = True) -> np.ndarray:
        """Embeddings ``[len(texts), hidden_size]`` float32, row ``i`` for ``texts[i]`` (``[H]`` for one str).

        Args:
          texts: one ``str``, or a sequence of them (list, tuple, 1-D numpy array); anything else (dict,
            set, bytes, None, a generator) is a ``TypeError`` (see :func:`as_texts`).
          batch_size: rows per forward pass, an int >= 1: packed blocks have ``batch_size`` rows of
            ``pack_row_length`` tokens (or ``batch_size / 8`` for the last texts); padded batches (texts
            longer than a row) ``batch_size`` texts, padded up to a power of two <= batch_size.
          max_length: tokens kept per text (truncation, logged as a warning), an int from 2 to 8192 and
            ``config.max_length``; ``None``: 512 (or ``config.max_length`` if smaller). Out of range:
            ``ValueError``; above the trained 512 a warning, once per encoder.
          normalize: L2-normalise each embedding (cosine similarity = dot product).
          show_progress: tqdm bar over forward passes; ``None`` shows it for more than 16.
          packing: pack texts up to ``pack_row_length`` tokens into rows (default); False pads every batch.
        """
        single = isinstance(texts, str)
        texts = [texts] if single else as_texts(texts)
        batch_size = _int_argument(batch_size, "batch_size", 1)
        limit = min(MAX_SUPPORTED_LENGTH, self.config.max_length)
        max_length = _int_argument(min(DEFAULT_MAX_LENGTH, limit) if max_length is None else max_length,
                                   "max_length", 2, limit, " (8192 and EncoderConfig.max_length)")
        hidden = self.config.hidden_size
        if max_length > TRAINED_MAX_LENGTH and not self._warned_length:
            self._warned_length = True
            logger.warning("encode: max_length=%d is above the %d tokens the model was trained at (ALiBi "
                           "extrapolates; quality at these lengths is not what training measured)", max_length,
                           TRAINED_MAX_LENGTH)
        if not texts:
            return np.zeros((0, hidden), np.float32)

        ids = self.tokenize(texts, max_length)
        out = np.empty((len(texts), hidden), np.float32)
        row_length = min(self.pack_row_length, max_length) if packing else 0
        packed = [i for i, x in enumerate(ids) if len(x) <= row_length]
        rest = [i for i, x in enumerate(ids) if len(x) > row_length]
        if packing and len(packed) <= self.block_shapes(batch_size, row_length)[1][0]:
            packed, rest = [], list(range(len(ids)))  # a few texts (a query): one padded row each is cheaper
        blocks = self._pack(ids, packed, batch_size, row_length) if packed else []
        n_rows = bucket_rows(len(rest), batch_size, len(self._devices))
        order = np.asarray(rest, np.int64)[np.argsort([-len(ids[i]) for i in rest], kind="stable")]  # longest first
        starts = range(0, len(order), batch_size)
        show = len(starts) + len(blocks) > AUTO_PROGRESS_MIN_BATCHES if show_progress is None else show_progress
        bar = tqdm(total=len(starts) + len(blocks), desc="encoding", unit="batch", disable=not show)
        for block_ids, segments, members in blocks:
            out[members] = self._run_packed(block_ids, segments)[:len(members)]
            bar.update()
        for start in starts:
            bar.update()
            rows = order[start:start + batch_size]
            batch = [ids[i] for i in rows]
            length = bucket_length(max(len(x) for x in batch), max_length)
            input_ids = np.full((n_rows, length), self.pad_token_id, np.int32)
            mask = np.zeros((n_rows, length), np.int32)
            mask[len(batch):, 0] = 1  # filler rows: one pad token each, so no row is fully masked
            for r, row in enumerate(batch):
                input_ids[r, :len(row)] = row
                mask[r, :len(row)] = 1
            out[rows] = self._run(input_ids, mask)[:len(batch)]
        bar.close()
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out

    def block_shapes(self, batch_size: int, row_length: int) -> tuple[tuple[int, int, int], ...]:
        """The two packed block shapes of ``encode``: ``(rows, row_length, texts at most)``, large then small;
        rows are multiples of the device count."""
        devices = len(self._devices)
        shapes = []
        for rows in (batch_size, -(-batch_size // SMALL_BLOCK_FRACTION)):
            rows = -(-rows // devices) * devices
            shapes.append((rows, row_length, max(1, rows * row_length // PACK_TOKENS_PER_TEXT)))
        return tuple(shapes)

    def _pack(self, ids: list, which: list[int], batch_size: int, row_length: int):
        """``[(ids, segments [R, L], members)]``: the texts ``which`` of ``ids`` packed first-fit decreasing
        into blocks of the large shape; a block whose texts fit the small one is laid out in it."""
        (rows, _, max_texts), (small_rows, _, small_texts) = self.block_shapes(batch_size, row_length)
        texts = [np.asarray(ids[i], np.int32) for i in which]
        placement = packer.first_fit([len(t) for t in texts], row_length, rows, max_texts=max_texts)
        blocks = []
        for b in range(placement.num_blocks):
            small = placement.rows_used[b] <= small_rows and placement.texts[b] <= small_texts
            block_ids, segments, members = packer.fill(texts, placement, b, small_rows if small else rows,
                                                       row_length, self.pad_token_id)
            blocks.append((block_ids, segments, np.asarray(which, np.int64)[members]))
        return blocks

    def _run_packed(self, input_ids: np.ndarray, segments: np.ndarray) -> np.ndarray:
        rows, length = input_ids.shape
        shape = (rows, length)
        num_texts = max(1, rows * length // PACK_TOKENS_PER_TEXT)
        self.used_shapes.add(shape)
        self.packed_shapes.add(shape)
        before = self._cache_size()
        start = time.perf_counter()
        input_ids = jax.device_put(input_ids, self._batch_sharding)
        segments = jax.device_put(segments, self._batch_sharding)
        out = np.asarray(jax.device_get(self._packed_forward(self.params, input_ids, segments, num_texts)),
                         np.float32)
        if self._cache_size() > before:
            self.compiled_shapes.append(shape)
            logger.info("compiled the encoder for packed blocks of shape %s in %.1fs (%d shape(s) so far)", shape,
                        time.perf_counter() - start, len(self.compiled_shapes))
        return out

    def _run(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        shape = input_ids.shape
        self.used_shapes.add(shape)
        before = self._cache_size()
        start = time.perf_counter()
        input_ids = jax.device_put(input_ids, self._batch_sharding)
        mask = jax.device_put(mask, self._batch_sharding)
        out = np.asarray(jax.device_get(self._forward(self.params, input_ids, mask)), np.float32)
        if self._cache_size() > before:
            self.compiled_shapes.append(shape)
            logger.info("compiled the encoder for batch shape %s in %.1fs (%d shape(s) so far)", shape,
                        time.perf_counter() - start, len(self.compiled_shapes))
        return out

    def _cache_size(self) -> int:
        # jax's jitted functions report their number of compiled executables (private but stable API).
        return self._forward._cache_size() + self._packed_forward._cache_size()

    # ------------------------------------------------------------------ integrations
    def as_mteb(self, **meta):
        """This encoder behind the ``mteb`` ``EncoderProtocol``: a ``bilingual.mteb_adapter.MtebEncoder``
        (``meta``: its keyword arguments, e.g. ``languages``). Needs mteb installed (a test extra)."""
        from bilingual.mteb_adapter import mteb_encoder_class  # lazy: the adapter imports this module

        return mteb_encoder_class()(encoder=self, **meta)

