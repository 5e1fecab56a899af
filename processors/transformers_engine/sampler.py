"""Picks each running sequence's next token from one batch of logits, with its own settings.

Greedy rows take the argmax; sampled rows share one vectorised path (temperature, top-k, top-p,
min-p) and draw from their own seeded generator when the request gave a seed, so a seeded
request's output does not depend on what else is in the batch. Penalties need each row's
history and are applied row by row, only to the rows that asked for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from processors.base import SamplingParams


@dataclass
class SamplingRow:
    """What the sampler needs of one sequence."""

    sampling: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    generator: torch.Generator | None = None  # seeded requests only


@dataclass(frozen=True)
class SampledLogprobs:
    logprob: float
    top: tuple[tuple[int, float], ...]


def sample(
    logits: torch.Tensor, rows: Sequence[SamplingRow]
) -> tuple[list[int], list[SampledLogprobs | None]]:
    """logits [B, V] -> one token id per row, and its logprobs where the row asked."""
    logits = logits.float()
    raw = logits
    logits = _apply_penalties(logits, rows)
    greedy = [i for i, row in enumerate(rows) if row.sampling.temperature == 0]
    sampled = [i for i, row in enumerate(rows) if row.sampling.temperature != 0]
    if not sampled:  # all greedy: no copy of the rows
        tokens = logits.argmax(dim=-1)
    else:
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        if greedy:
            tokens[greedy] = logits[greedy].argmax(dim=-1)
        tokens[sampled] = _draw(logits[sampled], [rows[i] for i in sampled])
    token_list = tokens.tolist()
    return token_list, _logprobs(raw, rows, token_list)


def _apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    penalised = [i for i, row in enumerate(rows) if _has_penalty(row.sampling)]
    if not penalised:
        return logits
    logits = logits.clone()
    for i in penalised:
        s = rows[i].sampling
        output = torch.tensor(rows[i].output_token_ids, dtype=torch.long, device=logits.device)
        if s.repetition_penalty != 1.0:  # over prompt and output, as transformers and vLLM do
            prompt = torch.tensor(rows[i].prompt_token_ids, dtype=torch.long, device=logits.device)
            seen = torch.cat([prompt, output]).unique()
            scores = logits[i, seen]
            scores = torch.where(
                scores > 0, scores / s.repetition_penalty, scores * s.repetition_penalty
            )
            logits[i, seen] = scores
        if output.numel() and (s.presence_penalty or s.frequency_penalty):  # OpenAI's: output only
            counts = torch.bincount(output, minlength=logits.shape[-1]).to(logits.dtype)
            logits[i] -= s.frequency_penalty * counts + s.presence_penalty * (counts > 0)
    return logits


def _has_penalty(s: SamplingParams) -> bool:
    return s.repetition_penalty != 1.0 or bool(s.presence_penalty) or bool(s.frequency_penalty)


def _draw(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """logits [b, V] of the sampled rows -> [b] token ids."""
    device = logits.device
    temperature = torch.tensor([r.sampling.temperature for r in rows], device=device)
    logits = logits / temperature.unsqueeze(1)
    if any(r.sampling.top_k > 0 or r.sampling.top_p < 1.0 for r in rows):
        logits = _top_k_top_p(logits, rows)
    probs = logits.softmax(dim=-1)
    min_p = torch.tensor([r.sampling.min_p for r in rows], device=device)
    if bool((min_p > 0).any()):
        floor = min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
    tokens = torch.empty(len(rows), dtype=torch.long, device=device)
    shared = [i for i, r in enumerate(rows) if r.generator is None]
    if shared:
        tokens[shared] = torch.multinomial(probs[shared], 1).squeeze(1)
    for i, row in enumerate(rows):
        if row.generator is not None:
            tokens[i] = torch.multinomial(probs[i], 1, generator=row.generator)[0]
    return tokens


def _top_k_top_p(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    device = logits.device
    vocab = logits.shape[-1]
    top_k = torch.tensor([r.sampling.top_k or vocab for r in rows], device=device).clamp(max=vocab)
    top_p = torch.tensor([r.sampling.top_p for r in rows], device=device)
    ordered, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=device).unsqueeze(0)  # [1, V]
    drop = ranks >= top_k.unsqueeze(1)
    probs = ordered.masked_fill(drop, float("-inf")).softmax(dim=-1)
    # Drop a token when the tokens ranked above it already hold top_p; the first always stays.
    drop |= (probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(1)
    ordered = ordered.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, ordered)


def _logprobs(
    raw: torch.Tensor, rows: Sequence[SamplingRow], tokens: list[int]
) -> list[SampledLogprobs | None]:
    """Log-probabilities of the model's own distribution (before sampling settings)."""
    wanted = [i for i, row in enumerate(rows) if row.sampling.logprobs is not None]
    result: list[SampledLogprobs | None] = [None] * len(rows)
    if not wanted:
        return result
    logprobs = raw[wanted].log_softmax(dim=-1)
    for n, i in enumerate(wanted):
        num_top = rows[i].sampling.logprobs or 0
        top_values, top_ids = logprobs[n].topk(num_top) if num_top else (logprobs[n][:0],) * 2
        result[i] = SampledLogprobs(
            logprob=float(logprobs[n, tokens[i]]),
            top=tuple(zip(top_ids.tolist(), top_values.tolist(), strict=True)),
        )
    return result
