"""/metrics under vLLM's names, read back with Prometheus' own parser, and /info."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from runtime.phase import Phase
from tests.unit.conftest import make_client
from tests.unit.fake_processor import FakeProcessor


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


ENGINE = {"model_name": "fake-model", "engine": "0"}


def test_token_and_request_counters_follow_the_traffic(fake):
    client = make_client(fake)
    client.post("/v1/completions", json={"prompt": "one two", "max_tokens": 3})
    client.post("/", json={"prompt": "x", "max_new_tokens": 5, "use_stream_chat": True})
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, "stop": "w1"})
    samples = scrape(client)
    assert value(samples, "vllm:generation_tokens_total", **ENGINE) == 11
    prompt_tokens = sum(len(r.prompt_token_ids) for r in fake.requests)
    assert value(samples, "vllm:prompt_tokens_total", **ENGINE) == prompt_tokens
    assert value(samples, "vllm:request_success_total", finished_reason="length", **ENGINE) == 3
    assert value(samples, "vllm:time_to_first_token_seconds_count", **ENGINE) == 3
    assert value(samples, "vllm:e2e_request_latency_seconds_count", **ENGINE) == 3
    assert value(samples, "vllm:inter_token_latency_seconds_count", **ENGINE) == 11 - 3
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    ):
        assert (name, tuple(sorted(ENGINE.items()))) in samples
    assert (
        value(
            samples,
            "llm_runtime_http_requests_total",
            route="/v1/completions",
            method="POST",
            status="200",
        )
        == 2
    )


def test_refusals_timeouts_and_unknown_routes_are_counted(demo_tokenizer):
    client = make_client(
        FakeProcessor(demo_tokenizer, step_delay=0.05), request_timeout=0.1, token="k"
    )
    auth = {"Authorization": "k"}
    assert (
        client.post("/", json={"prompt": "x", "max_new_tokens": 20}, headers=auth).status_code
        == 408
    )
    assert client.post("/", json={"prompt": "x"}).status_code == 401
    client.get("/wp-admin.php", headers=auth)
    client.served.parts.status.phase = Phase.DRAINING
    assert client.post("/", json={"prompt": "x"}, headers=auth).status_code == 503
    samples = scrape(client)  # open without the token, like the probes
    assert value(samples, "llm_runtime_request_timeouts_total") == 1
    assert value(samples, "llm_runtime_requests_rejected_total", reason="not_ready") == 1
    assert value(samples, "llm_runtime_draining") == 1
    assert (
        value(samples, "llm_runtime_http_requests_total", route="/", method="POST", status="401")
        == 1
    )
    assert (
        value(samples, "llm_runtime_http_requests_total", route="other", method="GET", status="404")
        == 1
    )


def test_info_describes_what_is_served_without_the_token(fake):
    client = make_client(fake, token="s3cret-token", auth_health=True)
    assert client.get("/info").status_code == 401
    info = client.get("/info", headers={"Authorization": "s3cret-token"}).json()
    assert info["model"] == {
        "name": "fake-model",
        "path": "/nowhere",
        "max_context": 64,
        "dtype": "float32",
    }
    assert info["processor"] == "fake"
    assert info["phase"] == "ready"
    assert info["config"]["server"]["token"] == "<redacted>"
    assert "s3cret-token" not in str(info)
