"""deploy/grafana/llm-runtime.json queries only metrics that are exported: the runtime's own and
vLLM's names the runtime exports for every processor (here, over the fake processor), and the
few only vLLM's engine exports (checked with the real engine in
tests/integration/test_vllm_operations.py). Also what the runtime does with an engine's own
metrics: served beside its own, one series per name."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from processors.settings import EngineSettings
from runtime.metrics import Metrics
from tests.unit.conftest import make_client

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "llm-runtime.json"
METRIC = re.compile(r"\b(vllm:[a-z0-9_:]+|llm_runtime_[a-z0-9_]+)")
SUFFIXES = ("_bucket", "_count", "_sum", "_total")
# What only vLLM's engine exports; the dashboard says the last two need --engine-request-stats.
ENGINE_ONLY = {
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:num_preemptions",
    "vllm:request_queue_time_seconds",
}


def panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found += [panel, *panel.get("panels", [])]
    return found


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    variables = dashboard["templating"]["list"]
    return queries + [v["definition"] for v in variables if "definition" in v]


def family(sample_name: str) -> str:
    for suffix in SUFFIXES:
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name


def dashboard_metrics() -> set[str]:
    return {family(name) for query in dashboard_queries() for name in METRIC.findall(query)}


def exported(metrics_text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(metrics_text)}


def test_every_dashboard_metric_is_exported(fake):
    client = make_client(fake)
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 10**6})  # a 400
    runtime = exported(client.get("/metrics").text)
    wanted = dashboard_metrics()
    assert wanted - runtime == ENGINE_ONLY, "the dashboard queries a metric nobody exports"
    # Rejections, timeouts, drains, queue depth and the engine's load are all there.
    assert {
        "llm_runtime_requests_rejected",
        "llm_runtime_request_timeouts",
        "llm_runtime_draining",
        "llm_runtime_queue_items",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds",
    } <= wanted


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    (source,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert source["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]
    assert all("$__rate_interval" in q for q in dashboard_queries() if "rate(" in q)


def vllm_like_registry() -> CollectorRegistry:
    """A registry as vLLM fills prometheus_client's default one: a scheduler-level metric, a
    per-request one, and one the runtime exports itself under the same name."""
    registry = CollectorRegistry()
    labels = ("model_name", "engine")
    Counter("vllm:prefix_cache_queries", "q", labels, registry=registry).labels("m", "0").inc(4)
    Histogram("vllm:request_queue_time_seconds", "t", labels, registry=registry)
    Gauge("vllm:num_requests_running", "r", labels, registry=registry).labels("m", "0").set(9)
    Gauge("python_info_like", "not vLLM's", registry=registry).set(1)
    return registry


def test_vllm_metrics_join_the_runtimes_without_doubling_a_name():
    from processors.vllm_processor import VllmProcessor

    registry = vllm_like_registry()
    metrics = Metrics()
    metrics.set_model_name("m")
    processor = VllmProcessor(EngineSettings(model_path="/m", engine_request_stats=True))
    metrics.add_engine_families(lambda: processor.metric_families(registry))
    text = metrics.render(None, 0, False).decode()
    families = exported(text)
    assert {"vllm:prefix_cache_queries", "vllm:request_queue_time_seconds"} <= families
    assert "python_info_like" not in families  # only vLLM's
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1  # the runtime's series
    assert 'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 4.0' in text


def test_per_request_vllm_metrics_are_left_out_while_vllm_keeps_no_request_stats():
    from processors.vllm_processor import VllmProcessor

    registry = vllm_like_registry()
    lean = VllmProcessor(EngineSettings(model_path="/m"))  # the default: no request stats
    assert [f.name for f in lean.metric_families(registry)] == [
        "vllm:prefix_cache_queries",
        "vllm:num_requests_running",
    ]
