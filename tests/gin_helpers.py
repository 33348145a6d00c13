"""Parsing the repository's gin files in tests: a clean config with ``gin/`` on the search path, and the
values a run file binds."""

from __future__ import annotations

import contextlib
import pathlib

import gin

GIN = pathlib.Path(__file__).resolve().parent.parent / "gin"


@contextlib.contextmanager
def clean_config():
    """An empty gin config that finds includes under ``gin/``, cleared again on exit."""
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN))
    try:
        yield
    finally:
        gin.clear_config()


def bound_values(run_file, *names: str, bindings=()) -> tuple:
    """What ``run_file`` (with ``bindings``) binds to each of ``names`` (None where unbound), read in a clean
    config that is cleared afterwards."""
    from launch import configurables, data_factory  # noqa: F401  (data_factory registers the data configurables)

    with clean_config():
        configurables.parse([str(run_file)], list(bindings))
        return tuple(configurables._bound(name) for name in names)
