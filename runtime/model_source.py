"""Which model folder is served, where it comes from, and the checks it must pass first.

`--model` names a Hugging Face folder, a GGUF file (or a folder holding GGUF files only), or a
built-in model; none means the default built-in model. Resolving it costs no more than a few
`stat` calls, so a wrong name fails before the port is bound; building or converting the folder
(`ModelSource.prepare`) happens after, while probes already get answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from models.builtin import BUILTINS, DEFAULT_MODEL, DEMO, SMOLLM2, SMOLLM2_NAME, smollm2_gguf
from models.demo import DEMO_MODEL_NAME, demo_model_path, ensure_demo_model
from models.gguf import converted_folder, ensure_converted, gguf_files, is_gguf
from models.validate import ModelCheckError, ModelReport, check_model_dir
from processors.registry import architectures_for, resolve_processor_name
from processors.settings import EngineSettings


@dataclass(frozen=True)
class ModelSource:
    settings: EngineSettings  # model_path: the folder the processor loads
    origin: str  # what the user named, for the logs
    # Builds or converts the folder (blocking; nothing to do once done).
    prepare: Callable[[], object] | None = None
    gguf: Path | None = None  # the GGUF file it is converted from


def resolve_model(engine: EngineSettings) -> ModelSource:
    """The folder `engine.model_path` stands for; ModelCheckError for a name that cannot be."""
    named = engine.model_path or DEFAULT_MODEL
    if named == DEMO:
        return _source(engine, named, demo_model_path(), DEMO_MODEL_NAME, ensure_demo_model)
    if named == SMOLLM2:
        return _gguf_source(engine, named, smollm2_gguf(), SMOLLM2_NAME)
    if named.startswith("builtin:"):
        raise ModelCheckError(f"no built-in model {named!r}; there are {', '.join(BUILTINS)}")
    path = Path(named)
    if is_gguf(path):
        return _gguf_source(engine, named, path, path.stem)
    if path.is_dir() and not (path / "config.json").is_file() and gguf_files(path):
        return _gguf_source(engine, named, _chosen_gguf(path, engine.gguf_file), path.name)
    return ModelSource(engine, named)  # a Hugging Face folder, checked as such later


def _chosen_gguf(folder: Path, wanted: str | None) -> Path:
    files = gguf_files(folder)
    if wanted:
        chosen = folder / wanted
        if chosen not in files:
            raise ModelCheckError(
                f"--gguf-file {wanted} is not in {folder}; it holds "
                f"{', '.join(f.name for f in files)}"
            )
        return chosen
    if len(files) > 1:
        raise ModelCheckError(
            f"{folder} holds several GGUF files ({', '.join(f.name for f in files)}): choose "
            "one with --gguf-file NAME"
        )
    return files[0]


def _gguf_source(engine: EngineSettings, named: str, path: Path, name: str) -> ModelSource:
    source = _source(engine, named, converted_folder(path), name, partial(ensure_converted, path))
    return dataclasses.replace(source, gguf=path)


def _source(
    engine: EngineSettings, named: str, folder: Path, name: str, prepare: Callable[[], object]
) -> ModelSource:
    settings = dataclasses.replace(
        engine, model_path=str(folder), served_model_name=engine.served_model_name or name
    )
    return ModelSource(settings, named, prepare)


def check_model(processor: str, engine: EngineSettings) -> ModelReport:
    """The same checks as `llm-runtime check`; raises ModelCheckError."""
    name = resolve_processor_name(processor)
    return check_model_dir(
        engine.model_path,
        supported_architectures=architectures_for(name),
        processor_name=f"the {name} processor",
        max_model_len=engine.max_model_len,
    )
