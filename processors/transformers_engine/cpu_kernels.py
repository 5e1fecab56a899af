"""Our CPU kernels (csrc/cpu_kernels.c): bfloat16-weight matrix products, RMSNorm, decode
attention over the slot cache, and all decoder layers of a decode step in one call, all float32
arithmetic.

Plain C without torch's headers, built at first use with the system's C compiler in about a
second and kept in the runtime's cache under a name hashed from its source, flags and compiler;
called through ctypes, which releases the GIL for the call as torch's own kernels do. Where the
CPU lacks AVX2 and FMA or no compiler is found, `load_cpu_kernels()` returns None and the
engine keeps torch's kernels and float32 weights.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from models.cache import cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_kernels.c"
FLAGS = ("-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")
PANEL = 16  # output columns per packed weight panel (the C kernel's PANEL)
# Columns of a panel in the order the kernel's two unpacks widen them (widen16).
_WIDEN_ORDER = [*range(0, 4), *range(8, 12), *range(4, 8), *range(12, 16)]
_STORED_AT = torch.tensor(_WIDEN_ORDER).argsort()  # where each column sits in a panel

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "linear_bf16": [_P, _I, _I, _P, _I, _P, _P, ctypes.c_int],
    "rms_norm": [_P, _I, _I, _P, _F, _P, ctypes.c_int],
    "decode_attention": [_P, _I, _I, _I, _I, _P, _P, _P, _P, _I, _P, _F, _P, ctypes.c_int],
    "decode_layers": [_P, _P, _P, _I, _P, _P, _P, ctypes.c_int],
}


# These allocate scratch memory and return 0, or -1 when they could not (nothing computed).
_WITH_SCRATCH = ("linear_bf16", "decode_attention", "decode_layers")


class DecoderLayer(ctypes.Structure):
    """The C struct of one layer's weights and caches (addresses; None where a family lacks
    one): made once per engine, so a step passes only its own tensors."""

    _fields_ = [
        (name, _P)
        for name in (
            *("input_norm", "post_norm", "q_norm", "k_norm"),
            *("qkv", "o", "gate_up", "down"),
            *("qkv_bias", "o_bias", "gate_up_bias", "down_bias"),
            *("k_cache", "v_cache"),
        )
    ]


class DecoderShape(ctypes.Structure):
    _fields_ = [
        *((name, _I) for name in ("layers", "hidden", "heads", "kv_heads", "head_dim")),
        *((name, _I) for name in ("intermediate", "max_len")),
        ("eps", _F),
        ("scale", _F),
    ]


def _checked(status: int, kernel: str) -> None:
    if status != 0:
        raise MemoryError(f"the CPU kernel {kernel} could not allocate its scratch memory")


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class CpuKernels:
    def __init__(self, library: ctypes.CDLL) -> None:
        for name, argtypes in _SIGNATURES.items():
            getattr(library, name).argtypes = argtypes
            getattr(library, name).restype = ctypes.c_int if name in _WITH_SCRATCH else None
        self._library = library

    @staticmethod
    def pack_bf16(weight: torch.Tensor) -> torch.Tensor:
        """[N, K] -> bfloat16 panels [ceil(N/16), K, 16] (zero rows pad the last panel)."""
        num_out, num_in = weight.shape
        padded = -num_out % PANEL
        weight = _pad_rows(weight.to(torch.bfloat16), padded)
        panels = weight.view(-1, PANEL, num_in).transpose(1, 2)  # [N/16, K, 16]
        return panels[..., _WIDEN_ORDER].contiguous()

    @staticmethod
    def packed_rows(packed: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` of the matrix `pack_bf16` packed, [n, K] bfloat16."""
        return packed[ids // PANEL, :, _STORED_AT.to(ids.device)[ids % PANEL]]

    @staticmethod
    def pad_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
        return None if bias is None else _pad_rows(bias.float().contiguous(), -len(bias) % PANEL)

    def linear_bf16(
        self, x: torch.Tensor, packed: torch.Tensor, num_out: int, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """F.linear(x, W, bias) for float32 x [..., K] and W packed by `pack_bf16`."""
        rows = _rows(x)
        out = torch.empty((rows.shape[0], num_out), dtype=torch.float32)
        status = self._library.linear_bf16(
            rows.data_ptr(),
            rows.shape[0],
            rows.shape[1],
            packed.data_ptr(),
            num_out,
            _pointer(bias),
            out.data_ptr(),
            torch.get_num_threads(),
        )
        _checked(status, "linear_bf16")
        return out.view(*x.shape[:-1], num_out)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rows = _rows(x)
        out = torch.empty_like(rows)
        self._library.rms_norm(
            rows.data_ptr(),
            rows.shape[0],
            rows.shape[1],
            weight.data_ptr(),
            eps,
            out.data_ptr(),
            torch.get_num_threads(),
        )
        return out.view(x.shape)

    def decode_attention(
        self,
        qkv: torch.Tensor,  # [B, (H + 2 Hkv) D], before rotary
        num_heads: int,
        num_kv_heads: int,
        cos: torch.Tensor,  # [B, D]
        sin: torch.Tensor,  # [B, D]
        keys: torch.Tensor,  # [S, Hkv, L, D], written at `positions`
        values: torch.Tensor,
        positions: torch.Tensor,  # [B] int64
        scale: float,
    ) -> torch.Tensor:
        """[B, H D]: one new token per slot 0..B-1 attends over its slot's positions."""
        batch, head_dim = qkv.shape[0], keys.shape[-1]
        out = torch.empty((batch, num_heads * head_dim), dtype=torch.float32)
        qkv, cos, sin = _rows(qkv), _rows(cos), _rows(sin)  # held while C reads them
        status = self._library.decode_attention(
            qkv.data_ptr(),
            batch,
            num_heads,
            num_kv_heads,
            head_dim,
            cos.data_ptr(),
            sin.data_ptr(),
            keys.data_ptr(),
            values.data_ptr(),
            keys.shape[2],
            positions.data_ptr(),
            scale,
            out.data_ptr(),
            torch.get_num_threads(),
        )
        _checked(status, "decode_attention")
        return out

    def decode_layers(
        self,
        layers: ctypes.Array[DecoderLayer],
        shape: DecoderShape,
        x: torch.Tensor,  # [B, hidden], contiguous: updated in place
        cos: torch.Tensor,  # [B, D]
        sin: torch.Tensor,
        positions: torch.Tensor,  # [B] int64: row b is slot b
    ) -> None:
        """Every decoder layer over a step of decode rows only (SiLU MLP, packed weights)."""
        cos, sin = _rows(cos), _rows(sin)  # held while C reads them
        status = self._library.decode_layers(
            ctypes.addressof(layers),
            ctypes.addressof(shape),
            x.data_ptr(),
            x.shape[0],
            cos.data_ptr(),
            sin.data_ptr(),
            positions.data_ptr(),
            torch.get_num_threads(),
        )
        _checked(status, "decode_layers")


def _pad_rows(tensor: torch.Tensor, count: int) -> torch.Tensor:
    if not count:
        return tensor
    padding = tensor.new_zeros((count, *tensor.shape[1:]))
    return torch.cat([tensor, padding])


def _rows(x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.is_contiguous() else rows.contiguous()


def load_cpu_kernels() -> CpuKernels | None:
    """The kernels, built once per source and compiler; None where they cannot run here."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        log.info("no AVX2 on this CPU: torch's kernels and float32 weights")
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler (cc): torch's kernels and float32 weights, a slower decode")
        return None
    try:
        return CpuKernels(ctypes.CDLL(str(_built(compiler))))
    except subprocess.CalledProcessError as exc:
        log.warning("our CPU kernels did not build: %s", exc.stderr.strip()[-2000:])
    except OSError as exc:
        log.warning("our CPU kernels did not load: %s", exc)
    return None


def _built(compiler: str) -> Path:
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join((compiler, version, *FLAGS)).encode())
    target = cache_dir() / "kernels" / f"cpu_kernels-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built beside the target and renamed into place, so concurrent starts never load a
        # half-written library.
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            built = Path(work) / target.name
            command = [compiler, *FLAGS, str(SOURCE), "-o", str(built)]
            subprocess.run(command, capture_output=True, text=True, check=True)
            os.replace(built, target)
        log.info("built our CPU kernels: %s", target)
        # Builds of earlier sources or compilers are not loaded again; one still loaded by a
        # running process stays mapped in it after the unlink.
        for stale in target.parent.glob("cpu_kernels-*.so"):
            if stale != target:
                stale.unlink(missing_ok=True)
    return target
