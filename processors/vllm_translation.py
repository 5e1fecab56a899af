"""The runtime's requests and results in vLLM's types, and back: sampling parameters,
structured outputs, engine inputs, finish reasons, log-probabilities."""

from __future__ import annotations

from typing import Any

from processors.base import SamplingParams, StructuredOutput, TokenLogprob


def engine_input_factory() -> Any:
    """Token ids as an already rendered engine input where vLLM has that type: a raw prompt
    would go through the renderer on a thread pool, a hop per request for nothing, since the
    runtime has tokenized and checked the prompt itself."""
    try:
        from vllm.inputs.engine import tokens_input
    except ImportError:  # vLLM before its renderer API
        from vllm import TokensPrompt

        return lambda token_ids: TokensPrompt(prompt_token_ids=token_ids)
    return tokens_input


def _to_vllm_structured(structured: StructuredOutput | None) -> Any:
    if structured is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(
        json=structured.json_schema,
        json_object=True if structured.json_object else None,
        regex=structured.regex,
        choice=list(structured.choice) if structured.choice is not None else None,
        grammar=structured.grammar,
    )


def to_vllm_sampling(sampling: SamplingParams, stream_interval: int = 1) -> Any:
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind

    return VllmSamplingParams(
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        min_p=sampling.min_p,
        seed=sampling.seed,
        stop=list(sampling.stop),
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        repetition_penalty=sampling.repetition_penalty,
        ignore_eos=sampling.ignore_eos,
        logprobs=sampling.logprobs,
        structured_outputs=_to_vllm_structured(sampling.structured),
        skip_special_tokens=sampling.skip_special_tokens,
        output_kind=RequestOutputKind.DELTA,  # new text per step; the APIs accumulate if needed
        # vLLM then builds no output for the tokens in between: that work is saved too.
        stream_interval=stream_interval if stream_interval > 1 else None,
    )


def finish_reason(reason: str | None) -> Any:
    return reason if reason in ("stop", "length") else "abort"


def to_logprobs(token_ids: Any, per_token: Any) -> tuple[TokenLogprob, ...]:
    if not per_token:
        return ()
    result = []
    for token_id, candidates in zip(token_ids, per_token, strict=False):
        chosen = candidates[token_id]  # the sampled token, whatever its rank
        top = tuple(
            (lp.decoded_token or "", lp.logprob)
            for lp in sorted(candidates.values(), key=lambda lp: lp.rank)
        )
        result.append(TokenLogprob(chosen.decoded_token or "", chosen.logprob, top))
    return tuple(result)
