"""The queue service's wire formats: frames and attributes as the platform's SDK reads them.

The SDK asks for protobuf (`Accept: application/vnd.google.protobuf`), package `streaming`:
  DataFrameProto     {uint64 index = 1; map<string, string> tags = 2; bytes data = 3;
                      string message = 4}
  DataFrameListProto {repeated DataFrameProto index = 1}
  AttributesProto    {map<string, string> attributes = 1}
Written by hand (a few varints), so the runtime needs no protobuf package; JSON otherwise.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping

from runtime.errors import bad_request
from runtime.queue.base import Frame

PROTOBUF = "application/vnd.google.protobuf"
MAX_INDEX = 2**63 - 1  # what SQLite's integers and Redis's stream ids hold
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|h|m|s)?")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def wants_protobuf(accept: str) -> bool:
    return PROTOBUF in accept


def frame_json(frame: Frame, index_only: bool = False) -> dict:
    data = b"" if index_only else frame.data
    return {"index": frame.index, "data": base64.b64encode(data).decode(), "tags": dict(frame.tags)}


def frame_proto(frame: Frame, index_only: bool = False) -> bytes:
    tags = _map_entries(2, frame.tags)
    data = b"" if index_only else frame.data
    return _tag(1, 0) + _varint(frame.index) + tags + _field(3, data)


def frame_list_proto(frames: Iterable[Frame]) -> bytes:
    return b"".join(_field(1, frame_proto(frame)) for frame in frames)


def attributes_proto(attributes: Mapping[str, str]) -> bytes:
    return _map_entries(1, attributes)


def parse_bool(text: str | None, default: bool = False) -> bool:
    if text is None or text == "":
        return default
    return text.lower() in ("true", "1", "yes")


def parse_seconds(text: str, name: str) -> float:
    """The platform writes durations as Go prints them (`5s`, `1m30s`, `100ms`); plain numbers
    are seconds."""
    rest, total, position = text.strip(), 0.0, 0
    for match in _DURATION_PART.finditer(rest):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2) or "s"]
        position = match.end()
    if position != len(rest) or not rest:
        raise bad_request(f"{name} must be a duration such as 5s, got {text!r}", name)
    return total


def parse_index(text: str | None, name: str, default: int = 0) -> int:
    if text is None or text == "":
        return default
    if not _is_index(text.strip()):
        raise bad_request(f"{name} must be an integer from 0 to {MAX_INDEX}, got {text!r}", name)
    return int(text)


def parse_indexes(text: str | None, name: str = "_indexes_") -> list[int]:
    parts = [part.strip() for part in (text or "").split(",") if part.strip()]
    if not parts or not all(_is_index(part) for part in parts):
        raise bad_request(f"{name} must list indexes separated by commas, got {text!r}", name)
    return [int(part) for part in parts]


def _is_index(text: str) -> bool:
    # ASCII digits only (str.isdigit admits other scripts' digits), within a signed 64-bit int.
    return text.isascii() and text.isdigit() and int(text) <= MAX_INDEX


def _map_entries(number: int, values: Mapping[str, str]) -> bytes:
    return b"".join(
        _field(number, _field(1, str(key).encode()) + _field(2, str(value).encode()))
        for key, value in values.items()
    )


def _field(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
