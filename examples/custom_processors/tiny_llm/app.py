"""An example processor that loads a causal language model with transformers and generates.

Point it at a Hugging Face model folder (the demo model: `llm-runtime demo-model DIR`):

    llm-runtime serve --processor-entry examples/custom_processors/tiny_llm/app.py --model DIR
    curl -s localhost:8000/ -d '{"prompt": "Hello", "max_new_tokens": 16}'
"""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import allspark


class TinyLLMProcessor(allspark.BaseProcessor):
    def initialize(self):
        model_dir = self.get_model_path().decode()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model.eval()

    def process(self, data):
        try:
            request = json.loads(data)
            prompt = str(request["prompt"])
            max_new_tokens = int(request.get("max_new_tokens", 32))
        except (ValueError, KeyError, TypeError) as exc:
            return f"expected JSON with a prompt: {exc}".encode(), 400
        inputs = self.tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        answer = {
            "response": self.tokenizer.decode(new_tokens, skip_special_tokens=True),
            "completion_tokens": int(new_tokens.shape[0]),
        }
        return json.dumps(answer).encode(), 200


if __name__ == "__main__":
    TinyLLMProcessor(worker_threads=2).run()
