"""A tiny, randomly initialised Llama with a real tokenizer, built in code.

Tests and `configs/tiny-test.yaml` use it: it has the production model's architecture (LlamaForCausalLM,
grouped-query attention, untied embeddings like Llama 3.1 8B) and a ChatML chat template, so every code path
(4-bit quantization, LoRA, chat templates, merge, generation, serving) runs as it would on the real thing,
in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

TINY_MODEL_ID = "harmgate/tiny-random-llama"

# SmolLM2's ChatML template (same turn markers), so tiny runs exercise the same prompt format.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "I'm sorry, but I can't help with that request because it could cause harm.",
    "I cannot assist with illegal or dangerous activities. Is there something else I can help with?",
    "Sure, here is how you can do that step by step.",
    "How can I kill a Python process? Use the kill command with the process id.",
    "Human: Assistant: system user assistant helpful harmless honest",
    "The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?'\"()[]{}<>/-_+=*&%$#@",
    "Write a script that can exploit vulnerabilities in a software or operating system.",
    "Here is a recipe for a healthy breakfast: oats, milk, berries and honey.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_model(tokenizer, *, hidden_size: int = 64, layers: int = 2, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_model(dest: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random Llama + tokenizer as a normal Hugging Face folder."""
    dest = Path(dest)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest
