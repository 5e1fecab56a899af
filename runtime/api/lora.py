"""`POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter`, as vLLM serves them with
runtime LoRA updating on (--allow-runtime-lora-updating); absent otherwise."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from runtime.api.openai_schema import OpenAIBody
from runtime.errors import ApiError, ErrorKind
from runtime.service import AdmittedLlm, LlmService


class LoadAdapter(OpenAIBody):
    lora_name: str
    lora_path: str


class UnloadAdapter(OpenAIBody):
    lora_name: str


def lora_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/load_lora_adapter", summary="load a LoRA adapter clients then name")
    async def load(body: LoadAdapter, service: AdmittedLlm) -> Response:
        await _adapters(service).load(body.lora_name, body.lora_path)
        message = f"Success: LoRA adapter '{body.lora_name}' added successfully."
        return Response(message, media_type="text/plain")

    @router.post("/unload_lora_adapter", summary="unload a LoRA adapter")
    async def unload(body: UnloadAdapter, service: AdmittedLlm) -> Response:
        _adapters(service).unload(body.lora_name)
        message = f"Success: LoRA adapter '{body.lora_name}' removed successfully."
        return Response(message, media_type="text/plain")

    return router


def _adapters(service: LlmService):  # -> AdapterRegistry
    if service.adapters is None:
        raise ApiError(ErrorKind.NOT_FOUND, "this server serves no LoRA adapters")
    return service.adapters
