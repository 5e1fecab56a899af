"""LoRA adapters picked by `model` on every API family, listed with their parent, and loaded or
unloaded at run time only when allowed; over the fake processor."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests.unit.conftest import make_client


@pytest.fixture
def adapter_dir(tmp_path):
    folder = tmp_path / "sql-lora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    return folder


@pytest.fixture
def lora_fake(fake):
    fake.info = dataclasses.replace(fake.info, max_adapter_rank=16)
    return fake


def test_an_adapter_is_picked_by_model_on_every_api(lora_fake, adapter_dir):
    client = make_client(lora_fake, lora_modules=[f"sql={adapter_dir}"])
    models = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["parent"]) for m in models] == [("fake-model", None), ("sql", "fake-model")]
    assert models[1]["root"] == str(adapter_dir)
    chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    assert client.post("/v1/chat/completions", json={**chat, "model": "sql"}).status_code == 200
    completion = {"prompt": "x", "max_tokens": 2, "model": "sql"}
    assert client.post("/v1/completions", json=completion).json()["model"] == "sql"
    assert client.post("/", json={"prompt": "x", "max_new_tokens": 2, "model": "sql"}).is_success
    with client.websocket_connect("/") as ws:
        ws.send_text(json.dumps({"prompt": "x", "max_new_tokens": 1, "model": "sql"}))
        while ws.receive_text() != "<EOS>":
            pass
    used = [request.adapter.name if request.adapter else None for request in lora_fake.requests]
    assert used == ["sql"] * 4
    assert [adapter.name for adapter in lora_fake.adapters] == ["sql"]  # loaded at start
    client.post("/v1/completions", json={**completion, "model": "fake-model"})
    assert lora_fake.requests[-1].adapter is None
    missing = client.post("/v1/completions", json={**completion, "model": "nope"})
    assert missing.status_code == 404
    assert "serves fake-model, sql" in missing.json()["error"]["message"]


def test_adapters_load_and_unload_at_run_time_only_when_allowed(lora_fake, adapter_dir):
    closed = make_client(lora_fake)
    body = {"lora_name": "late", "lora_path": str(adapter_dir)}
    assert closed.post("/v1/load_lora_adapter", json=body).status_code == 404
    client = make_client(lora_fake, allow_runtime_lora_updating=True)
    loaded = client.post("/v1/load_lora_adapter", json=body)
    assert loaded.status_code == 200
    assert "added successfully" in loaded.text
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "model": "late"})
    again = client.post("/v1/load_lora_adapter", json=body)
    assert again.status_code == 400
    assert "served already" in again.json()["error"]["message"]
    unloaded = client.post("/v1/unload_lora_adapter", json={"lora_name": "late"})
    assert unloaded.status_code == 200
    gone = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "model": "late"})
    assert gone.status_code == 404
    wrong = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/nope"})
    assert wrong.status_code == 400
    assert "not a PEFT adapter folder" in wrong.json()["error"]["message"]


def test_an_engine_without_lora_cannot_take_runtime_updates(fake):
    import asyncio

    from runtime.app import LlmApp, ServingParts
    from runtime.config import load_config
    from runtime.model_source import ModelSource

    config = load_config({"allow_runtime_lora_updating": True}, {})
    served = LlmApp(ServingParts.for_config(config), fake, ModelSource(config.engine, "fake"))
    with pytest.raises(ValueError, match="needs LoRA in the engine"):
        asyncio.run(served.load())
