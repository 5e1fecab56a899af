"""One streamed request per API, timed chunk by chunk the way `vllm bench serve` times them.

TTFT is the time to the first chunk that carries output, ITL the gaps between such chunks as
the client reads them (chunks that arrive in one socket read share a timestamp, as in vLLM's
client), E2E the time to the last one. Output tokens come from the server's `usage`, never from
counting chunks, since a server may put several tokens in one chunk.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class RequestRecord:
    prompt_len: int  # tokens, from the server's usage when it reports one
    output_len: int = 0  # tokens, from the server's usage
    start: float = 0.0  # perf_counter at send
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    success: bool = False
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if self.output_len <= 1:
            return None
        return (self.e2e - self.ttft) / (self.output_len - 1)


@dataclass(frozen=True)
class Job:
    prompt: str
    prompt_len: int
    output_len: int


# A parser turns one message (an SSE event's data, or one NUL-delimited record) into
# (has_output, usage or None); None for a message to skip.
Parser = Callable[[dict[str, Any]], tuple[bool, dict | None]]


@dataclass(frozen=True)
class Backend:
    name: str
    path: str
    separator: bytes  # b"\n\n" for SSE events, b"\0" for the ChatLLM stream
    body: Callable[[Job, str], dict[str, Any]]
    parse: Parser


def _completions_body(job: Job, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": job.prompt,
        "max_tokens": job.output_len,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _chat_body(job: Job, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": job.prompt}],
        "max_completion_tokens": job.output_len,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _chatllm_body(job: Job, model: str) -> dict[str, Any]:
    # ChatLLM has no ignore_eos; the demo model never emits EOS, so lengths hold there too.
    return {
        "prompt": job.prompt,
        "max_new_tokens": job.output_len,
        "temperature": 0,
        "use_stream_chat": True,
    }


def _parse_completions(data: dict[str, Any]) -> tuple[bool, dict | None]:
    choices = data.get("choices")
    return bool(choices and choices[0].get("text")), data.get("usage")


def _parse_chat(data: dict[str, Any]) -> tuple[bool, dict | None]:
    choices = data.get("choices")
    return bool(choices and choices[0].get("delta", {}).get("content")), data.get("usage")


def _parse_chatllm(data: dict[str, Any]) -> tuple[bool, dict | None]:
    # `response` is cumulative; every record after the first non-empty one adds output.
    return bool(data.get("response")), data.get("usage")


def _structured_chat_body(job: Job, model: str) -> dict[str, Any]:
    """A chat request whose output a grammar constrains (vLLM's structured_outputs), for the
    grammar's cost per token. Loose enough that a model runs to max tokens: the demo model,
    whose end token is pushed far down, does."""
    body = _chat_body(job, model)
    del body["ignore_eos"]  # an end token the grammar allows must end it, as in real use
    return {**body, "structured_outputs": {"regex": "[a-z ,.]{1,2000}"}}


BACKENDS = {
    "completions": Backend(
        "completions", "/v1/completions", b"\n\n", _completions_body, _parse_completions
    ),
    "chat": Backend("chat", "/v1/chat/completions", b"\n\n", _chat_body, _parse_chat),
    "chat-structured": Backend(
        "chat-structured", "/v1/chat/completions", b"\n\n", _structured_chat_body, _parse_chat
    ),
    "chatllm": Backend("chatllm", "/", b"\0", _chatllm_body, _parse_chatllm),
}


async def send(
    session: aiohttp.ClientSession, backend: Backend, base_url: str, model: str, job: Job
) -> RequestRecord:
    record = RequestRecord(prompt_len=job.prompt_len)
    sse = backend.separator == b"\n\n"
    record.start = last = time.perf_counter()
    try:
        async with session.post(base_url + backend.path, json=backend.body(job, model)) as answer:
            if answer.status != 200:
                record.error = f"HTTP {answer.status}: {(await answer.text())[:200]}"
                return record
            buffer = b""
            async for data in answer.content.iter_any():
                now = time.perf_counter()
                buffer += data
                *messages, buffer = buffer.split(backend.separator)
                for message in messages:
                    if sse:
                        message = message.strip()
                        if not message.startswith(b"data: {"):
                            continue  # [DONE], comments, keep-alives
                        message = message[6:]
                    elif not message:
                        continue
                    parsed = orjson.loads(message)
                    if "error" in parsed and parsed.get("error"):
                        record.error = str(parsed["error"])[:200]
                        return record
                    has_output, usage = backend.parse(parsed)
                    if usage:
                        record.output_len = usage.get("completion_tokens", 0)
                        record.prompt_len = usage.get("prompt_tokens") or record.prompt_len
                    if has_output:
                        if not record.ttft:
                            record.ttft = now - record.start
                        else:
                            record.itl.append(now - last)
                        last = now
        record.e2e = last - record.start
        record.success = record.ttft > 0
        if not record.success:
            record.error = "no chunk with output arrived"
    except Exception:
        record.error = traceback.format_exc(limit=2)
    return record
