"""Dockerfile.gpu and deploy/kubernetes.yaml agree with the runtime (no Docker engine or cluster
here, so this is what can be checked): entry point, port, probe paths, grace periods, user, the
settings their environment names, and the packages the image copies."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from runtime.api.health import LIVENESS_PATHS, READINESS_PATHS
from runtime.config import ENV_PREFIX, SETTINGS, LifecycleConfig, ServerConfig
from runtime.lifecycle import ENGINE_SHUTDOWN_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [
        line
        for line in (ROOT / "Dockerfile.gpu").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.strip().partition(" ") for line in joined.splitlines())
        if word
    ]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict]:
    documents = list(yaml.safe_load_all((ROOT / "deploy/kubernetes.yaml").read_text()))
    return {document["kind"]: document for document in documents}


@pytest.fixture(scope="module")
def pod(manifest) -> dict:
    return manifest["Deployment"]["spec"]["template"]["spec"]


def container_env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container["env"]}


def test_the_image_runs_serve_on_the_default_port_as_a_user():
    instructions = dict(dockerfile_instructions())  # the last of each kind
    assert json.loads(instructions["ENTRYPOINT"]) == ["llm-runtime", "serve"]
    assert instructions["EXPOSE"] == str(ServerConfig().port)
    assert dockerfile_env()["LLM_RUNTIME_PORT"] == str(ServerConfig().port)
    assert dockerfile_env()["LLM_RUNTIME_HOST"] == "0.0.0.0"
    assert instructions["STOPSIGNAL"] == "SIGTERM"
    assert "/health" in instructions["HEALTHCHECK"]
    assert "/health" in LIVENESS_PATHS
    assert instructions["USER"].split(":")[0] not in ("root", "0")
    assert instructions["FROM"].startswith("nvidia/cuda:")


def test_the_image_installs_every_package_and_official_vllm():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {
        args.split()[0] for instruction, args in dockerfile_instructions() if instruction == "COPY"
    }
    assert packages <= copied, f"the image lacks {packages - copied}"
    assert any(
        dep.startswith("vllm") for dep in pyproject["project"]["optional-dependencies"]["gpu"]
    )
    assert any('".[gpu]"' in args for i, args in dockerfile_instructions() if i == "RUN")


def test_environment_names_only_real_settings(pod):
    (container,) = pod["containers"]
    names = [*dockerfile_env(), *container_env(container)]
    for name in names:
        if name.startswith(ENV_PREFIX):
            assert name[len(ENV_PREFIX) :].lower() in SETTINGS, name


def test_probes_use_the_runtimes_paths_and_port(manifest, pod):
    (container,) = pod["containers"]
    (port,) = container["ports"]
    assert port["containerPort"] == ServerConfig().port
    assert container_env(container)["LLM_RUNTIME_PORT"]["value"] == str(port["containerPort"])
    for probe, paths in (
        ("startupProbe", LIVENESS_PATHS),  # /health is 200 while the model loads
        ("livenessProbe", LIVENESS_PATHS),
        ("readinessProbe", READINESS_PATHS),
    ):
        check = container[probe]["httpGet"]
        assert check["path"] in paths, probe
        assert check["port"] in (port["name"], port["containerPort"]), probe
    (service_port,) = manifest["Service"]["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])
    selector = manifest["Service"]["spec"]["selector"]
    assert (
        selector.items() <= manifest["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    )


def test_termination_grace_outlasts_the_drain(pod):
    (container,) = pod["containers"]
    env = container_env(container)
    grace = float(
        env.get("LLM_RUNTIME_GRACE_PERIOD", {}).get("value", LifecycleConfig().grace_period)
    )
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + grace + ENGINE_SHUTDOWN_TIMEOUT_S
    assert pod["terminationGracePeriodSeconds"] > needed


def test_gpu_shared_memory_token_and_model_volume(pod):
    (container,) = pod["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    env = container_env(container)
    assert env["LLM_RUNTIME_TOKEN"]["valueFrom"]["secretKeyRef"]["key"]
    assert "value" not in env["LLM_RUNTIME_TOKEN"]  # never inline
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    shm = volumes[mounts["/dev/shm"]["name"]]["emptyDir"]
    assert shm["medium"] == "Memory"
    assert shm["sizeLimit"]
    model_path = env["LLM_RUNTIME_MODEL_PATH"]["value"]
    assert model_path == dockerfile_env()["LLM_RUNTIME_MODEL_PATH"]
    assert mounts[model_path]["readOnly"] is True
    user = dict(dockerfile_instructions())["USER"].split(":")[0]
    assert pod["securityContext"]["runAsUser"] == int(user)
