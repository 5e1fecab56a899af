"""The chat web page's routes: where it is served, what auth lets through, and how it is set."""

from __future__ import annotations

import json
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from starlette.testclient import WebSocketDenialResponse

from runtime.cli import build_parser
from runtime.config import load_config
from tests.unit.conftest import TOKEN, make_client
from tests.unit.test_custom_processor import ECHO, serve_custom

ROOT = Path(__file__).resolve().parents[2]
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture
def webui_client(fake):
    return make_client(fake, webui=True, token=TOKEN)


def test_the_page_is_served_at_webui_without_the_token(webui_client):
    response = webui_client.get("/webui")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text
    assert "v1/chat/completions" in page
    assert "v1/models" in page
    assert "AbortController" in page
    assert "Authorization" in page
    assert "://" not in page  # nothing is loaded from elsewhere (no CDN)


def test_a_browser_asking_for_get_root_gets_the_page(webui_client):
    response = webui_client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert response.status_code == 200
    assert response.content == webui_client.get("/webui").content


def test_get_root_without_html_is_still_method_not_allowed(webui_client, fake):
    plain = make_client(fake)
    for client in (webui_client, plain):
        response = client.get("/", headers={"Accept": "application/json"})
        assert response.status_code == 405
        assert "error" in response.json()


def test_post_root_stays_the_chatllm_api_and_keeps_its_token(webui_client):
    assert webui_client.post("/", json={"prompt": "hi"}).status_code == 401
    response = webui_client.post(
        "/",
        json={"prompt": "hi", "max_new_tokens": 4},
        headers={"Authorization": TOKEN, "Accept": BROWSER_ACCEPT},
    )
    assert response.status_code == 200
    assert set(response.json()) == {"response", "history", "usage"}


def test_only_the_page_is_open_without_the_token(webui_client):
    for method, path in (
        ("get", "/v1/models"),
        ("post", "/v1/chat/completions"),
        ("get", "/info"),
        ("get", "/webui/x"),
        ("post", "/webui"),
    ):
        response = getattr(webui_client, method)(path)
        assert response.status_code == 401, (method, path)
    with pytest.raises(WebSocketDenialResponse) as refused:
        webui_client.websocket_connect("/").__enter__()
    assert refused.value.status_code == 401  # a WebSocket on / is not the page: token required


def test_the_page_is_404_when_not_enabled(fake):
    client = make_client(fake)
    assert client.get("/webui").status_code == 404
    assert client.get("/", headers={"Accept": BROWSER_ACCEPT}).status_code == 405


def test_a_custom_processor_serves_no_page():
    client = serve_custom(ECHO, webui=True)
    assert client.get("/webui").status_code == 404
    assert client.post("/", content=b"hi").json()["echo"] == "HI"


def test_webui_from_flag_env_and_service_json(tmp_path):
    args = vars(build_parser().parse_args(["serve", "--webui"]))
    assert args["webui"] is True
    assert load_config({}, {"LLM_RUNTIME_WEBUI": "1"}).server.webui
    service = tmp_path / "service.json"
    service.write_text(json.dumps({"metadata": {"enable_webservice": True}}))
    config = load_config({}, {}, str(service))
    assert config.server.webui
    assert config.ignored_keys == ()
    assert not load_config({}, {}).server.webui


def test_the_page_is_package_data():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["runtime"]
    assert any(fnmatch("static/webui.html", pattern) for pattern in patterns)
