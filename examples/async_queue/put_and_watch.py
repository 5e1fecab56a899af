"""The platform's asynchronous-inference example, with its Python SDK (eas-prediction's
QueueClient): put requests into the input queue, then watch the sink for their results.

    pip install --no-deps eas-prediction==0.36 && pip install python-snappy websocket-client
    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python \\
        python examples/async_queue/put_and_watch.py 127.0.0.1:8000 my_service --token T

(The SDK pins protobuf<=3.20.3; its generated code also runs on a current protobuf with the
pure-Python implementation, as above.) Prints one JSON line per request put and per result.
Delivery is at least once: a result tagged `duplicate` repeats one already delivered, and is
skipped here.
"""

import argparse
import json

from eas_prediction import QueueClient


def tags_of(frame) -> dict:
    """The frame's tags: a map under the SDK's own protobuf (3.20); under a current protobuf in
    pure-Python mode the SDK's old generated code gives a list of key/value entries."""
    try:
        return {key: frame.tags[key] for key in frame.tags}
    except TypeError:
        return {entry.key: entry.value for entry in frame.tags}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("endpoint", help="host:port of the runtime (or its load balancer)")
    parser.add_argument("service", help="the service name (--service-name)")
    parser.add_argument("--token", default="", help="the service token, if one is set")
    parser.add_argument("--count", type=int, default=10, help="requests to put")
    parser.add_argument(
        "--priority-every", type=int, default=0, help="put every Nth request with priority"
    )
    args = parser.parse_args()

    input_queue = QueueClient(args.endpoint, args.service)
    input_queue.set_token(args.token)
    input_queue.init()
    for i in range(args.count):
        priority = bool(args.priority_every) and i % args.priority_every == 0
        tags = {"_priority_": "1"} if priority else {}
        index, request_id = input_queue.put(json.dumps({"i": i}), tags)
        print(json.dumps({"put": i, "index": int(index), "requestId": request_id,
                          "priority": priority}), flush=True)  # fmt: skip

    sink_queue = QueueClient(args.endpoint, f"{args.service}/sink")
    sink_queue.set_token(args.token)
    sink_queue.init()
    watcher = sink_queue.watch(0, 5, auto_commit=True)
    received = 0
    for frame in watcher.run():
        tags = tags_of(frame)
        print(json.dumps({"result": frame.index, "tags": tags,
                          "data": frame.data.decode("utf-8", "replace")}), flush=True)  # fmt: skip
        if tags.get("duplicate") == "true":
            continue
        received += 1
        if received == args.count:
            break
    watcher.close()


if __name__ == "__main__":
    main()
