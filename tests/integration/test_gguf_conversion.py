"""Converting GGUF files for real: exact against transformers' own GGUF loading, atomic when
killed half way, and shared when two runtimes convert the same file at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.gguf import DONE_MARKER, convert, converted_folder, ensure_converted, is_converted
from tests.fixtures.tiny_gguf import write_tiny_gguf

CONVERT = (
    "import sys, logging; from pathlib import Path; logging.basicConfig(level=logging.INFO); "
    "from models.gguf import ensure_converted; "
    "print(ensure_converted(Path(sys.argv[1]), Path(sys.argv[2])))"
)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, demo_model_dir) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf", demo_model_dir)


def test_the_converted_folder_computes_what_transformers_gguf_loading_does(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    convert(tiny_gguf, tmp_path, "float32")
    direct = AutoModelForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32
    )
    converted = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer("Hello, how are you today?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, converted(ids).logits)
    assert tokenizer.chat_template  # the GGUF file's template came along
    assert converted.config.architectures == ["LlamaForCausalLM"]


def test_a_conversion_killed_half_way_is_redone_on_the_next_start(tiny_gguf, tmp_path):
    target = converted_folder(tiny_gguf, tmp_path)
    process = subprocess.Popen([sys.executable, "-c", CONVERT, str(tiny_gguf), str(tmp_path)])
    deadline = time.monotonic() + 120
    while not list(target.parent.glob(f".{target.name}-*")):  # the conversion has begun
        assert process.poll() is None, "the conversion ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)  # polling the cache folder with a deadline
    process.kill()
    process.wait()
    assert not is_converted(target)
    assert ensure_converted(tiny_gguf, tmp_path) == target
    assert (target / DONE_MARKER).is_file()
    assert not list(target.parent.glob(f".{target.name}-*"))  # the killed one's leftovers


def test_two_runtimes_converting_the_same_file_convert_it_once(tiny_gguf, tmp_path):
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", CONVERT, str(tiny_gguf), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    folders = {out.strip() for out, _ in outputs}
    assert folders == {str(converted_folder(tiny_gguf, tmp_path))}
    logs = "".join(err for _, err in outputs)
    assert logs.count("GGUF: converting") == 1
    assert logs.count("converted by another process meanwhile") == 1
