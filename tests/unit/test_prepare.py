"""Preparation before loading: mounts and pip requirements."""

from __future__ import annotations

import pytest

from runtime.config import PrepareConfig
from runtime.prepare import PrepareError, check_storage_mounts, install_python_requirements


def test_missing_mount_names_the_path_and_the_fix(tmp_path):
    check_storage_mounts(PrepareConfig(storage_mounts=(str(tmp_path),)))
    with pytest.raises(PrepareError, match=r"/mnt/absent-model does not exist.*docker run -v"):
        check_storage_mounts(PrepareConfig(storage_mounts=("/mnt/absent-model",)))


def test_failed_requirements_install_is_a_clear_start_error():
    config = PrepareConfig(python_requirements=("not a valid requirement!!",))
    with pytest.raises(PrepareError, match="installing python requirements .* failed"):
        install_python_requirements(config)


def test_satisfied_requirements_install_succeeds(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pip\n")  # already installed: pip answers without the network
    install_python_requirements(PrepareConfig(python_requirements_path=str(requirements)))


def test_missing_requirements_file():
    with pytest.raises(PrepareError, match="does not exist"):
        install_python_requirements(PrepareConfig(python_requirements_path="/nope/req.txt"))
