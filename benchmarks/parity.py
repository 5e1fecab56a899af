"""The same `vllm serve` client requests against vLLM's own server and this runtime, one server
at a time, on the same model and flags, greedy: do they give the same tool calls and the same
JSON? Prints a table and writes it next to the other results (a recorded comparison).

    python -m benchmarks.parity                   # SmolLM2-135M-Instruct, the default model
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.compare import RESULTS, _prepared_model
from benchmarks.servers import EngineSettings, running_server

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]
CITY = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
    "required": ["name", "country"],
}
REQUESTS: dict[str, dict[str, Any]] = {
    "named tool": {
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    },
    "required tool": {"messages": ASK, "tools": [WEATHER], "tool_choice": "required"},
    "json_schema": {
        "messages": [{"role": "user", "content": "Give me a city in France as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}},
    },
    "choice": {
        "messages": [{"role": "user", "content": "Is Paris in France? yes or no"}],
        "structured_outputs": {"choice": ["yes", "no"]},
    },
    "regex": {
        "messages": [{"role": "user", "content": "In which year was the Eiffel Tower built?"}],
        "structured_outputs": {"regex": "[0-9]{4}"},
    },
}
FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes")


def answers(base_url: str, model: str) -> dict[str, Any]:
    import requests

    found = {}
    for name, body in REQUESTS.items():
        payload = {"model": model, "temperature": 0, "max_tokens": 80, **body}
        response = requests.post(f"{base_url}/v1/chat/completions", json=payload, timeout=600)
        if response.status_code != 200:
            found[name] = {"status": response.status_code, "error": response.text[:200]}
            continue
        message = response.json()["choices"][0]["message"]
        calls = [
            (call["function"]["name"], json.loads(call["function"]["arguments"]))
            for call in message.get("tool_calls") or []
        ]
        found[name] = {"content": message.get("content"), "tool_calls": calls}
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2")
    args = parser.parse_args()
    folder, served = _prepared_model(args.model)
    # float32: vLLM's compiled bfloat16 path answers nonsense on CPUs without bf16 arithmetic.
    settings = EngineSettings(
        folder,
        served_model_name=served,
        max_num_seqs=4,
        max_model_len=4096,
        dtype="float32",
        extra_args=FLAGS,
    )
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = RESULTS / "logs" / f"{stamp}-parity"
    found = {}
    for kind in ("vllm", "ours"):
        print(f"{kind}: starting", flush=True)
        with running_server(kind, settings, work / f"{kind}.log", env) as (url, _, _):
            found[kind] = answers(url, served)
    lines = ["| request | same | vLLM's server | this runtime |", "|---|---|---|---|"]
    for name in REQUESTS:
        theirs, ours = found["vllm"][name], found["ours"][name]
        same = "yes" if theirs == ours else "NO"
        lines.append(f"| {name} | {same} | `{json.dumps(theirs)}` | `{json.dumps(ours)}` |")
    table = "\n".join(lines)
    date = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    heading = f"{date}: {served}, greedy, float32, both with {' '.join(FLAGS)}"
    path = Path(RESULTS) / f"{stamp}-parity.md"
    path.write_text(f"{heading}\n\n{table}\n")
    print(f"\n{heading}\n\n{table}\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
