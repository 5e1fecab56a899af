"""The queue's workers while the store comes and goes (Redis restarting): claims wait with
backoff, and a finished result is kept and recorded once the store is back."""

from __future__ import annotations

import logging

import pytest

from runtime.queue.base import QueueUnavailableError
from tests.unit.test_async_api import async_client, enqueue, wait_result, working


class Flaky:
    """A store whose `method` fails `failures` times, as while Redis is away, then works."""

    def __init__(self, store, method: str, failures: int) -> None:
        self.store, self.method, self.failures = store, method, failures

    def __getattr__(self, name: str):
        attribute = getattr(self.store, name)
        if name != self.method:
            return attribute

        async def flaky(*args, **kwargs):
            if self.failures:
                self.failures -= 1
                raise QueueUnavailableError("the queue's Redis at redis://test is unreachable")
            return await attribute(*args, **kwargs)

        return flaky


@pytest.mark.parametrize("method", ["claim", "complete"])
def test_work_goes_on_once_the_store_is_back(fake, tmp_path, caplog, method):
    caplog.set_level(logging.INFO, "runtime.queue.workers")
    client = async_client(fake, tmp_path)
    workers = client.served.parts.queue
    flaky = Flaky(workers.store, method, failures=3)
    workers.attach(flaky)
    with working(client):
        request_id = enqueue(client, b'{"prompt": "x", "max_new_tokens": 2}')
        frame = wait_result(client, request_id)
    assert frame["tags"]["lastCode"] == "200"
    assert flaky.failures == 0
    assert "failed, retrying: the queue's Redis at redis://test is unreachable" in caplog.text
    assert "works again" in caplog.text
