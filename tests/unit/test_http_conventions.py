"""HTTP conventions an operator expects of an API server: CORS as vLLM's server answers it,
the API docs, a path prefix behind a proxy, keep-alive comments on streams that wait in the
engine's queue, and a warning for the platform's reserved ports."""

from __future__ import annotations

import asyncio
import json

import pytest

from processors.base import ProcessorInputError
from runtime.api.framing import SSE_KEEP_ALIVE
from runtime.config import load_config
from runtime.serve import reserved_port_warning
from tests.unit.conftest import TOKEN, make_client, post_scope, served_app
from tests.unit.fake_processor import FakeProcessor

CHAT = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": True}
COMPLETION = {"prompt": "x", "max_tokens": 2, "stream": True}
PREFLIGHT = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def test_cors_preflight_needs_no_token_and_answers_for_every_origin_by_default(fake):
    client = make_client(fake, token=TOKEN)
    preflight = client.options("/v1/chat/completions", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    # A refusal carries the header too, so the page can read the 401 and say why.
    refused = client.post("/v1/chat/completions", json=CHAT, headers={"Origin": "https://a.b"})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "*"


def test_cors_origins_can_be_restricted_or_turned_off(fake):
    client = make_client(fake, allowed_origins='["https://app.example"]')
    assert client.options("/v1/completions", headers=PREFLIGHT).status_code == 200
    other = {**PREFLIGHT, "Origin": "https://evil.example"}
    denied = client.options("/v1/completions", headers=other)
    assert denied.status_code == 400
    assert "access-control-allow-origin" not in denied.headers
    off = make_client(fake, allowed_origins="[]")
    answer = off.get("/v1/models", headers={"Origin": "https://app.example"})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


def test_api_docs_are_served_as_vllm_serves_them_behind_the_token(fake):
    client = make_client(fake, token=TOKEN)
    assert client.get("/docs").status_code == 401
    assert client.get("/openapi.json").status_code == 401
    docs = client.get("/docs", headers={"Authorization": TOKEN})
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    schema = client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert "/v1/chat/completions" in schema["paths"]
    assert make_client(fake).get("/redoc").status_code == 200  # no token set: open
    off = make_client(fake, disable_fastapi_docs=True)
    assert [off.get(path).status_code for path in ("/docs", "/redoc", "/openapi.json")] == [
        404,
        404,
        404,
    ]


@pytest.mark.parametrize("prefix", ["/llm", ""], ids=["proxy-kept-the-prefix", "proxy-strip"])
def test_a_root_path_serves_behind_a_proxy_that_keeps_or_strips_the_prefix(fake, prefix):
    client = make_client(fake, token=TOKEN, root_path="/llm")
    assert client.get(f"{prefix}/health").status_code == 200  # probes stay open
    assert client.post(f"{prefix}/v1/completions", json={"prompt": "x"}).status_code == 401
    answer = client.post(
        f"{prefix}/v1/completions",
        json={"prompt": "x", "max_tokens": 2},
        headers={"Authorization": TOKEN},
    )
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["text"] == "w0 w1 "
    schema = client.get(f"{prefix}/openapi.json", headers={"Authorization": TOKEN}).json()
    assert schema["servers"] == [{"url": "/llm"}]
    metrics = client.get(f"{prefix}/metrics").text
    assert 'route="/v1/completions",status="200"' in metrics  # counted under its route


class FirstStepHeld(FakeProcessor):
    """The fake processor, whose requests wait as in the engine's queue until `gate` is set
    (a test that never opens it fails after 10 s instead of hanging)."""

    gate: asyncio.Event

    async def generate(self, request):
        await asyncio.wait_for(self.gate.wait(), 10)
        async for step in super().generate(request):
            yield step


def stream_through(app, path: str, body: dict, gate_opens_on: bytes | None):
    """POST `body` straight to the ASGI app and read the answer as it comes; the processor's
    gate opens when a body chunk equal to `gate_opens_on` has arrived (None: at once). The
    status and the body chunks in order."""
    status: list[int] = []
    chunks: list[bytes] = []

    async def run() -> None:
        processor = app.processor
        processor.gate = asyncio.Event()
        if gate_opens_on is None:
            processor.gate.set()
        finished = asyncio.Event()
        requests = iter([{"type": "http.request", "body": json.dumps(body).encode()}])

        async def receive():
            message = next(requests, None)
            if message is not None:
                return message
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if chunks[-1] == gate_opens_on:
                    processor.gate.set()
                if not message.get("more_body"):
                    finished.set()

        await app.asgi(post_scope(path), receive, send)

    asyncio.run(run())
    return status[0], [chunk for chunk in chunks if chunk]


def data_events(chunks: list[bytes]) -> list:
    text = b"".join(chunks).decode()
    events = [event for event in text.split("\n\n") if event.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    return [json.loads(event.removeprefix("data: ")) for event in events[:-1]]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_stream_waiting_for_its_first_token_is_kept_alive_with_comments(demo_tokenizer, path):
    served = served_app(FirstStepHeld(demo_tokenizer), sse_keep_alive=0.05)
    body = CHAT if path.endswith("chat/completions") else {"prompt": "x", "max_tokens": 2}
    # The gate opens only once a comment has gone out: the request waited, and was answered.
    status, chunks = stream_through(served, path, {**body, "stream": True}, SSE_KEEP_ALIVE)
    assert status == 200
    assert chunks[0] == SSE_KEEP_ALIVE == b": keep-alive\n\n"
    events = data_events(chunks[chunks.index(SSE_KEEP_ALIVE) :])
    text = "".join(
        choice.get("text") or choice.get("delta", {}).get("content") or ""
        for event in events
        for choice in event["choices"]
    )
    assert text == "w0 w1 "
    assert served.processor.running == set()


def test_a_prompt_first_token_sends_no_comment(demo_tokenizer):
    served = served_app(FirstStepHeld(demo_tokenizer), sse_keep_alive=30)
    status, chunks = stream_through(served, "/v1/completions", COMPLETION, None)
    assert status == 200
    assert SSE_KEEP_ALIVE not in chunks
    assert len(data_events(chunks)) == 2


def test_an_engine_error_at_once_keeps_its_status_with_keep_alive_on(demo_tokenizer):
    fake = FirstStepHeld(demo_tokenizer)
    fake.fail_with = ProcessorInputError("the engine refused the prompt")
    served = served_app(fake, sse_keep_alive=30)
    status, chunks = stream_through(served, "/v1/chat/completions", CHAT, None)
    assert status == 400
    assert json.loads(b"".join(chunks))["error"]["message"] == "the engine refused the prompt"


def test_an_engine_error_after_the_comments_is_an_error_event(demo_tokenizer):
    fake = FirstStepHeld(demo_tokenizer)
    fake.fail_with = ProcessorInputError("the engine refused the prompt")
    served = served_app(fake, sse_keep_alive=0.05)
    status, chunks = stream_through(served, "/v1/chat/completions", CHAT, SSE_KEEP_ALIVE)
    assert status == 200  # the answer had started
    (error,) = [event for event in data_events(chunks) if "error" in event]
    assert error["error"]["message"] == "the engine refused the prompt"


def test_the_platforms_reserved_ports_are_warned_about_in_a_platform_deployment(tmp_path):
    service = tmp_path / "service.json"
    service.write_text(json.dumps({"name": "svc", "containers": [{"port": 8080}]}))
    warning = reserved_port_warning(load_config({}, {}, str(service)))
    assert warning is not None
    assert "port 8080 is reserved on the platform" in warning
    assert "9090" in warning
    assert reserved_port_warning(load_config({"port": "9090"}, {}, str(service))) is not None
    assert reserved_port_warning(load_config({"port": "8000"}, {}, str(service))) is None
    # Outside the platform (no service JSON) 8080 is anyone's to use.
    assert reserved_port_warning(load_config({"port": "8080"}, {})) is None
