"""The platform SDK's queue API over the in-process app (SQLite store): attributes, get by index,
search, delete, truncate, commit, put on the sink, and the watch with its window."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from starlette.websockets import WebSocketDisconnect

from runtime.api.queue import PRIORITY_HEADER
from runtime.api.queue_watch import Watcher
from runtime.queue.base import Stream
from tests.queue_protos import queue_messages
from tests.unit.test_async_api import async_client, enqueue, working

INPUT = "/api/predict/demo"
SINK = "/api/predict/demo/sink"
PROTOBUF = {"Accept": "application/vnd.google.protobuf"}


def put(client, data: bytes, **tags: str) -> tuple[int, str]:
    response = client.post(SINK, content=data, params=tags)
    assert response.status_code == 200, response.text
    return int(response.text), response.headers["X-Eas-Queueservice-Request-Id"]


def attributes(client, path: str = SINK) -> dict:
    response = client.get(path, params={"_attrs_": "true"})
    assert response.status_code == 200, response.text
    return response.json()


def test_attributes_use_the_platforms_names_in_json_and_protobuf(fake, tmp_path):
    client = async_client(fake, tmp_path, max_queue_size=10)  # no workers: items wait
    assert attributes(client, INPUT)["stream.length"] == "0"
    assert "stream.lastEntry" not in attributes(client, INPUT)  # an empty queue has none
    first = enqueue(client, b"a")
    enqueue(client, b"b")
    found = attributes(client, INPUT)
    assert found["meta.name"] == "demo"
    assert found["meta.backend"] == "sqlite"
    assert found["meta.header.user"] == "X-EAS-QueueService-Redis-Uid"
    assert (found["stream.length"], found["stream.approxMaxLength"]) == ("2", "10")
    assert int(found["stream.lastEntry"]) == int(found["stream.firstEntry"]) + 1
    assert first
    proto = client.get(SINK, params={"_attrs_": "true"}, headers=PROTOBUF)
    decoded = queue_messages()["AttributesProto"].FromString(proto.content)
    assert dict(decoded.attributes) == attributes(client, SINK)
    assert decoded.attributes["meta.name"] == "demo/sink"


def test_get_by_index_with_length_auto_delete_and_protobuf(fake, tmp_path):
    client = async_client(fake, tmp_path)
    indexes = [put(client, f"r{i}".encode(), n=str(i))[0] for i in range(4)]
    two = client.get(SINK, params={"_index_": indexes[1], "_length_": "2"})
    assert [base64.b64decode(f["data"]) for f in two.json()] == [b"r1", b"r2"]
    tagged = client.get(SINK, params={"_index_": "0", "_length_": "5", "n": "3"})
    assert [frame["index"] for frame in tagged.json()] == [indexes[3]]  # tags filter
    taken = client.get(
        SINK, params={"_index_": "0", "_length_": "1", "_auto_delete_": "true"}, headers=PROTOBUF
    )
    (frame,) = queue_messages()["DataFrameListProto"].FromString(taken.content).index
    assert (frame.index, frame.data, frame.tags["n"]) == (indexes[0], b"r0", "0")
    assert attributes(client)["stream.firstEntry"] == str(indexes[1])  # it was deleted
    empty = client.get(SINK, params={"_index_": indexes[3] + 1, "_timeout_": "10ms"})
    assert empty.status_code == 204


def test_a_get_waits_for_the_result_to_arrive(fake, tmp_path):
    with working(async_client(fake, tmp_path)) as client:
        request_id = enqueue(client, b'{"prompt": "x", "max_new_tokens": 2}')
        response = client.get(SINK, params={"_index_": "0", "_timeout_": "20s"})
    (frame,) = response.json()
    assert frame["tags"]["requestId"] == request_id


def test_search_says_how_many_wait_ahead(fake, tmp_path):
    client = async_client(fake, tmp_path)  # no workers: items wait
    enqueue(client, b"first")
    second = client.post(INPUT, content=b"second")
    urgent = client.post(INPUT, content=b"urgent", headers={PRIORITY_HEADER: "5"})
    search = {"_search_": "true"}
    assert client.get(INPUT, params={**search, "_index_": second.text}).json() == {
        "IsPending": True,
        "WaitCount": 2,  # the first, and the urgent one that jumped the line
    }
    assert client.get(INPUT, params={**search, "_index_": urgent.text}).json()["WaitCount"] == 0
    assert client.get(INPUT, params={**search, "_index_": "999"}).status_code == 404
    index, _ = put(client, b"r")
    assert client.get(SINK, params={**search, "_index_": index}).json()["IsPending"] is False


def test_delete_truncate_and_commit_answer_ok_and_remove_entries(fake, tmp_path):
    client = async_client(fake, tmp_path)
    indexes = [put(client, b"r")[0] for _ in range(6)]
    deleted = client.delete(SINK, params={"_indexes_": f"{indexes[0]},{indexes[1]}"})
    assert (deleted.status_code, deleted.text) == (200, "OK")
    committed = client.put(SINK, params={"_indexes_": str(indexes[5])})
    assert (committed.status_code, committed.text) == (200, "OK")
    assert attributes(client)["stream.length"] == "3"
    truncated = client.delete(SINK, params={"_index_": indexes[4], "_trunc_": "true"})
    assert truncated.status_code == 200
    assert attributes(client)["stream.length"] == "1"  # only index 4 is left
    waiting = client.post(INPUT, content=b"never mind")
    client.delete(INPUT, params={"_indexes_": waiting.text})
    assert attributes(client, INPUT)["stream.length"] == "0"


@pytest.mark.parametrize(
    ("method", "path", "params", "named"),
    [
        ("delete", SINK, {"_indexes_": "1,x"}, "_indexes_"),
        ("put", SINK, {}, "_indexes_"),
        ("delete", SINK, {"_trunc_": "true"}, "_index_"),
        ("get", SINK, {"_index_": "-1"}, "_index_"),
        ("get", SINK, {"_index_": str(2**64)}, "_index_"),
        ("delete", INPUT, {"_indexes_": str(2**70)}, "_indexes_"),
        ("get", INPUT, {"_search_": "true"}, "_index_"),
        ("get", SINK, {"_index_": "0", "_timeout_": "soon"}, "_timeout_"),
        ("post", INPUT, {"_priority_": "high"}, "_priority_"),
    ],
)
def test_bad_queue_parameters_are_a_400_naming_them(fake, tmp_path, method, path, params, named):
    client = async_client(fake, tmp_path)
    response = getattr(client, method)(path, params=params)
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]["message"]


def test_a_put_on_the_sink_is_read_back_by_request_id(fake, tmp_path):
    client = async_client(fake, tmp_path)
    index, request_id = put(client, b"abc", user="u")
    (frame,) = client.get(SINK, params={"requestId": request_id}).json()
    assert (frame["index"], base64.b64decode(frame["data"])) == (index, b"abc")
    assert frame["tags"] == {"user": "u", "requestId": request_id}


def test_a_watch_with_auto_commit_pushes_each_frame_once_and_empties_the_sink(fake, tmp_path):
    client = async_client(fake, tmp_path)
    sent = [put(client, f"{i}".encode())[0] for i in range(3)]
    frame_class = queue_messages()["DataFrameProto"]
    query = "?_watch_=true&_index_=0&_window_=5&_index_only_=false&_auto_commit_=true"
    with client.websocket_connect(SINK + query, headers=PROTOBUF) as ws:
        frames = [frame_class.FromString(ws.receive_bytes()) for _ in range(3)]
        deadline = time.monotonic() + 10
        while attributes(client)["stream.length"] != "0":
            assert time.monotonic() < deadline, "auto-committed frames stayed in the sink"
    assert [frame.index for frame in frames] == sent
    assert [frame.data for frame in frames] == [b"0", b"1", b"2"]


def test_a_websocket_that_does_not_watch_is_refused(fake, tmp_path):
    client = async_client(fake, tmp_path)
    with pytest.raises(WebSocketDisconnect), client.websocket_connect(SINK) as ws:
        ws.receive_bytes()


class Socket:
    """What a watcher sends, collected."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)


def test_the_window_holds_uncommitted_frames_back_until_they_are_committed(fake, tmp_path):
    client = async_client(fake, tmp_path)
    indexes = [put(client, b"r")[0] for _ in range(5)]
    workers = client.served.parts.queue
    socket = Socket()
    watcher = Watcher(
        socket, workers.store, workers, Stream.SINK, 0, 2,
        index_only=True, auto_commit=False, wanted={}, as_json=False,
    )  # fmt: skip

    async def scenario():
        sent = [await watcher.send_more(), await watcher.send_more()]
        await workers.store.delete(Stream.SINK, [indexes[0]])  # the client commits one
        sent += [await watcher.send_more(), await watcher.send_more()]
        return sent

    assert asyncio.run(scenario()) == [2, 0, 1, 0]
    frames = [queue_messages()["DataFrameProto"].FromString(data) for data in socket.sent]
    assert [frame.index for frame in frames] == indexes[:3]
    assert {frame.data for frame in frames} == {b""}  # index only


def test_the_go_sdks_priority_header_jumps_the_line(fake, tmp_path):
    client = async_client(fake, tmp_path)  # no workers: the test claims
    enqueue(client, b"normal")
    urgent = enqueue(client, b"urgent", headers={PRIORITY_HEADER: "1"})
    (first,) = asyncio.run(client.served.parts.queue.store.claim())
    assert first.request_id == urgent
