"""Replays warm-up requests before readiness turns 200, answered by the routes' own code.

The file holds JSON lines, one request each, in any served API shape: `{"path": ..., "body":
...}` names the route; a bare body is routed by its fields (`messages` → chat completions,
ChatLLM's own fields → ChatLLM, else `prompt` → completions).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtime.api.answers import Answer
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


async def run_warm_up(answers: Mapping[str, Answer], requests: list[tuple[str, Any]]) -> None:
    """Each request answered by its route's code (`answers`, by path); any answer but 200 stops
    the start."""
    for number, (path, body) in enumerate(requests, 1):
        answer = answers.get(path)
        if answer is None:
            served = ", ".join(sorted(answers))
            raise PrepareError(f"warm-up request {number}: {path} is not served here ({served})")
        data, status = await answer(json.dumps(body).encode(), "application/json")
        if status != 200:
            raise PrepareError(
                f"warm-up request {number} to {path} failed with {status}: "
                f"{data.decode(errors='replace')[:300]}"
            )
    log.info("warm-up: %d requests replayed", len(requests))
