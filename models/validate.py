"""Checks that a mounted folder holds a loadable Hugging Face model, with specific errors.

Run by `llm-runtime check` and by `serve` before any engine starts, so that a wrong mount fails
in a second with a sentence a user can act on, not minutes later inside an engine traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path


class ModelCheckError(Exception):
    """The folder cannot be served; the message says why and what was expected."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tiktoken.model")
CONTEXT_KEYS = (
    "max_position_embeddings",
    "max_sequence_length",
    "seq_length",
    "n_positions",
    "max_seq_len",
    "model_max_length",
)


@dataclass(frozen=True)
class ModelReport:
    path: Path
    architectures: tuple[str, ...]
    model_type: str
    weight_format: str  # "safetensors" or "bin"
    weight_files: tuple[str, ...]
    weight_bytes: int
    tokenizer_files: tuple[str, ...]
    max_context: int | None
    has_chat_template: bool
    torch_dtype: str | None
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        lines = [
            f"model path:     {self.path}",
            f"architecture:   {', '.join(self.architectures) or '(none listed)'}"
            f" (model_type {self.model_type or '?'})",
            f"weights:        {len(self.weight_files)} {self.weight_format} file(s),"
            f" {self.weight_bytes / 2**20:.1f} MiB",
            f"tokenizer:      {', '.join(self.tokenizer_files)}",
            f"chat template:  {'yes' if self.has_chat_template else 'no (plain fallback used)'}",
            f"max context:    {self.max_context if self.max_context else 'unknown'}",
            f"dtype:          {self.torch_dtype or 'unspecified'}",
        ]
        lines += [f"note:           {note}" for note in self.notes]
        return "\n".join(lines)


def check_model_dir(
    path: str | Path,
    supported_architectures: Collection[str] | Callable[[], Collection[str]] | None = None,
    processor_name: str = "the processor",
    max_model_len: int | None = None,
) -> ModelReport:
    """Validate a model folder; raise ModelCheckError naming the first thing that is wrong.

    `supported_architectures` may be a loader: asking an engine costs seconds of imports, so it
    is only called once the cheap file checks have passed.
    """
    root = Path(path)
    if not root.exists():
        raise ModelCheckError(f"model path {root} does not exist (is the volume mounted?)")
    if not root.is_dir():
        raise ModelCheckError(f"model path {root} is not a directory")
    config = _read_config(root)
    weight_format, weight_files = _find_weights(root)
    tokenizer_files = _find_tokenizer(root)

    architectures = tuple(config.get("architectures") or ())
    if supported_architectures is not None:
        if callable(supported_architectures):
            supported_architectures = supported_architectures()
        runnable = [arch for arch in architectures if arch in supported_architectures]
        if not architectures:
            raise ModelCheckError(
                f"{root / 'config.json'} names no architecture: add the model class, e.g. "
                '"architectures": ["LlamaForCausalLM"] for a Llama (model_type '
                f"{config.get('model_type') or '?'})"
            )
        if not runnable:
            raise ModelCheckError(
                f"{processor_name} cannot run architecture {', '.join(architectures)}; "
                "choose another processor or a supported model"
            )

    max_context = _max_context(config)
    if max_model_len is not None and max_context is not None and max_context < max_model_len:
        raise ModelCheckError(
            f"max_model_len {max_model_len} was asked for, but the model's context is only "
            f"{max_context} tokens ({root / 'config.json'})"
        )

    tokenizer_config = _read_json(root / "tokenizer_config.json") or {}
    has_template = bool(tokenizer_config.get("chat_template")) or any(
        (root / name).is_file() for name in ("chat_template.jinja", "chat_template.json")
    )
    return ModelReport(
        path=root,
        architectures=architectures,
        model_type=str(config.get("model_type", "")),
        weight_format=weight_format,
        weight_files=tuple(weight_files),
        weight_bytes=sum((root / name).stat().st_size for name in weight_files),
        tokenizer_files=tuple(tokenizer_files),
        max_context=max_context,
        has_chat_template=has_template,
        torch_dtype=config.get("torch_dtype") or config.get("dtype"),
    )


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelCheckError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelCheckError(f"{path} should hold a JSON object")
    return value


def _read_config(root: Path) -> dict:
    config = _read_json(root / "config.json")
    if config is None:
        raise ModelCheckError(
            f"no config.json in {root}: expected a Hugging Face model folder "
            "(config.json, *.safetensors, tokenizer files)"
        )
    return config


def _find_weights(root: Path) -> tuple[str, list[str]]:
    for fmt, index_name, pattern in (
        ("safetensors", "model.safetensors.index.json", "*.safetensors"),
        ("bin", "pytorch_model.bin.index.json", "pytorch_model*.bin"),
    ):
        index = _read_json(root / index_name)
        if index is not None:
            shards = sorted(set((index.get("weight_map") or {}).values()))
            if not shards:
                raise ModelCheckError(f"{root / index_name} lists no weight files")
            missing = [name for name in shards if not (root / name).is_file()]
            if missing:
                raise ModelCheckError(
                    f"{root / index_name} lists {len(shards)} weight files but "
                    f"{len(missing)} are missing: {', '.join(missing[:5])}"
                )
            return fmt, shards
        files = sorted(p.name for p in root.glob(pattern) if p.is_file())
        if files:
            return fmt, files
    raise ModelCheckError(
        f"no weights in {root}: expected model.safetensors, sharded *.safetensors with "
        "model.safetensors.index.json, or pytorch_model*.bin"
    )


def _find_tokenizer(root: Path) -> list[str]:
    found = [name for name in TOKENIZER_FILES if (root / name).is_file()]
    if (root / "vocab.json").is_file() and (root / "merges.txt").is_file():
        found += ["vocab.json", "merges.txt"]
    if not found:
        raise ModelCheckError(
            f"no tokenizer in {root}: expected tokenizer.json, tokenizer.model, or "
            "vocab.json with merges.txt"
        )
    return found


def _max_context(config: dict) -> int | None:
    sources = [config, config.get("text_config") or {}]
    for source in sources:
        for key in CONTEXT_KEYS:
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None
