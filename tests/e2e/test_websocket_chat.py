"""ChatLLM over WebSocket against the real server, spoken by `websocket-client` (the client most
of the platform's users have), from several processes at once."""

from __future__ import annotations

import json
import multiprocessing

import pytest
import requests
import websocket

from tests.e2e.conftest import EOS, SERVICE_NAME, Server, ask

NUM_PROCESSES = 4
ROUNDS = 3


def chat_in_a_process(url: str, token: str, path: str, index: int) -> list[list[str]]:
    """A multi-round chat on its own connection (in a child process): each round's messages."""
    ws = websocket.create_connection(
        url.replace("http://", "ws://") + path, header={"Authorization": token}, timeout=120
    )
    try:
        ws.send(json.dumps({"system_prompt": f"You are assistant {index}."}))
        answers = [[ws.recv()]]  # just <EOS>
        for round_ in range(ROUNDS):
            request = {"prompt": f"Round {round_}", "max_new_tokens": 8, "do_sample": False}
            if round_ == 1:
                request["use_stream_chat"] = False
            answers.append(ask(ws, request))
        ws.ping(b"still there?")
        for _ in range(3):  # the server answers pings (a keepalive ping of its own may come first)
            opcode, frame = ws.recv_data_frame(True)
            if opcode == websocket.ABNF.OPCODE_PONG:
                answers.append(["pong", frame.data.decode()])
                break
    finally:
        ws.close()
    return answers


def test_multi_round_chats_from_several_processes_at_once(server: Server):
    paths = ["/", f"/api/predict/{SERVICE_NAME}"]
    jobs = [(server.url, server.token, paths[i % 2], i) for i in range(NUM_PROCESSES)]
    with multiprocessing.get_context("spawn").Pool(NUM_PROCESSES) as pool:
        results = pool.starmap(chat_in_a_process, jobs, chunksize=1)
    for system_prompt_answer, *rounds, pong in results:
        assert system_prompt_answer == [EOS]
        assert len(rounds) == ROUNDS
        for messages in rounds:
            assert messages, "every round has an answer"
            assert all(messages), "every message carries text"
            assert not any(message.startswith('{"error"') for message in messages)
        assert len(rounds[1]) == 1  # use_stream_chat false: the whole answer at once
        assert pong == ["pong", "still there?"]


def test_the_connection_keeps_the_conversation_as_http_history_would(server: Server):
    ws = server.websocket(f"/api/predict/{SERVICE_NAME}")
    greedy = {"max_new_tokens": 8, "do_sample": False}
    try:
        first = "".join(ask(ws, {"prompt": "Hello", **greedy}))
        second = "".join(ask(ws, {"prompt": "And then?", **greedy}))
    finally:
        ws.close()
    over_http = requests.post(
        f"{server.url}/",
        json={"prompt": "And then?", "history": [["Hello", first]], **greedy},
        headers=server.headers(),
        timeout=120,
    ).json()
    assert second
    assert over_http["response"] == second


def test_errors_end_with_eos_and_the_connection_lives_on(server: Server):
    ws = server.websocket()
    try:
        (error,) = ask(ws, {"prompt": "x", "top_p": 5})
        assert json.loads(error)["error"]["code"] == 400
        assert "top_p" in error
        (error,) = ask(ws, {"prompt": "x", "max_new_tokens": 10**6})
        assert "context window" in json.loads(error)["error"]["message"]
        assert ask(ws, {"prompt": "fine", "max_new_tokens": 2, "use_stream_chat": False})
    finally:
        ws.close()


def test_a_wrong_token_is_refused_at_the_handshake_with_401(server: Server):
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        server.websocket(token="wrong")
    assert refused.value.status_code == 401
    assert b"invalid service token" in refused.value.resp_body
