"""Replays warm-up requests through the app itself before readiness turns 200.

The file holds JSON lines, one request each, in any served API shape: `{"path": ..., "body":
...}` names the route; a bare body is routed by its fields (`messages` → chat completions,
ChatLLM's own fields → ChatLLM, else `prompt` → completions).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx

from runtime.admission import WARM_UP_HEADER
from runtime.prepare import PrepareError

log = logging.getLogger(__name__)

CHATLLM_FIELDS = {"max_new_tokens", "use_stream_chat", "history", "system_prompt", "input_ids"}


def read_warm_up(path: str | Path, service_name: str) -> list[tuple[str, Any]]:
    """(route, body) for each line; a clear error for a missing file or a bad line."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise PrepareError(f"cannot read the warm-up file {path}: {exc.strerror}") from exc
    requests = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise PrepareError(f"warm-up file {path}, line {number}: not JSON ({exc})") from exc
        if not isinstance(item, dict):
            raise PrepareError(f"warm-up file {path}, line {number}: expected a JSON object")
        requests.append(_route(item, service_name))
    if not requests:
        raise PrepareError(f"the warm-up file {path} holds no requests")
    return requests


def _route(item: dict, service_name: str) -> tuple[str, Any]:
    if "path" in item and "body" in item:
        return str(item["path"]), item["body"]
    if "messages" in item:
        return "/v1/chat/completions", item
    if CHATLLM_FIELDS & item.keys() or "prompt" not in item:
        return f"/api/predict/{service_name}", item
    return "/v1/completions", item


async def run_warm_up(
    app: Any, requests: list[tuple[str, Any]], key: str, token: str | None
) -> None:
    headers = {WARM_UP_HEADER: key}
    if token:
        headers["Authorization"] = token
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://warm-up") as client:
        for number, (path, body) in enumerate(requests, 1):
            response = await client.post(path, json=body, headers=headers, timeout=None)
            if response.status_code != 200:
                raise PrepareError(
                    f"warm-up request {number} to {path} failed with {response.status_code}: "
                    f"{response.text[:300]}"
                )
    log.info("warm-up: %d requests replayed", len(requests))
