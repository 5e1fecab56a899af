"""Which model folder is served, and the checks it must pass first."""

from __future__ import annotations

import dataclasses

from models.demo import DEMO_MODEL_NAME, demo_model_path
from models.validate import ModelReport, check_model_dir
from processors.registry import architectures_for, resolve_processor_name
from processors.settings import EngineSettings


def resolve_model(engine: EngineSettings) -> EngineSettings:
    """The engine settings with a concrete model path: the built-in demo model when none
    (built later, after the port is bound, if it is not cached yet)."""
    if engine.model_path:
        return engine
    return dataclasses.replace(
        engine,
        model_path=str(demo_model_path()),
        served_model_name=engine.served_model_name or DEMO_MODEL_NAME,
    )


def check_model(processor: str, engine: EngineSettings) -> ModelReport:
    """The same checks as `llm-runtime check`; raises ModelCheckError."""
    name = resolve_processor_name(processor)
    return check_model_dir(
        engine.model_path,
        supported_architectures=architectures_for(name),
        processor_name=f"the {name} processor",
        max_model_len=engine.max_model_len,
    )
