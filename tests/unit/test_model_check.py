"""`llm-runtime check`: specific errors for each way a model folder can be wrong."""

from __future__ import annotations

import json
import shutil

import pytest

from models.validate import ModelCheckError, check_model_dir


@pytest.fixture
def model_copy(demo_model_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(demo_model_dir, target)
    return target


def test_the_demo_model_passes_and_is_described(demo_model_dir):
    report = check_model_dir(demo_model_dir, supported_architectures={"LlamaForCausalLM"})
    assert report.architectures == ("LlamaForCausalLM",)
    assert report.weight_format == "safetensors"
    assert report.max_context == 2048
    assert report.has_chat_template
    assert "LlamaForCausalLM" in report.describe()


def test_missing_folder(tmp_path):
    with pytest.raises(ModelCheckError, match="does not exist"):
        check_model_dir(tmp_path / "absent")


def test_no_config(model_copy):
    (model_copy / "config.json").unlink()
    with pytest.raises(ModelCheckError, match="no config.json"):
        check_model_dir(model_copy)


def test_no_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelCheckError, match="no weights"):
        check_model_dir(model_copy)


def test_bin_weights_are_accepted(model_copy):
    (model_copy / "model.safetensors").rename(model_copy / "pytorch_model.bin")
    assert check_model_dir(model_copy).weight_format == "bin"


def test_index_with_missing_shards(model_copy):
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    (model_copy / "model.safetensors").rename(model_copy / "model-00001-of-00002.safetensors")
    with pytest.raises(ModelCheckError, match="1 are missing: model-00002-of-00002"):
        check_model_dir(model_copy)


def test_no_tokenizer(model_copy):
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelCheckError, match="no tokenizer"):
        check_model_dir(model_copy)


def test_unsupported_architecture_names_processor_and_architecture(model_copy):
    with pytest.raises(ModelCheckError, match="the vllm processor cannot run .*LlamaForCausalLM"):
        check_model_dir(
            model_copy,
            supported_architectures={"GPT2LMHeadModel"},
            processor_name="the vllm processor",
        )


def test_architectures_loader_is_only_called_after_file_checks(model_copy):
    (model_copy / "config.json").unlink()

    def loader():
        raise AssertionError("must not import an engine for a folder without config.json")

    with pytest.raises(ModelCheckError, match="no config.json"):
        check_model_dir(model_copy, supported_architectures=loader)


def test_context_smaller_than_asked(model_copy):
    with pytest.raises(ModelCheckError, match="max_model_len 4096 .* only 2048"):
        check_model_dir(model_copy, max_model_len=4096)


def test_invalid_config_json(model_copy):
    (model_copy / "config.json").write_text("{")
    with pytest.raises(ModelCheckError, match="not valid JSON"):
        check_model_dir(model_copy)
