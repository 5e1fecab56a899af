"""What the platform does before a model loads: environment, mounts, pip requirements."""

from __future__ import annotations

import importlib
import logging
import os
import site
import subprocess
import sys
import sysconfig
import venv
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from models.cache import cache_dir
from runtime.config import PrepareConfig

log = logging.getLogger(__name__)


class PrepareError(Exception):
    """Start-up cannot go on; the message says what failed."""


def apply_container_env(config: PrepareConfig, environ: MutableMapping[str, str]) -> None:
    """Set the service JSON's containers[0].env; the real environment wins, as on the platform
    where a variable given at `docker run` outranks the file."""
    for name, value in config.container_env:
        environ.setdefault(name, value)


def check_storage_mounts(config: PrepareConfig) -> None:
    """Locally each `storage[].mount_path` is already mounted: it must exist and be readable."""
    for mount in config.storage_mounts:
        path = Path(mount)
        if not path.exists():
            raise PrepareError(
                f"storage mount_path {mount} does not exist: mount it (docker run -v HOST:{mount})"
            )
        if not os.access(path, os.R_OK):
            raise PrepareError(f"storage mount_path {mount} is not readable by this user")


def install_python_requirements(
    config: PrepareConfig, environ: MutableMapping[str, str] = os.environ
) -> None:
    """pip-install the service JSON's requirements before loading: into this interpreter's
    environment when it is writable, else into an environment layered over it (see
    `requirements_environment`), which this process and its children then import from."""
    args: list[str] = list(config.python_requirements)
    if config.python_requirements_path:
        path = Path(config.python_requirements_path)
        if not path.is_file():
            raise PrepareError(f"pythonRequirementsPath {path} does not exist")
        args += ["-r", str(path)]
    if not args:
        return
    target = requirements_environment(cache_dir())
    command = [
        target.python,
        "-m",
        "pip",
        "install",
        "--no-input",
        "--disable-pip-version-check",
        *args,
    ]
    log.info("installing python requirements: %s", " ".join(args))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        details = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise PrepareError(
            f"installing python requirements ({' '.join(args)}) failed with exit code "
            f"{result.returncode}:\n  " + "\n  ".join(details)
        )
    if target.site_packages is not None:
        target.activate(environ)
    log.info("python requirements installed%s", target.describe())


@dataclass(frozen=True)
class RequirementsEnvironment:
    python: str  # the interpreter whose pip installs
    site_packages: str | None = None  # an overlay's, put on the path once installed

    def describe(self) -> str:
        return f" into {self.site_packages}" if self.site_packages else ""

    def activate(self, environ: MutableMapping[str, str]) -> None:
        """Import from the overlay from now on, ahead of the base environment (as its own
        interpreter does), in this process and in every process it starts (vLLM's engine
        core, a custom processor's workers): through PYTHONPATH."""
        assert self.site_packages is not None
        before = list(sys.path)
        site.addsitedir(self.site_packages)  # with the .pth files its packages brought
        added = [path for path in sys.path if path not in before]
        own = _own_site_packages()
        first_base = next((i for i, path in enumerate(before) if path in own), len(before))
        sys.path[:] = [*before[:first_base], *added, *before[first_base:]]
        importlib.invalidate_caches()
        inherited = environ.get("PYTHONPATH")
        environ["PYTHONPATH"] = os.pathsep.join([self.site_packages, *filter(None, [inherited])])


def requirements_environment(cache: Path) -> RequirementsEnvironment:
    """Where requirements go. The running environment when this user may write to it (a
    developer's virtual environment); else, as in the GPU image (built by root, run as an
    unprivileged user), a virtual environment in the cache whose site-packages come before
    the running environment's: requirements are installed as the image's user, what the base
    already has is not installed again, and a version the base has is overridden, not removed."""
    if all(os.access(path, os.W_OK) for path in _own_site_packages()):
        return RequirementsEnvironment(sys.executable)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    overlay = cache / f"requirements-py{version}"
    python = overlay / "bin" / "python"
    if not python.exists():
        try:
            venv.EnvBuilder(with_pip=False, symlinks=True).create(overlay)
        except OSError as exc:
            raise PrepareError(
                f"this environment ({sys.prefix}) is read-only and {overlay} cannot be made "
                f"({exc}): give the cache (LLM_RUNTIME_CACHE_DIR) a writable volume"
            ) from exc
    site_packages = overlay / "lib" / f"python{version}" / "site-packages"
    # The overlay's interpreter sees the base's packages (pip among them) after its own.
    (site_packages / "_llm_runtime_base.pth").write_text("\n".join(_base_paths()) + "\n")
    return RequirementsEnvironment(str(python), str(site_packages))


def _own_site_packages() -> set[str]:
    return {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}


def _base_paths() -> list[str]:
    """What this interpreter imports from beyond the standard library (site-packages, and
    what .pth files and PYTHONPATH add to them)."""
    paths = sysconfig.get_paths()
    stdlib = tuple(paths[key] for key in ("stdlib", "platstdlib"))
    return [
        path
        for path in dict.fromkeys(sys.path)
        if path
        and os.path.isabs(path)
        and os.path.isdir(path)
        and not path.startswith(stdlib)
        and not path.startswith(str(cache_dir()))
    ]
