"""The built-in demo model is deterministic and readable."""

from __future__ import annotations

import hashlib

from models.demo import write_demo_model


def digest(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def test_the_demo_model_is_identical_on_every_build(demo_model_dir, tmp_path):
    write_demo_model(tmp_path)
    assert digest(tmp_path) == digest(demo_model_dir)


def test_the_demo_tokenizer_round_trips_any_text(demo_tokenizer):
    text = "Hello café, 你好! <tags> \n\ttabs"
    assert demo_tokenizer.decode(demo_tokenizer.encode(text)) == text
