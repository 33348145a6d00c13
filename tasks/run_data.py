"""``register_data``: the gin entry point that registers a run's data (user tasks, mixtures, demo tasks).

It sits above ``tasks.registry``, ``tasks.mixtures`` and ``tasks.demo`` (which itself registers through
``tasks.registry``), so imports point one way. Importing this module registers every gin configurable
that the data gin files name (``register_data``, ``register_*_task``, ``register_demo_tasks``)::

    register_data.tasks = [@pairs_mine/register_pairs_task()]        # gin/datasets/user_data.gin
    register_data.demo_tokenizer = %DEMO_TOKENIZER                     # gin/datasets/demo.gin
"""

from __future__ import annotations

from typing import Mapping, Sequence

import gin
import seqio

from tasks import demo, mixtures as mixtures_lib
from tasks import registry  # noqa: F401  (registers the register_*_task configurables)


@gin.configurable
def register_data(tasks: Sequence[seqio.Task] = (), mixtures: Mapping[str, Mapping[str, float] | Sequence[str]]
                  | None = None, demo_tokenizer: str | None = None) -> list[str]:
    """Gin entry point for a run's data; returns the registered names.

    Args:
      tasks: evaluated references such as ``@pairs_mine/register_pairs_task()`` (gin calls them first).
      mixtures: mixture name -> {task: rate} (explicit rates) or [tasks] (rates by size); registered after the
        tasks.
      demo_tokenizer: if set, also register the bundled demo tasks and mixtures with this tokenizer.
    """
    names = [t.name for t in tasks]
    if demo_tokenizer:
        names += demo.register_demo_tasks(demo_tokenizer)
    for name, spec in (mixtures or {}).items():
        mixtures_lib.register_mixture(name, spec)
        names.append(name)
    return names
