"""What the vllm processor asks vLLM's engine for, read from its arguments without starting it."""

from __future__ import annotations

import logging

import pytest

from processors.settings import EngineSettings

pytest.importorskip("vllm")
from vllm.platforms import current_platform

# What vLLM's CPU build is asked for; on a GPU the dtype is passed as given.
pytestmark = pytest.mark.skipif(not current_platform.is_cpu(), reason="vLLM's CPU build")


def dtype_for(demo_model_dir, caplog, **settings) -> str:
    from vllm.engine.arg_utils import AsyncEngineArgs

    from processors.vllm_processor import VllmProcessor

    processor = VllmProcessor(EngineSettings(model_path=str(demo_model_dir), **settings))
    with caplog.at_level(logging.INFO, logger="processors.vllm_processor"):
        return processor._engine_kwargs(AsyncEngineArgs)["dtype"]


def test_auto_is_float32_on_a_cpu_whatever_its_bfloat16_support(demo_model_dir, caplog):
    # vLLM would take the checkpoint's bfloat16, whose compiled path answered SmolLM2 with
    # nonsense on an AVX2 and on an AVX-512 BF16 machine.
    assert dtype_for(demo_model_dir, caplog, dtype="auto") == "float32"
    assert "--dtype auto runs vLLM in float32" in caplog.text


def test_compiled_half_precision_on_a_cpu_is_kept_with_a_warning(demo_model_dir, caplog):
    assert dtype_for(demo_model_dir, caplog, dtype="bfloat16") == "bfloat16"
    assert "answered nonsense" in caplog.text
    caplog.clear()
    eager = {"enforce_eager": True}
    assert dtype_for(demo_model_dir, caplog, dtype="bfloat16", extra_args=eager) == "bfloat16"
    assert "answered nonsense" not in caplog.text
    assert dtype_for(demo_model_dir, caplog, dtype="float32") == "float32"
    assert "answered nonsense" not in caplog.text
