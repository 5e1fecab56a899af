"""Which sequences run: a FIFO of waiting ones and a compact list of running ones.

Continuous batching with chunked prefill: every step decodes one token for each sequence whose
prompt is in the cache and spends a token budget on prompts: first the one left half-done by
the previous step, then waiting sequences as slots free up, the last one cut to what the budget
has left. So a long prompt never stalls the running streams for more than a budget's worth of
work, and several short ones share one forward pass.

`running[i]` always sits in KV slot i, decoding sequences first: at most one sequence is still
prefilling after a step (the last one). When a sequence leaves, the last decoding one takes its
slot and a prefilling one behind them moves down one (the moves the cache must copy).
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
    def is_prefilling(self) -> bool:
        return self.num_cached < len(self.prompt_token_ids)

    @property
    def length(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def last_token(self) -> int:
        return self.output_token_ids[-1]


class PromptWork(NamedTuple):
    sequence: Sequence
    start: int  # prompt tokens already cached
    length: int

    @property
    def completes_prompt(self) -> bool:
        return self.start + self.length == len(self.sequence.prompt_token_ids)


class StepPlan(NamedTuple):
    decode: list[Sequence]  # running[:B], one token each
    prefill: list[PromptWork]


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

    def schedule(self) -> StepPlan:
        """What the next step computes; newly admitted sequences take the next free slots."""
        decode = [s for s in self.running if not s.is_prefilling]
        prefill: list[PromptWork] = []
        budget = self.max_prefill_tokens
        if self.running and self.running[-1].is_prefilling:  # left half-done by the last step
            budget = self._take(self.running[-1], budget, prefill)
        while budget > 0 and self.waiting and len(self.running) < self.num_slots:
            sequence = self.waiting.popleft()
            sequence.slot = len(self.running)
            self.running.append(sequence)
            budget = self._take(sequence, budget, prefill)
        return StepPlan(decode, prefill)

    @staticmethod
    def _take(sequence: Sequence, budget: int, prefill: list[PromptWork]) -> int:
        length = min(len(sequence.prompt_token_ids) - sequence.num_cached, budget)
        prefill.append(PromptWork(sequence, sequence.num_cached, length))
        return budget - length

    def find(self, request_id: str) -> Sequence | None:
        for sequence in (*self.running, *self.waiting):
            if sequence.request_id == request_id:
                return sequence
        return None

    def remove(self, sequence: Sequence) -> list[SlotMove]:
        """Takes a sequence out; the slot moves that keep the running ones compact, in the
        order the cache must copy them."""
        if sequence.slot < 0:
            self.waiting.remove(sequence)
            return []
        hole = sequence.slot
        sequence.slot = -1
        del self.running[hole]
        if not sequence.is_prefilling:  # the last decoding sequence fills the hole
            decoding = [i for i, s in enumerate(self.running) if not s.is_prefilling]
            if decoding and decoding[-1] >= hole:
                self.running.insert(hole, self.running.pop(decoding[-1]))
        moves = []
        # Every sequence whose slot changes moves down, and in this order no source is
        # overwritten before it is copied.
        for index, running in enumerate(self.running):
            if running.slot != index:
                if running.num_cached:
                    moves.append(SlotMove(running.slot, index, running.num_cached))
                running.slot = index
        return moves

    def kv_cache_usage(self) -> float:
        used = sum(s.num_cached for s in self.running)
        return used / (self.num_slots * self.max_len)

    def all_sequences(self) -> Seq[Sequence]:
        return (*self.running, *self.waiting)
