"""The platform's ChatLLM and BladeLLM protocols against the real server, with `requests`."""

from __future__ import annotations

import json
from itertools import pairwise

import requests

from tests.e2e.conftest import SERVICE_NAME


def post(server, path, **kwargs):
    return requests.post(f"{server.url}{path}", headers=server.headers(), timeout=120, **kwargs)


def test_chatllm_stream_is_cumulative_nul_delimited_json(server):
    request = {
        "prompt": "How are you?",
        "system_prompt": "Be kind.",
        "history": [["Hi", "Hey"]],
        "max_new_tokens": 10,
        "temperature": 0,
        "use_stream_chat": True,
    }
    with post(server, f"/api/predict/{SERVICE_NAME}", json=request, stream=True) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        records = [json.loads(line) for line in response.iter_lines(delimiter=b"\0") if line]
    texts = [r["response"] for r in records]
    assert len(texts) >= 2
    assert all(later.startswith(earlier) for earlier, later in pairwise(texts))
    final = records[-1]
    assert final["history"] == [["Hi", "Hey"], ["How are you?", texts[-1]]]
    assert final["usage"]["completion_tokens"] == 10
    whole = post(server, "/", json={**request, "use_stream_chat": False}).json()
    assert whole["response"] == texts[-1]


def test_plain_text_body_gets_one_json_answer(server):
    response = post(server, "/", data=b"Hello from curl")
    assert response.status_code == 200
    body = response.json()
    assert body["history"] == [["Hello from curl", body["response"]]]
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


def test_bladellm_stream_string_flag_with_usage_on_every_chunk(server):
    request = {"prompt": "The engine", "max_tokens": 6, "temperature": 0, "stream": "true"}
    with post(server, "/v1/completions", json=request, stream=True) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    chunks = [json.loads(line.removeprefix(b"data: ")) for line in lines[:-1]]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] == "" for c in chunks[:-1])
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts)
    assert counts[-1] == 6
    assert all(c["error_info"] is None and c["object"] == "text_completion" for c in chunks)


def test_greedy_text_is_the_same_across_the_three_apis(server, demo_tokenizer):
    prompt = "Write a story"
    chatllm = post(
        server, "/", json={"prompt": prompt, "max_new_tokens": 12, "do_sample": False}
    ).json()["response"]
    chat = post(
        server,
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 12,
            "temperature": 0,
        },
    ).json()["choices"][0]["message"]["content"]
    rendered = demo_tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    completion = post(
        server,
        "/v1/completions",
        json={
            "prompt": rendered,
            "max_tokens": 12,
            "temperature": 0,
        },
    ).json()["choices"][0]["text"]
    assert chatllm == chat == completion
    assert len(chatllm) > 0


def test_missing_and_wrong_tokens_are_401_raw_and_bearer_accepted(server):
    url = f"{server.url}/api/predict/{SERVICE_NAME}"
    body = {"prompt": "x", "max_new_tokens": 1}
    assert requests.post(url, json=body, timeout=30).status_code == 401
    wrong = requests.post(url, json=body, headers={"Authorization": "nope"}, timeout=30)
    assert wrong.status_code == 401
    assert "error" in wrong.json()
    for header in (server.token, f"Bearer {server.token}"):
        ok = requests.post(url, json=body, headers={"Authorization": header}, timeout=30)
        assert ok.status_code == 200


def test_bad_sampling_values_are_400_naming_the_field(server):
    for body, field in (
        ({"prompt": "x", "top_p": 2}, "top_p"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
    ):
        response = post(server, "/", json=body)
        assert response.status_code == 400
        assert field in response.json()["error"]["message"]


def test_health_and_ready_are_open(server):
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/ready", timeout=10).json() == {"status": "ready"}


def test_service_json_was_honoured(server):
    log = server.log()
    assert "service JSON keys ignored" in log
    assert "containers.0.image" in log
    assert "enable_webservice" not in log  # honoured: the web page is served
    assert server.token not in log  # the token never reaches the logs
    # Start-up is not silent: each phase is logged with the seconds since start.
    progress = [line for line in log.splitlines() if "start-up:" in line or " still " in line]
    assert any("start-up: loading model" in line for line in progress)
    print("\n" + "\n".join(progress))
