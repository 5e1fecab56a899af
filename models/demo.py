"""The built-in demo model: a tiny random-weight Llama, built locally and deterministically.

No download and no torch: the tokenizer is trained offline with `tokenizers` on a built-in text,
the weights come from a seeded NumPy generator and are written with safetensors. head_dim is 64
because vLLM's CPU attention kernel refuses 16.

Random weights would emit arbitrary bytes (half a UTF-8 character, control bytes) and stop at a
random EOS. So the residual stream carries one constant dimension that no layer reads or writes,
and lm_head uses it to push every token that is not printable ASCII (EOS included) far down.
Output is gibberish, but readable gibberish, and always runs to max_tokens unless a stop string
matches: that makes token counts in tests exact.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from models.cache import cache_dir

log = logging.getLogger(__name__)

DEMO_MODEL_VERSION = "v1"
DEMO_MODEL_NAME = "llm-runtime-demo"

HIDDEN = 256
INTERMEDIATE = 256
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = 64
VOCAB = 512
MAX_POSITIONS = 2048
SEED = 20261121

BOS, EOS, IM_START, IM_END = "<s>", "</s>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = """\
The runtime loads a model from a mounted path and serves it on one port. A user sends a prompt
and the model answers with text, one token at a time, while the server streams every step back.
Requests arrive together and the engine batches them: the scheduler decides which sequences run,
the cache keeps their keys and values, and the sampler picks the next token from the logits.
When the service starts, the probes ask whether it is alive and whether it is ready. When it
stops, it drains the requests in flight, so that nothing is lost and every client gets an answer.
Hello, how are you today? I am fine, thank you. What is the weather like in the mountains?
It is cold and clear, with snow on the high peaks and a light wind from the north in the morning.
Please write a short story about a cat who lives in a library and reads books at night.
Once upon a time there was a small grey cat named Pixel, who slept all day between the shelves.
system user assistant model token prompt answer history stream server client engine request
0 1 2 3 4 5 6 7 8 9 10 100 1000 = + - * / ( ) [ ] { } < > : ; , . ! ? ' " # @ $ % & _ |
"""


def demo_model_path(root: Path | None = None) -> Path:
    return (root or cache_dir()) / f"demo-model-{DEMO_MODEL_VERSION}"


def ensure_demo_model(root: Path | None = None) -> Path:
    """The demo model's folder, built on first use; safe when several processes race."""
    target = demo_model_path(root)
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-model-", dir=target.parent))
    try:
        write_demo_model(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its copy is identical
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built the demo model in %s", target)
    return target


def write_demo_model(directory: Path) -> None:
    """Write config, tokenizer and weights of the demo model into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    tokenizer.save_pretrained(str(directory))
    banned = _non_printable_token_ids(tokenizer)
    _write_weights(directory / "model.safetensors", banned)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB,
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": tokenizer.convert_tokens_to_ids(BOS),
        "eos_token_id": tokenizer.convert_tokens_to_ids(IM_END),
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _train_tokenizer():  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=[BOS, EOS, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=EOS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def _non_printable_token_ids(tokenizer) -> list[int]:
    banned = []
    for token_id in range(VOCAB):
        text = tokenizer.decode([token_id])
        printable = bool(text) and all(ch == "\n" or " " <= ch <= "~" for ch in text)
        if not printable or token_id in tokenizer.all_special_ids:
            banned.append(token_id)
    return banned


def _write_weights(path: Path, banned_token_ids: list[int]) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(SEED)

    def normal(*shape: int, std: float = 0.05) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    # Dimension 0 of the residual stream is a constant 1 that no layer reads (zero input
    # columns) or writes (zero output rows); lm_head turns it into a large negative logit for
    # banned tokens.
    embed = normal(VOCAB, HIDDEN, std=0.5)
    embed[:, 0] = 1.0
    tensors = {"model.embed_tokens.weight": embed, "model.norm.weight": np.ones(HIDDEN, np.float32)}
    kv = NUM_KV_HEADS * HEAD_DIM
    for i in range(NUM_LAYERS):
        prefix = f"model.layers.{i}."
        layer = {
            "self_attn.q_proj.weight": normal(NUM_HEADS * HEAD_DIM, HIDDEN),
            "self_attn.k_proj.weight": normal(kv, HIDDEN),
            "self_attn.v_proj.weight": normal(kv, HIDDEN),
            "self_attn.o_proj.weight": normal(HIDDEN, NUM_HEADS * HEAD_DIM),
            "mlp.gate_proj.weight": normal(INTERMEDIATE, HIDDEN),
            "mlp.up_proj.weight": normal(INTERMEDIATE, HIDDEN),
            "mlp.down_proj.weight": normal(HIDDEN, INTERMEDIATE),
        }
        for name in ("q_proj", "k_proj", "v_proj"):
            layer[f"self_attn.{name}.weight"][:, 0] = 0.0
        for name in ("gate_proj", "up_proj"):
            layer[f"mlp.{name}.weight"][:, 0] = 0.0
        layer["self_attn.o_proj.weight"][0, :] = 0.0
        layer["mlp.down_proj.weight"][0, :] = 0.0
        layer["input_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        layer["post_attention_layernorm.weight"] = np.ones(HIDDEN, np.float32)
        tensors.update({prefix + name: value for name, value in layer.items()})
    lm_head = normal(VOCAB, HIDDEN, std=0.5)
    lm_head[:, 0] = 0.0
    lm_head[banned_token_ids, 0] = -20.0
    tensors["lm_head.weight"] = lm_head
    save_file(tensors, str(path), metadata={"format": "pt"})
