"""The ChatLLM API over WebSocket (PROTOCOLS §2), on the same routes as over HTTP.

Each client message is one ChatLLM request (a JSON object, or plain text as the prompt). Its
answer is the text — one message per streamed step with the new text (the default here), or one
message with the whole answer when `use_stream_chat` is false — then exactly one `<EOS>`, an
error included (its JSON error object comes first; the connection stays open).

The connection keeps the conversation: each answer extends its history, and a message's own
`system_prompt` or `history`, when given, replaces the connection's. A message that gives them
without a prompt only sets them, and is answered with just `<EOS>`.

Each message is admitted and counted like an HTTP request, so a drain waits for an answer in
progress and then closes the connection with 1001 (going away); idle connections close at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import aclosing

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from runtime.admission import Admission, admitted_service
from runtime.api.chatllm import parse_chatllm_body, prepare_chat
from runtime.asgi import route_path
from runtime.call_log import CallLog, CallRecord, recording
from runtime.config import ServerConfig
from runtime.errors import ApiError, ErrorKind, from_exception
from runtime.generation import new_request_id
from runtime.phase import ServingStatus
from runtime.service import LlmService

EOS = "<EOS>"
GOING_AWAY = 1001
# Messages read ahead while one is answered; beyond, the socket is not read (backpressure).
MAX_WAITING_MESSAGES = 8


def chatllm_websocket_router(
    config: ServerConfig, status: ServingStatus, admission: Admission, call_log: CallLog | None
) -> APIRouter:
    router = APIRouter()

    async def converse(websocket: WebSocket) -> None:
        service = admitted_service(websocket)
        await ChatSession(service, status, admission, call_log, websocket).run()

    for path in config.platform_paths:
        router.add_api_websocket_route(path, converse)
    return router


class ChatSession:
    """One connection: its conversation, its messages answered in order, and its end."""

    def __init__(
        self,
        service: LlmService,
        status: ServingStatus,
        admission: Admission,
        call_log: CallLog | None,
        websocket: WebSocket,
    ) -> None:
        self.service = service
        self.status = status
        self.admission = admission
        self.call_log = call_log
        self.websocket = websocket
        self.system_prompt = ""
        self.history: list[list[str]] = []

    async def run(self) -> None:
        await self.websocket.accept()
        inbox: asyncio.Queue[bytes] = asyncio.Queue(MAX_WAITING_MESSAGES)
        reader = asyncio.create_task(self._read(inbox))  # done when the client has left
        stopping = self.status.ending()
        try:
            while True:
                next_message = asyncio.ensure_future(inbox.get())
                await asyncio.wait(
                    {next_message, reader, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                if not next_message.done():  # the client left, or the server is stopping
                    next_message.cancel()
                    if stopping.done():
                        await self._go_away()
                    return
                if not await self._answer(next_message.result(), reader, stopping):
                    return
        except WebSocketDisconnect:
            pass  # the client left while being answered; its request was aborted
        finally:
            reader.cancel()
            stopping.cancel()

    async def _read(self, inbox: asyncio.Queue[bytes]) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            await inbox.put(text.encode() if text is not None else message.get("bytes") or b"")

    async def _answer(self, data: bytes, reader: asyncio.Task, stopping: asyncio.Future) -> bool:
        """Answer one message; False when the connection is over."""
        refusal = self.admission.refusal()  # over the queue limit, or draining
        counted = self.admission.admitted() if refusal is None else contextlib.nullcontext()
        with counted:
            reply = asyncio.ensure_future(
                self._reply(data, None if refusal is None else refusal[0])
            )
            await asyncio.wait({reply, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not reply.done():  # the client left: stop, which aborts the engine request
                reply.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                    await reply
                return False
            reply.result()
            if stopping.done():  # closed while still counted, before the server stops
                await self._go_away()
                return False
        return True

    async def _reply(self, data: bytes, refusal: ApiError | None) -> None:
        call = CallRecord(
            "WEBSOCKET", route_path(self.websocket.scope), self.websocket.client, data
        )
        with recording(self.call_log, call):
            try:
                if refusal is not None:
                    raise refusal
                await self._converse(data)
            except (asyncio.CancelledError, WebSocketDisconnect):
                call.note_error(ApiError(ErrorKind.CLIENT_CLOSED, "the client left"))
                raise
            except Exception as exc:
                error = from_exception(exc)
                call.note_error(error)
                await self._send_error(error)
            await self.websocket.send_text(EOS)

    async def _converse(self, data: bytes) -> None:
        # Text that does not even start like JSON is the prompt itself, as over HTTP.
        content_type = "application/json" if data.lstrip()[:1] == b"{" else "text/plain"
        chat, _ = parse_chatllm_body(data, content_type)
        given = chat.model_fields_set
        system_prompt = chat.system_prompt if "system_prompt" in given else self.system_prompt
        history = chat.history if "history" in given else self.history
        if not chat.text and given & {"system_prompt", "history"}:
            self.system_prompt, self.history = system_prompt, history
            return
        chat = chat.model_copy(update={"system_prompt": system_prompt, "history": history})
        prompt_ids, sampling = prepare_chat(self.service, chat)
        _, adapter = self.service.model(chat.model)
        streaming = chat.use_stream_chat is not False  # true unless asked otherwise
        steps = self.service.runner.stream(new_request_id("chatllm"), prompt_ids, sampling, adapter)
        text = ""
        async with aclosing(steps):  # closing it early aborts the request in the engine
            async for step in steps:
                text += step.text
                if streaming and step.text:
                    await self.websocket.send_text(step.text)
        if not streaming:
            await self.websocket.send_text(text)
        self.system_prompt, self.history = system_prompt, [*history, [chat.text, text]]

    async def _send_error(self, error: ApiError) -> None:
        await self.websocket.send_text(orjson.dumps(error.body()).decode())

    async def _go_away(self) -> None:
        await self.websocket.close(GOING_AWAY, "the server is shutting down")
