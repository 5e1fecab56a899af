"""containers[0].prepare.pythonRequirements in the GPU image's layout, simulated: the image's
environment belongs to root and the runtime runs as uid 10001, so pip cannot write to it (the
start used to fail with a permission error). Here a read-only base environment holds the
project's packages and an old version of a requirement; the runtime, run as an unprivileged
user, installs a newer one at start, and it and its child processes import it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from runtime.prepare import requirements_environment

ROOT = Path(__file__).resolve().parents[2]
IMAGE_UID = 10001  # Dockerfile.gpu's USER
PROBE = "llm_runtime_probe"

START = """
import json, os, subprocess, sys
from runtime.config import PrepareConfig
from runtime.prepare import install_python_requirements

install_python_requirements(PrepareConfig(python_requirements=("llm-runtime-probe==2.0",)))
import llm_runtime_probe
child = subprocess.run(
    [sys.executable, "-c", "import llm_runtime_probe as p; print(p.VERSION, p.__file__)"],
    capture_output=True, text=True, check=True,
)
print(json.dumps({"uid": os.getuid(), "version": llm_runtime_probe.VERSION,
                  "file": llm_runtime_probe.__file__, "child": child.stdout.split()}))
"""


def make_wheel(folder: Path, version: str) -> Path:
    """A pure-Python wheel of the probe package, built by hand (no build backend, no network)."""
    info = f"{PROBE}-{version}.dist-info"
    files = {
        f"{PROBE}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: llm-runtime-probe\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = folder / f"{PROBE}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def reachable_by_anyone(path: Path) -> bool:
    """Whether any user may run `path`: it and every folder above it are open to others."""
    real = path.resolve()
    return all(part.stat().st_mode & 0o001 for part in [real, *real.parents])


def interpreter_for_the_images_user() -> Path | None:
    """This Python, or the system's of the same version, where the image's user can run it
    (pyenv's lives under /root, which it cannot)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys._base_executable), Path(f"/usr/bin/python{version}")]
    return next((p for p in candidates if p.exists() and reachable_by_anyone(p)), None)


@pytest.fixture
def image_layout():
    """A base environment as the image's (made by root, or made read-only when the tests do
    not run as root), a cache folder the runtime's user owns, and a wheel folder as index."""
    root = Path(tempfile.mkdtemp(prefix="image-layout-"))
    root.chmod(0o755)  # the unprivileged user must reach into it
    wheels, cache = root / "wheels", root / "cache"
    wheels.mkdir()
    cache.mkdir()
    as_root = os.geteuid() == 0
    python = interpreter_for_the_images_user() if as_root else Path(sys.executable)
    if python is None:
        pytest.skip("no Python interpreter that an unprivileged user may run")
    base = root / "base"
    subprocess.run([str(python), "-m", "venv", "--without-pip", str(base)], check=True)
    base_python = base / "bin" / "python"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base_site = base / "lib" / version / "site-packages"
    # The image's environment holds the project's packages (pip among them): here, this one's.
    project_site = next(
        p for p in sys.path if p.endswith("site-packages") and "pip" in os.listdir(p)
    )
    (base_site / "_project.pth").write_text(project_site + "\n")
    old = make_wheel(wheels, "1.0")
    make_wheel(wheels, "2.0")
    subprocess.run(
        [str(base_python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(old)],
        check=True,
        env=pip_env(wheels, cache),
    )
    if as_root:
        os.chown(cache, IMAGE_UID, IMAGE_UID)
    else:
        base_site.chmod(0o555)
    yield base_python, base_site, cache, wheels, as_root
    base_site.chmod(0o755)
    shutil.rmtree(root, ignore_errors=True)


def pip_env(wheels: Path, cache: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    return {
        **environ,
        "PIP_CONFIG_FILE": os.devnull,  # no index, no find-links but the test's
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONPATH": str(ROOT),
        "HOME": str(cache),
        "LLM_RUNTIME_CACHE_DIR": str(cache),
    }


def test_requirements_install_at_start_as_the_images_user_over_a_read_only_base(image_layout):
    base_python, base_site, cache, wheels, as_root = image_layout
    drop = {"user": IMAGE_UID, "group": IMAGE_UID, "extra_groups": []} if as_root else {}
    started = subprocess.run(
        [str(base_python), "-c", START],
        env=pip_env(wheels, cache),
        cwd=cache,
        capture_output=True,
        text=True,
        timeout=300,
        **drop,
    )
    assert started.returncode == 0, started.stderr[-3000:]
    result = json.loads(started.stdout.splitlines()[-1])
    if as_root:
        assert result["uid"] == IMAGE_UID
    assert result["version"] == "2.0"  # the requirement, over the base's 1.0
    assert Path(result["file"]).is_relative_to(cache)
    assert result["child"] == ["2.0", result["file"]]  # vLLM's engine core is such a child
    assert "VERSION = '1.0'" in (base_site / PROBE / "__init__.py").read_text()  # untouched


def test_a_writable_environment_takes_requirements_itself(tmp_path):
    if not os.access(sys.prefix, os.W_OK):
        pytest.skip("this interpreter's environment is read-only")
    target = requirements_environment(tmp_path)
    assert target.python == sys.executable
    assert target.site_packages is None
    assert not any(tmp_path.iterdir())
