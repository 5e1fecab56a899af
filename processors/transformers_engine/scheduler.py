"""Which sequences run: a FIFO of waiting ones and a compact list of running ones.

Continuous batching: between two decode steps, waiting sequences take free slots (up to a
prefill token budget, so one step never stalls the running streams for long), and finished or
aborted ones leave. `running[i]` always sits in KV slot i.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from processors.base import SamplingParams


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    detokenizer: Any
    generator: Any = None  # torch.Generator for seeded sampling
    grammar: Any = None  # an xgrammar matcher, for structured output (grammar.py)
    output_token_ids: list[int] = field(default_factory=list)
    slot: int = -1
    num_cached: int = 0  # tokens whose keys and values are in the cache

    @property
    def length(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def last_token(self) -> int:
        return self.output_token_ids[-1]


class SlotMove(NamedTuple):
    source: int
    target: int
    length: int


class Scheduler:
    def __init__(self, num_slots: int, max_len: int, max_prefill_tokens: int) -> None:
        self.num_slots = num_slots
        self.max_len = max_len
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, sequence: Sequence) -> None:
        self.waiting.append(sequence)

    def admit(self) -> list[Sequence]:
        """Waiting sequences that take a slot now, in arrival order; at least one if a slot is
        free, however long its prompt."""
        admitted: list[Sequence] = []
        budget = self.max_prefill_tokens
        while self.waiting and len(self.running) < self.num_slots:
            prompt_len = len(self.waiting[0].prompt_token_ids)
            if admitted and prompt_len > budget:
                break
            sequence = self.waiting.popleft()
            sequence.slot = len(self.running)
            self.running.append(sequence)
            admitted.append(sequence)
            budget -= prompt_len
        return admitted

    def find(self, request_id: str) -> Sequence | None:
        for sequence in (*self.running, *self.waiting):
            if sequence.request_id == request_id:
                return sequence
        return None

    def remove(self, sequence: Sequence) -> SlotMove | None:
        """Takes a sequence out; when it ran, the last running one moves into its slot and the
        cache must copy that sequence's keys and values (the returned move)."""
        if sequence.slot < 0:
            self.waiting.remove(sequence)
            return None
        slot, last = sequence.slot, self.running.pop()
        sequence.slot = -1
        if last is sequence:
            return None
        self.running[slot] = last
        last.slot = slot
        return SlotMove(source=len(self.running), target=slot, length=last.num_cached)

    def kv_cache_usage(self) -> float:
        used = sum(s.num_cached for s in self.running)
        return used / (self.num_slots * self.max_len)

    def all_sequences(self) -> Seq[Sequence]:
        return (*self.running, *self.waiting)
