"""Token auth (PROTOCOLS §1) and the first form of the probes."""

from __future__ import annotations

import pytest

from runtime.auth import token_matches
from tests.unit.conftest import TOKEN


@pytest.mark.parametrize("header", [TOKEN, f"Bearer {TOKEN}", f"bearer {TOKEN}"])
def test_raw_and_bearer_tokens_are_accepted(auth_client, header):
    response = auth_client.get("/v1/models", headers={"Authorization": header})
    assert response.status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "wrong"}, {"Authorization": "Bearer "}])
def test_missing_or_wrong_token_is_401_json(auth_client, headers):
    for path, method in (("/", "post"), ("/v1/models", "get"), ("/v1/completions", "post")):
        response = getattr(auth_client, method)(path, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        assert TOKEN not in response.text


def test_probes_stay_open_with_a_token(auth_client):
    assert auth_client.get("/health").status_code == 200
    assert auth_client.get("/ready").json() == {"status": "ready"}


def test_token_comparison_rejects_prefixes_and_suffixes():
    assert token_matches("abc", "abc")
    assert not token_matches("ab", "abc")
    assert not token_matches("abcd", "abc")
    assert not token_matches(None, "abc")


def test_not_ready_answers_503_with_retry_after(fake):
    from runtime.phase import Phase
    from tests.unit.conftest import ServedClient, served_app

    client = ServedClient(served_app(fake, ready=False))
    for phase in (Phase.INSTALLING, Phase.LOADING, Phase.WARMING_UP):
        client.served.parts.status.phase = phase
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["phase"] == phase.value
        response = client.post("/v1/completions", json={"prompt": "x"})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert phase.value in response.json()["error"]["message"]
