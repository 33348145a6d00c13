"""Mixtures for single-task batches: a name, its tasks, and how often each task supplies a batch.

seqio's own ``Mixture`` mixes *examples* and requires every task to have the same features, so a multi-task
mixture of retrieval and STS tasks cannot be a seqio mixture. Ours is a small registry read by
``tasks.batching.make_batch_iterator``, which draws one task per batch with probability proportional to its rate,
and finds the tasks of a name with ``resolve``.

    register_mixture("multitask_de", ["retrieval_de", "sts_de"])                 # rates by size
    register_mixture("mlm_de_en", {"mlm_en": 1.0, "mlm_de": 1.0})                 # explicit rates
    register_mixture("pairs_mix", ["a", "b"], rates="size", temperature=2.0)     # size ** (1/2)
    register_mixture("mlm_de", ["mlm_de_wiki", "mlm_de_web"])                      # a mixture as a member:
    register_mixture("mlm_de_en", {"mlm_en": 1.0, "mlm_de": 1.0})                 # 1:1 by language, by size within

Rates ``"size"`` use ``task.num_input_examples("train")`` (counted once per task for file sources); a member that
is itself one of these mixtures counts the examples of all its tasks. A member mixture's rate is shared among
its tasks in the proportions of its own rates (``resolve`` flattens it), so every batch still comes from one task.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import gin
import seqio

from bilingual.config import ConfigError

MAX_LISTED = 40  # names shown in an unknown-name error; the rest are counted


@dataclasses.dataclass(frozen=True)
class Mixture:
    name: str
    tasks: tuple[str, ...]
    explicit_rates: Mapping[str, float] | None = None
    rates: str = "size"
    temperature: float = 1.0

    def task_rates(self, split: str = "train") -> dict[str, float]:
        """Task name -> rate (unnormalised)."""
        if self.explicit_rates is not None:
            return dict(self.explicit_rates)
        if self.rates == "equal":
            return {t: 1.0 for t in self.tasks}
        out = {}
        for t in self.tasks:
            n = _num_examples(t, split)
            if not n:
                raise ValueError(f"mixture {self.name!r}: task {t!r} reports no size for split {split!r}; "
                                 "give explicit rates")
            out[t] = float(n) ** (1.0 / self.temperature)
        return out


MIXTURES: dict[str, Mixture] = {}


def _num_examples(name: str, split: str) -> int:
    """Train examples of a task, or of every task of one of our mixtures."""
    if name in MIXTURES:
        return sum(_num_examples(t, split) for t in MIXTURES[name].tasks)
    return seqio.get_mixture_or_task(name).num_input_examples(split)


@gin.configurable
def register_mixture(name: str = gin.REQUIRED, tasks: Sequence[str] | Mapping[str, float] = gin.REQUIRED, *,
                     rates: str = "size", temperature: float = 1.0) -> Mixture:
    """Registers (or replaces) a mixture of already registered seqio tasks.

    Args:
      tasks: task names (rates from ``rates``) or task name -> explicit rate; a name may be a mixture registered
        here before (its rate is shared among its tasks, see ``resolve``).
      rates: ``"size"`` (train examples ** (1/temperature)) or ``"equal"``.
    """
    if rates not in ("size", "equal"):
        raise ValueError(f"rates must be 'size' or 'equal', got {rates!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    names = tuple(tasks)
    if name in names:
        raise ValueError(f"mixture {name!r} names itself")
    missing = [t for t in names if t not in seqio.TaskRegistry.names() and t not in MIXTURES]
    if missing:
        raise ValueError(f"mixture {name!r}: tasks {missing} are not registered")
    explicit = {t: float(r) for t, r in tasks.items()} if isinstance(tasks, Mapping) else None
    MIXTURES[name] = Mixture(name, names, explicit, rates, temperature)
    return MIXTURES[name]


class UnknownNameError(ConfigError):
    """A task or mixture name that nothing registered; the message lists what is registered."""


def _listing(kind: str, names) -> str:
    names = sorted(names)
    more = f", ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return f"{kind} ({len(names)}): {', '.join(names[:MAX_LISTED]) or 'none'}{more}"


def resolve(name: str, split: str = "train") -> tuple[list[seqio.Task], dict[str, float]]:
    """The tasks of ``name`` (one of our mixtures, a seqio mixture of same-type tasks, or a task) and their
    unnormalised rates. An unknown name (the run's ``data.name``) raises ``UnknownNameError``."""
    mixture = MIXTURES.get(name)
    if mixture is not None:
        tasks, rates = [], {}
        for member, rate in mixture.task_rates(split).items():
            if member not in MIXTURES:
                tasks.append(seqio.get_mixture_or_task(member))
                rates[member] = rates.get(member, 0.0) + rate
                continue
            inner_tasks, inner_rates = resolve(member, split)  # shares ``rate`` in the member's proportions
            total = sum(inner_rates.values())
            for task in inner_tasks:
                if task.name not in rates:
                    tasks.append(task)
                rates[task.name] = rates.get(task.name, 0.0) + rate * inner_rates[task.name] / total
        return tasks, rates
    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
        raise UnknownNameError(
            f"data.name={name!r} is not a registered task or mixture (register it with register_data in gin); "
            f"{_listing('tasks', seqio.TaskRegistry.names())}; "
            f"{_listing('mixtures', set(MIXTURES) | set(seqio.MixtureRegistry.names()))}")
    provider = seqio.get_mixture_or_task(name)
    if isinstance(provider, seqio.Mixture):
        tasks = list(provider.tasks)
        return tasks, {t.name: float(provider.get_rate(t)) for t in tasks}
    return [provider], {provider.name: 1.0}
