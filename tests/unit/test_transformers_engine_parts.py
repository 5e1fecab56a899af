"""The transformers engine's pure parts: incremental detokenizer, sampler and scheduler."""

from __future__ import annotations

import pytest
import torch

from processors.base import SamplingParams
from processors.transformers_engine.detokenizer import IncrementalDetokenizer
from processors.transformers_engine.sampler import SamplingRow, sample
from processors.transformers_engine.scheduler import Scheduler, Sequence, SlotMove


class ByteTokenizer:
    """One token per UTF-8 byte: multi-byte characters always arrive in pieces."""

    def decode(self, token_ids, skip_special_tokens=True) -> str:
        return bytes(token_ids).decode("utf-8", errors="replace")


def feed(text: str, stop=(), prompt="> ") -> tuple[list[str], IncrementalDetokenizer]:
    detokenizer = IncrementalDetokenizer(ByteTokenizer(), list(prompt.encode()), stop)
    deltas = []
    for byte in text.encode():
        deltas.append(detokenizer.add(byte))
        if detokenizer.stopped:
            break
    deltas.append(detokenizer.flush())
    return deltas, detokenizer


def test_split_characters_are_held_back_until_whole():
    deltas, _ = feed("naïve € 😀 ok")
    assert "".join(deltas) == "naïve € 😀 ok"
    assert not any("\ufffd" in d for d in deltas)


def test_a_stop_string_ends_the_text_and_is_never_emitted():
    deltas, detokenizer = feed("hello STOP there", stop=("STOP",))
    assert detokenizer.stopped
    assert "".join(deltas) == "hello "
    assert all("S" not in d for d in deltas)


def test_text_that_may_start_a_stop_string_is_held_back_then_released():
    deltas, detokenizer = feed("a STO b", stop=("STOP",))
    assert not detokenizer.stopped
    assert "".join(deltas) == "a STO b"
    assert "".join(deltas[:5]) == "a "  # "a STO" read: "STO" might become "STOP"


def test_the_earliest_of_several_stop_strings_wins():
    deltas, _ = feed("one two three", stop=("three", "two"))
    assert "".join(deltas) == "one "


def row(logits_len=6, output=(), **sampling) -> SamplingRow:
    params = SamplingParams(max_tokens=10, **sampling)
    seed = sampling.get("seed")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return SamplingRow(
        params, prompt_token_ids=[0], output_token_ids=list(output), generator=generator
    )


LOGITS = torch.tensor([[0.0, 1.0, 5.0, 4.9, 2.0, -1.0]])


def test_greedy_and_top_k_1_and_tiny_top_p_take_the_argmax():
    for settings in ({"temperature": 0}, {"top_k": 1}, {"top_p": 0.01}):
        tokens, _ = sample(LOGITS, [row(**settings)])
        assert tokens == [2], settings


def test_each_row_keeps_its_own_settings_in_one_batch():
    logits = LOGITS.repeat(3, 1)
    tokens, _ = sample(logits, [row(temperature=0), row(top_k=1), row(temperature=0)])
    assert tokens == [2, 2, 2]


def test_top_k_limits_sampling_to_the_k_best():
    logits = torch.zeros(1, 6)
    logits[0, [1, 4]] = 3.0
    drawn = {sample(logits, [row(top_k=2, seed=s)])[0][0] for s in range(40)}
    assert drawn == {1, 4}


def test_a_seed_repeats_whatever_else_is_in_the_batch():
    flat = torch.zeros(4, 50)
    alone, _ = sample(flat[:1], [row(seed=11)])
    batched, _ = sample(flat, [row(), row(seed=11), row(), row()])
    assert alone[0] == batched[1]


def test_repetition_penalty_moves_away_from_seen_tokens():
    tokens, _ = sample(LOGITS, [row(temperature=0, repetition_penalty=2.0, output=[2])])
    assert tokens == [3]


def test_presence_penalty_counts_only_the_output():
    tokens, _ = sample(LOGITS, [row(temperature=0, presence_penalty=0.5, output=[2])])
    assert tokens == [3]


def test_min_p_drops_unlikely_tokens():
    drawn = {sample(LOGITS, [row(min_p=0.5, seed=s)])[0][0] for s in range(40)}
    assert drawn == {2, 3}


def test_logprobs_come_from_the_model_distribution():
    _, logprobs = sample(LOGITS.repeat(2, 1), [row(temperature=0, logprobs=2), row(temperature=0)])
    expected = LOGITS.log_softmax(-1)[0]
    assert logprobs[1] is None
    assert logprobs[0].logprob == pytest.approx(float(expected[2]))
    assert [t for t, _ in logprobs[0].top] == [2, 3]


def sequence(name: str, prompt_len: int) -> Sequence:
    return Sequence(name, [1] * prompt_len, SamplingParams(max_tokens=4), detokenizer=None)


def prefilled(plan) -> list[tuple[str, int, int]]:
    return [(w.sequence.request_id, w.start, w.length) for w in plan.prefill]


def run_step(scheduler: Scheduler, plan) -> None:
    """What the engine does after a forward pass: the cache now holds these tokens."""
    for sequence in plan.decode:
        sequence.num_cached += 1
    for work in plan.prefill:
        work.sequence.num_cached = work.start + work.length
        if work.completes_prompt:
            work.sequence.output_token_ids.append(0)


def test_prompts_share_a_step_within_the_budget_and_a_long_one_is_chunked():
    scheduler = Scheduler(num_slots=3, max_len=100, max_prefill_tokens=10)
    for name, length in (("a", 4), ("b", 24), ("c", 4), ("d", 4)):
        scheduler.add(sequence(name, length))
    plan = scheduler.schedule()
    assert prefilled(plan) == [("a", 0, 4), ("b", 0, 6)]  # b is cut to what the budget leaves
    run_step(scheduler, plan)
    plan = scheduler.schedule()
    assert [s.request_id for s in plan.decode] == ["a"]
    assert prefilled(plan) == [("b", 6, 10)]  # the half-done prompt first, nothing new beside it
    run_step(scheduler, plan)
    plan = scheduler.schedule()
    assert prefilled(plan) == [("b", 16, 8), ("c", 0, 2)]
    run_step(scheduler, plan)
    assert [s.slot for s in scheduler.running] == [0, 1, 2]
    plan = scheduler.schedule()
    assert [s.request_id for s in plan.decode] == ["a", "b"]
    assert prefilled(plan) == [("c", 2, 2)]  # d waits: every slot is taken


def test_leaving_keeps_decoding_sequences_first_and_compact():
    scheduler = Scheduler(num_slots=4, max_len=100, max_prefill_tokens=9)
    for name, length in (("a", 2), ("b", 2), ("c", 2), ("d", 20)):
        scheduler.add(sequence(name, length))
    run_step(scheduler, scheduler.schedule())  # a, b, c prefilled; d half-done in slot 3
    a, _, c, d = scheduler.running
    assert (d.is_prefilling, d.num_cached) == (True, 3)
    # a leaves: c (the last decoding one) takes slot 0, then d moves down into slot 2
    assert scheduler.remove(a) == [
        SlotMove(source=2, target=0, length=2),
        SlotMove(source=3, target=2, length=3),
    ]
    assert [(s.request_id, s.slot) for s in scheduler.running] == [("c", 0), ("b", 1), ("d", 2)]
    assert scheduler.remove(d) == []  # the last one leaves: nothing moves
    assert scheduler.remove(c) == [SlotMove(source=1, target=0, length=2)]
    assert scheduler.kv_cache_usage() == pytest.approx(2 / 400)
