"""What the platform does before a model loads: environment, mounts, pip requirements."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path

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


def install_python_requirements(config: PrepareConfig) -> None:
    """pip-install the service JSON's requirements into this interpreter, before loading."""
    args: list[str] = list(config.python_requirements)
    if config.python_requirements_path:
        path = Path(config.python_requirements_path)
        if not path.is_file():
            raise PrepareError(f"pythonRequirementsPath {path} does not exist")
        args += ["-r", str(path)]
    if not args:
        return
    command = [
        sys.executable,
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
    log.info("python requirements installed")
