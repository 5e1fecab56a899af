"""The engine loop: one thread that admits, prefills, decodes and samples, step after step.

Other threads talk to it through an inbox (new requests, aborts) and hear from it through one
callback per step carrying every sequence's new output, so an event loop wakes once per step,
not once per token. PyTorch releases the GIL inside its kernels, so the server's event loop runs
while a step computes.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from processors.base import GenerationRequest, ProcessorStats, Step, TokenLogprob
from processors.transformers_engine.detokenizer import IncrementalDetokenizer
from processors.transformers_engine.grammar import mask_logits
from processors.transformers_engine.model_runner import ModelRunner, PromptChunk, build_step_inputs
from processors.transformers_engine.sampler import SampledLogprobs, SamplingRow, sample
from processors.transformers_engine.scheduler import Scheduler
from processors.transformers_engine.scheduler import Sequence as Seq

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    """A request's end by an error inside the engine (the engine itself lives on)."""

    message: str


Output = tuple[str, Step | Failure]  # (request id, what happened)


class TransformersEngine:
    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: Any,
        eos_token_ids: frozenset[int],
        max_prefill_tokens: int,
        num_threads: int = 0,
    ) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.cache = cache = runner.cache
        self.device = cache.device
        self.eos_token_ids = eos_token_ids
        self.num_threads = num_threads or torch.get_num_threads()
        self.scheduler = Scheduler(cache.num_slots, cache.max_len, max_prefill_tokens)
        self._inbox: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._on_outputs: Callable[[list[Output]], None] = lambda outputs: None
        self._stats = ProcessorStats(num_running=0, num_waiting=0, kv_cache_usage=0.0)
        self.fatal_error: BaseException | None = None

    # -- the interface other threads use --

    def start(self, on_outputs: Callable[[list[Output]], None]) -> None:
        self._on_outputs = on_outputs
        self._thread = threading.Thread(target=self._run, name="transformers-engine", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest, grammar: Any = None) -> None:
        """Queue `request`; `grammar` is its compiled constraint (a matcher), if it has one."""
        sampling = request.sampling
        generator = None
        if sampling.seed is not None and sampling.temperature != 0:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        sequence = Seq(
            request_id=request.request_id,
            prompt_token_ids=list(request.prompt_token_ids),
            sampling=sampling,
            detokenizer=IncrementalDetokenizer(
                self.tokenizer,
                request.prompt_token_ids,
                sampling.stop,
                sampling.skip_special_tokens,
            ),
            generator=generator,
            grammar=grammar,
        )
        self._inbox.put(("add", sequence))

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def stop(self) -> None:
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join()

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.fatal_error is None

    def stats(self) -> ProcessorStats:
        return self._stats

    # -- the engine thread --

    def _run(self) -> None:
        torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                while True:
                    outputs = self._take_inbox(block=not self.scheduler.has_work)
                    if outputs is None:  # stopped: whatever is left ends with an error
                        self._fail_all("the engine was shut down")
                        return
                    if self.scheduler.has_work:
                        outputs += self._step_or_fail()
                    self._update_stats()  # before the outputs, so a reader never sees stale stats
                    if outputs:
                        self._on_outputs(outputs)
        except BaseException as exc:  # a bug or a dead device: nothing more can be served
            self.fatal_error = exc
            log.exception("the transformers engine stopped")
            self._fail_all(f"the engine stopped: {exc}")

    def _fail_all(self, message: str) -> None:
        failed = self.scheduler.all_sequences()
        if failed:
            self._on_outputs([(s.request_id, Failure(message)) for s in failed])

    def _take_inbox(self, block: bool) -> list[Output] | None:
        """Applies the waiting commands: the outputs of aborts, or None once told to stop."""
        outputs: list[Output] = []
        try:
            command = self._inbox.get() if block else self._inbox.get_nowait()
            while command is not None:
                kind, value = command
                if kind == "add":
                    self.scheduler.add(value)
                elif (sequence := self.scheduler.find(value)) is not None:
                    outputs.append(self._finish(sequence, "abort"))
                command = self._inbox.get_nowait()
            return None
        except queue.Empty:
            return outputs

    def _step_or_fail(self) -> list[Output]:
        try:
            return self._step()
        except Exception as exc:  # e.g. out of memory: the running requests fail, others go on
            log.exception(
                "an engine step failed; its %d requests end with an error",
                len(self.scheduler.running),
            )
            failure = Failure(f"generation failed: {exc}")
            failed = list(self.scheduler.running)
            for sequence in failed:
                self._release(sequence)
            return [(s.request_id, failure) for s in failed]

    def _step(self) -> list[Output]:
        plan = self.scheduler.schedule()
        chunks = [
            (
                PromptChunk(work.sequence.slot, work.start, work.length),
                work.sequence.prompt_token_ids[work.start : work.start + work.length],
                work.completes_prompt,
            )
            for work in plan.prefill
        ]
        inputs = build_step_inputs(
            [s.last_token for s in plan.decode],
            [s.num_cached for s in plan.decode],
            chunks,
            self.device,
        )
        logits = self.runner.forward(inputs)  # [R, V]: decode rows, then completed prompts
        for sequence in plan.decode:
            sequence.num_cached += 1
        for work in plan.prefill:
            work.sequence.num_cached = work.start + work.length
        sampled = [*plan.decode, *(w.sequence for w in plan.prefill if w.completes_prompt)]
        outputs: list[Output] = []
        if sampled:
            self._append_tokens(sampled, logits, outputs)
        return outputs

    def _append_tokens(
        self, sequences: Sequence[Seq], logits: torch.Tensor, outputs: list[Output]
    ) -> None:
        rows = [
            SamplingRow(s.sampling, s.prompt_token_ids, s.output_token_ids, s.generator)
            for s in sequences
        ]
        grammars = [s.grammar for s in sequences]
        if any(grammar is not None for grammar in grammars):
            logits = mask_logits(logits, grammars)
        tokens, logprobs = sample(logits, rows)
        for sequence, token, token_logprobs in zip(sequences, tokens, logprobs, strict=True):
            sequence.output_token_ids.append(token)
            if sequence.grammar is not None:
                sequence.grammar.accept_token(token)
            finish = None
            text = ""
            if token in self.eos_token_ids and not sequence.sampling.ignore_eos:
                finish = "stop"
            else:
                text = sequence.detokenizer.add(token)
                if sequence.detokenizer.stopped:
                    finish = "stop"
            if finish is None and (
                len(sequence.output_token_ids) >= sequence.sampling.max_tokens
                or sequence.length >= self.cache.max_len
            ):
                finish = "length"
            outputs.append(self._output(sequence, text, finish, token, token_logprobs))

    def _output(
        self,
        sequence: Seq,
        text: str,
        finish: Any,
        token: int | None = None,
        token_logprobs: SampledLogprobs | None = None,
    ) -> Output:
        if finish is not None:
            text += sequence.detokenizer.flush()
            self._release(sequence)
        logprobs: tuple[TokenLogprob, ...] = ()
        if token is not None and token_logprobs is not None:
            top = tuple((self._token_text(t), lp) for t, lp in token_logprobs.top)
            logprobs = (TokenLogprob(self._token_text(token), token_logprobs.logprob, top),)
        step = Step(
            text=text,
            num_prompt_tokens=len(sequence.prompt_token_ids),
            num_output_tokens=len(sequence.output_token_ids),
            finish_reason=finish,
            logprobs=logprobs,
            token_ids=() if token is None else (token,),
        )
        return sequence.request_id, step

    def _finish(self, sequence: Seq, reason: Any) -> Output:
        return self._output(sequence, "", reason)

    def _release(self, sequence: Seq) -> None:
        for move in self.scheduler.remove(sequence):
            self.cache.move(*move)

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _update_stats(self) -> None:
        self._stats = ProcessorStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_cache_usage=self.scheduler.kv_cache_usage(),
        )
