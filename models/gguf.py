"""GGUF files as model input: read with the `gguf` package, converted once by transformers' GGUF
loader into a Hugging Face folder (safetensors, config, tokenizer) that every processor loads.

The converted folder is a cache entry keyed by the file's identity (its real path, size and
modification time): a changed file converts anew, an unchanged one never again. Conversion is
atomic (written aside, renamed into place, so a killed conversion leaves nothing a later start
trusts) and locked (two runtimes converting the same file wait for each other, the second then
reuses the first's result), and it checks the disk for the room it needs first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from models.cache import cache_dir
from models.validate import ModelCheckError

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
DONE_MARKER = ".converted"  # written last: a folder without it is not a finished conversion
CONVERSION = "2"  # part of a cache entry's key: a new way of converting converts anew
# Dequantized weights are stored in bfloat16, what such models are published in and what vLLM
# runs a float32 checkpoint as anyway; unquantized files keep their own precision.
STORED_DTYPE = {"ALL_F32": "float32", "MOSTLY_F16": "float16"}
DEFAULT_STORED_DTYPE = "bfloat16"


class GgufError(ModelCheckError):
    """A GGUF file that cannot be served; the message says which and why (exit code 2)."""


@dataclass(frozen=True)
class GgufReport:
    path: Path
    architecture: str
    quantization: str  # the file type, e.g. Q4_1
    stored_dtype: str  # what the converted weights are written in
    tensor_types: tuple[str, ...]
    num_parameters: int
    file_bytes: int
    context_length: int | None
    name: str

    def describe(self) -> str:
        return "\n".join(
            [
                f"GGUF file:      {self.path}",
                f"model:          {self.name or '(unnamed)'}",
                f"architecture:   {self.architecture}",
                f"quantization:   {self.quantization} (tensors: {', '.join(self.tensor_types)}; "
                f"converted to {self.stored_dtype})",
                f"parameters:     {self.num_parameters / 1e6:.1f} M",
                f"file size:      {self.file_bytes / 2**20:.1f} MiB",
                f"max context:    {self.context_length or 'unknown'}",
            ]
        )


def is_gguf(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".gguf"


def gguf_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.gguf") if p.is_file())


def inspect_gguf(path: Path) -> GgufReport:
    """What the file holds; GgufError when it is not a GGUF file, is cut short or corrupt, or
    holds an architecture or a quantization type that cannot be converted."""
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise GgufError(f"cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise GgufError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    from gguf import GGMLQuantizationType, GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the gguf package raises ValueError, struct.error, IndexError...
        raise GgufError(
            f"{path} is cut short or corrupt: {type(exc).__name__}: {exc}; copy it again"
        ) from None

    def field(key: str) -> object:
        found = reader.fields.get(key)
        return found.contents() if found is not None else None

    architecture = str(field("general.architecture") or "")
    file_type = field("general.file_type")
    types = sorted({GGMLQuantizationType(t.tensor_type).name for t in reader.tensors})
    file_type_name = LlamaFileType(file_type).name if isinstance(file_type, int) else "?"
    context = field(f"{architecture}.context_length")
    report = GgufReport(
        path=path,
        architecture=architecture,
        quantization=file_type_name.removeprefix("MOSTLY_"),
        stored_dtype=STORED_DTYPE.get(file_type_name, DEFAULT_STORED_DTYPE),
        tensor_types=tuple(types),
        num_parameters=sum(int(t.n_elements) for t in reader.tensors),
        file_bytes=path.stat().st_size,
        context_length=int(context) if isinstance(context, int) else None,
        name=str(field("general.name") or ""),
    )
    _check_convertible(report)
    return report


def _check_convertible(report: GgufReport) -> None:
    from gguf.quants import _type_traits
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if report.architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise GgufError(
            f"{report.path}: architecture {report.architecture!r} cannot be converted "
            f"(transformers reads GGUF files of {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})"
        )
    readable = {"F32", "F16"} | {kind.name for kind in _type_traits}
    unreadable = [kind for kind in report.tensor_types if kind not in readable]
    if unreadable:
        raise GgufError(
            f"{report.path}: quantization type {', '.join(unreadable)} cannot be dequantized "
            "by the gguf package"
        )


def converted_folder(path: Path, root: Path | None = None) -> Path:
    """Where `path` is (or will be) converted: a cache entry keyed by the file's identity."""
    real = path.resolve()
    stat = real.stat()
    identity = f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}\0{CONVERSION}"
    key = hashlib.sha256(identity.encode()).hexdigest()
    return (root or cache_dir()) / "gguf" / f"{real.stem}-{key[:16]}"


def is_converted(folder: Path) -> bool:
    return (folder / DONE_MARKER).is_file()


def ensure_converted(path: Path, root: Path | None = None) -> Path:
    """The converted folder of the GGUF file at `path`, converting it first if needed."""
    target = converted_folder(path, root)
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.with_name(target.name + ".lock")):
        if is_converted(target):  # another runtime converted it while this one waited
            log.info("GGUF: %s was converted by another process meanwhile", path)
            return target
        report = inspect_gguf(path)
        _check_room(report, target.parent)
        # What a conversion killed half way left behind (it held the lock, so none runs now).
        shutil.rmtree(target, ignore_errors=True)
        for stale in target.parent.glob(f".{target.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            started = time.monotonic()
            log.info(
                "GGUF: converting %s (%s, %s, %.0f M parameters) into %s; later starts reuse it",
                path,
                report.architecture,
                report.quantization,
                report.num_parameters / 1e6,
                target,
            )
            convert(path, staging, report.stored_dtype)
            (staging / DONE_MARKER).write_text(json.dumps({"source": str(path.resolve())}))
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("GGUF: converted in %.0f s", time.monotonic() - started)
    return target


def _check_room(report: GgufReport, where: Path) -> None:
    bytes_per_weight = 4 if report.stored_dtype == "float32" else 2
    needed = report.num_parameters * bytes_per_weight + (64 << 20)  # weights + tokenizer
    free = shutil.disk_usage(where).free
    if free < needed:
        raise GgufError(
            f"converting {report.path} needs about {needed / 2**30:.1f} GiB in {where}, which "
            f"has {free / 2**30:.1f} GiB free: free some space, or point "
            "LLM_RUNTIME_CACHE_DIR at a larger volume"
        )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def convert(path: Path, folder: Path, dtype: str = DEFAULT_STORED_DTYPE) -> None:
    """Dequantize the GGUF file at `path` into a Hugging Face folder (transformers' loader),
    the weights in `dtype`."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, name = str(path.parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    # Loaded in float32 (transformers' fast path for GGUF), stored in `dtype`.
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    config = model.config
    # transformers refuses to save a model loaded from GGUF (it counts as quantized); the
    # dequantized weights are plain tensors, written here directly.
    with contextlib.suppress(AttributeError):
        del config.quantization_config
    config.architectures = [type(model).__name__]  # vLLM picks its model class by this
    state = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the embedding, stored once
    stored = getattr(torch, dtype)
    config.dtype = stored
    save_file(
        {key: value.to(stored).contiguous() for key, value in state.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    os.sync()  # the rename that follows must not publish a folder still in the page cache only
