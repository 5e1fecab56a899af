"""GGUF files as model input: what `check` reports, the errors for files that cannot be served,
and which file of a folder is served."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.gguf import GgufError, converted_folder, ensure_converted, inspect_gguf
from models.validate import ModelCheckError
from processors.settings import EngineSettings
from runtime.model_source import resolve_model
from tests.fixtures.tiny_gguf import write_tiny_gguf


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, demo_model_dir) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf", demo_model_dir)


def test_inspect_reports_what_the_file_holds(tiny_gguf):
    report = inspect_gguf(tiny_gguf)
    assert (report.architecture, report.quantization) == ("llama", "Q8_0")
    assert report.tensor_types == ("F32", "Q8_0")
    assert report.context_length == 512
    assert report.stored_dtype == "bfloat16"
    assert "architecture:   llama" in report.describe()


def test_a_file_that_is_not_gguf_is_named_so(tmp_path):
    impostor = tmp_path / "model.gguf"
    impostor.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(GgufError, match="is not a GGUF file"):
        inspect_gguf(impostor)


def test_a_truncated_file_is_named_cut_short(tiny_gguf, tmp_path):
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    with pytest.raises(GgufError, match="cut short or corrupt"):
        inspect_gguf(truncated)
    with pytest.raises(GgufError, match="cut short or corrupt"):
        ensure_converted(truncated, tmp_path / "cache")
    left = [p for p in (tmp_path / "cache" / "gguf").iterdir() if p.is_dir()]
    assert not left  # nothing half made that a later start could trust


def test_an_architecture_transformers_cannot_read_is_refused(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "madeupformer")
    writer.add_tensor("x.weight", __import__("numpy").zeros((2, 2), "float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GgufError, match="architecture 'madeupformer' cannot be converted"):
        inspect_gguf(tmp_path / "odd.gguf")


def test_a_full_disk_is_a_clear_error_naming_the_room_needed(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10, 10, 1))
    with pytest.raises(GgufError, match=r"needs about 0\.1 GiB in .* which has 0\.0 GiB free"):
        ensure_converted(tiny_gguf, tmp_path / "cache")


def test_the_cache_entry_is_keyed_by_the_files_identity(tiny_gguf, tmp_path):
    copy = tmp_path / tiny_gguf.name
    shutil.copy2(tiny_gguf, copy)
    assert converted_folder(copy, tmp_path) == converted_folder(copy, tmp_path)
    before = converted_folder(copy, tmp_path)
    copy.write_bytes(copy.read_bytes() + b"\0")  # changed: a new entry
    assert converted_folder(copy, tmp_path) != before


def test_a_folder_of_gguf_files_serves_the_chosen_one(tiny_gguf, tmp_path):
    folder = tmp_path / "mounted"
    folder.mkdir()
    for name in ("m.Q4_0.gguf", "m.Q8_0.gguf"):
        shutil.copy2(tiny_gguf, folder / name)
    with pytest.raises(ModelCheckError, match="several GGUF files.*--gguf-file"):
        resolve_model(EngineSettings(model_path=str(folder)))
    chosen = resolve_model(EngineSettings(model_path=str(folder), gguf_file="m.Q8_0.gguf"))
    assert chosen.gguf == folder / "m.Q8_0.gguf"
    assert chosen.settings.served_model_name == "mounted"
    with pytest.raises(ModelCheckError, match="--gguf-file nope.gguf is not in"):
        resolve_model(EngineSettings(model_path=str(folder), gguf_file="nope.gguf"))
    single = resolve_model(EngineSettings(model_path=str(tiny_gguf)))
    assert single.settings.served_model_name == "tiny.Q8_0"
    assert single.settings.model_path == str(converted_folder(tiny_gguf))


def test_unknown_builtin_names_list_the_builtins():
    with pytest.raises(ModelCheckError, match="builtin:smollm2, builtin:demo"):
        resolve_model(EngineSettings(model_path="builtin:nope"))
