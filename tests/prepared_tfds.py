"""Write a real prepared TFDS dataset from a few rows, for tests (nothing is downloaded).

    from prepared_tfds import write_prepared_tfds

    write_prepared_tfds(data_dir, "wikipedia/20230601.de", [{"title": "Köln", "text": "Köln ist ..."}, ...])
    tfds.builder("wikipedia/20230601.de", data_dir=data_dir).is_prepared()        # True
    tfds.data_source("wikipedia/20230601.de", split="train", data_dir=data_dir)  # the rows, in order

The registered builder of the name (here TFDS's ``wikipedia``, whose own ``download_and_prepare`` would
download a dump) is subclassed for the call, only to generate ``rows`` instead of reading its sources; TFDS's
own writer then writes the examples (its features' encoding, shard files, ``dataset_info.json``,
``features.json``) at ``<data_dir>/<name>/<config>/<version>``, exactly where ``tfds.builder(name,
data_dir=...)`` looks. Examples keep the order of ``rows`` (shuffling disabled). About 0.2 s for 100 rows.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence


def write_prepared_tfds(data_dir, name: str, rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping]],
                        *, file_format: str = "array_record", split: str = "train") -> str:
    """Prepares TFDS dataset ``name`` (``"builder/config"``, optionally ``":version"``, of a registered
    builder) in ``data_dir`` holding ``rows`` as split ``split`` (or ``{split: rows}`` for several).

    Args:
      data_dir: the TFDS data directory (what ``tfds_data_dir`` names in gin).
      name: e.g. ``"wikipedia/20230601.de"``.
      rows: feature dicts holding every feature of the builder (Wikipedia: ``title``, ``text``).
      file_format: ``"array_record"`` (random access: ``tfds.data_source``) or ``"tfrecord"``
        (``builder.as_dataset`` only).
      split: the split name when ``rows`` is a list.

    Returns the prepared dataset's directory (``builder.data_dir``).
    """
    import tensorflow_datasets as tfds

    splits = {split: list(rows)} if not isinstance(rows, Mapping) else {k: list(v) for k, v in rows.items()}
    builder_name, kwargs = tfds.core.naming.parse_builder_name_kwargs(name)
    registered = tfds.builder_cls(str(builder_name))

    class _FromRows(registered, skip_registration=True):
        """The registered builder, generating ``rows`` (in order) instead of downloading its sources."""

        name = registered.name

        def _info(self):
            info = super()._info()
            info.as_proto.disable_shuffling = True  # keep the order of rows
            return info

        def _split_generators(self, dl_manager):
            return {split_name: self._generate_examples(split_rows) for split_name, split_rows in splits.items()}

        def _generate_examples(self, split_rows):
            for i, row in enumerate(split_rows):
                yield i, dict(row)

    tfds.disable_progress_bar()
    builder = _FromRows(data_dir=os.fspath(data_dir), file_format=file_format, **kwargs)
    builder.download_and_prepare(download_dir=os.path.join(os.fspath(data_dir), "downloads"))
    return os.fspath(builder.data_dir)
