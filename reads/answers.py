"""Answers this process computed, each kept with the version of the data it was computed from.

A query that can tell, in the same statement and snapshot, whether its data is still at a version
sends the version of the answer it keeps; the database either computes a new answer or says the
data is unchanged, and the kept answer is returned as it is. The answer stays exact, a query right
after a command still sees its effect, and the round trip is not saved: only the computation is.
``reads.queries.stats`` keeps the top products this way (its version is ``product_sales_versions``).

The answers of a read side are shared by its databases (the primary and its streaming replicas),
since a version names the same data on each of them. At most ``CAPACITY`` are kept, the least
recently used leaving first, so no client can grow them without bound.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, NamedTuple, TypeVar, cast

V = TypeVar("V")

CAPACITY = 256  # a dashboard asks a handful of questions; a top-100 answer is about 10 KB


class Answer(NamedTuple, Generic[V]):
    version: str
    value: V


class AnswerCache:
    """A bounded map from a question (its query and parameters) to its latest kept ``Answer``."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._kept: OrderedDict[Hashable, Answer[object]] = OrderedDict()

    def get(self, question: Hashable, kind: type[V]) -> Answer[V] | None:
        """The answer kept for ``question``, if one is and its value is a ``kind``."""
        found = self._kept.get(question)
        if found is None or not isinstance(found.value, kind):
            return None
        self._kept.move_to_end(question)
        return cast(Answer[V], found)

    def keep(self, question: Hashable, answer: Answer[object]) -> None:
        self._kept[question] = answer
        self._kept.move_to_end(question)
        if len(self._kept) > self.capacity:
            self._kept.popitem(last=False)

    def __len__(self) -> int:
        return len(self._kept)
