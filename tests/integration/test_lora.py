"""LoRA adapters on the vLLM processor: a PEFT adapter made here (random weights, fixed seed)
changes the demo model's greedy output, and gives what vLLM's offline engine gives with the same
LoRARequest."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from processors.adapters import AdapterError
from processors.base import Adapter, GenerationRequest, SamplingParams
from processors.settings import EngineSettings

pytest.importorskip("vllm")
pytest.importorskip("peft")

PROMPT = "Once upon a time"
OFFLINE = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest
if __name__ == "__main__":
    model, adapter, prompt = sys.argv[1:4]
    llm = LLM(model=model, enable_lora=True, max_lora_rank=8, max_num_seqs=4,
              kv_cache_memory_bytes=1 << 28, enforce_eager=True)
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(temperature=0, max_tokens=16)
    ids = tokenizer.encode(prompt)
    out = llm.generate({"prompt_token_ids": ids}, params,
                       lora_request=LoRARequest("demo-lora", 1, adapter))
    print("TOKENS " + json.dumps(list(out[0].outputs[0].token_ids)))
"""


@pytest.fixture(scope="module")
def adapter_dir(demo_model_dir, tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(20261202)
    base = AutoModelForCausalLM.from_pretrained(str(demo_model_dir), dtype=torch.float32)
    config = LoraConfig(
        r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    folder = tmp_path_factory.mktemp("adapter") / "demo-lora"
    get_peft_model(base, config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def engine(demo_model_dir, adapter_dir):
    from processors.vllm_processor import VllmProcessor

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    settings = EngineSettings(
        model_path=str(demo_model_dir),
        max_num_seqs=4,
        lora_modules=(f"demo-lora={adapter_dir}",),
        # Both engines uncompiled: compiling adds minutes on a CPU and nothing to what is tested.
        extra_args={"enforce_eager": True},
    )
    processor = VllmProcessor(settings)
    with asyncio.Runner() as runner:
        runner.run(processor.start())
        runner.run(processor.load_adapter(Adapter("demo-lora", str(adapter_dir), 1)))
        yield processor, runner
        runner.run(processor.shutdown())


def greedy(engine, request_id: str, adapter: Adapter | None) -> list[int]:
    processor, runner = engine

    async def collect():
        ids = processor.info.tokenizer.encode(PROMPT)
        sampling = SamplingParams(max_tokens=16, temperature=0)
        request = GenerationRequest(request_id, ids, sampling, adapter=adapter)
        return [t async for step in processor.generate(request) for t in step.token_ids]

    return runner.run(collect())


def test_the_adapter_changes_the_output_as_vllms_offline_engine_does(
    engine, demo_model_dir, adapter_dir
):
    assert engine[0].info.max_adapter_rank == 8  # chosen for the adapter, above nothing else
    adapter = Adapter("demo-lora", str(adapter_dir), 1)
    base, tuned = greedy(engine, "base", None), greedy(engine, "tuned", adapter)
    assert tuned != base
    offline = subprocess.run(
        [sys.executable, "-c", OFFLINE, str(demo_model_dir), str(adapter_dir), PROMPT],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    line = next(x for x in offline.stdout.splitlines() if x.startswith("TOKENS "))
    assert tuned == json.loads(line[7:])


def test_an_adapter_of_a_rank_beyond_the_limit_is_refused(tmp_path):
    from processors.vllm_processor import _lora_kwargs

    folder = tmp_path / "wide"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 64}))
    settings = EngineSettings(
        model_path="/m", lora_modules=(f"wide={folder}",), extra_args={"max_lora_rank": 16}
    )
    with pytest.raises(AdapterError, match="--max-lora-rank 16 is below the rank 64"):
        _lora_kwargs(settings, {"max_lora_rank": 16})
    chosen = _lora_kwargs(EngineSettings(model_path="/m", lora_modules=(f"wide={folder}",)), {})
    assert chosen == {"enable_lora": True, "max_lora_rank": 64}
    with pytest.raises(AdapterError, match="not a PEFT adapter folder"):
        _lora_kwargs(EngineSettings(model_path="/m", lora_modules=(f"x={tmp_path}",)), {})
