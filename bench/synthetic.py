"""What the training benchmarks run on: a model shape, a tokenizer for it, random weights, and token data with a
realistic length distribution. Random weights and token ids cost the same FLOPs and bytes as trained ones.

The tokenizer is a word-level vocabulary ``<|endoftext|> <|im_start|> <|im_end|> w3 w4 ...`` of exactly the
shape's vocab size with a ChatML template, so every token id the model can emit decodes, and chat rendering,
padding and generation run through the same code as with a real tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # pad, bos, eos (ChatML, like align.tiny)
FIRST_WORD_ID = len(SPECIALS)


@dataclass(frozen=True)
class Shape:
    name: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_position_embeddings: int = 131072
    rope_theta: float = 500000.0

    def n_params(self) -> int:
        """All parameters (untied embeddings and LM head included), as the 6·N·tokens FLOP rule counts them."""
        h, kv = self.hidden_size, self.hidden_size // self.num_attention_heads * self.num_key_value_heads
        attn = h * h * 2 + h * kv * 2
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        return self.num_hidden_layers * per_layer + 2 * self.vocab_size * h + h


SHAPES = {
    # meta-llama/Llama-3.1-8B's config.json
    "llama-3.1-8b": Shape("llama-3.1-8b", vocab_size=128256, hidden_size=4096, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336),
    # the same architecture, small enough for a CPU test
    "tiny": Shape("tiny", vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=128, max_position_embeddings=2048),
}


def build_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from align.tiny import CHATML_TEMPLATE

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(FIRST_WORD_ID, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def llama_config(shape: Shape, dtype: str):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, max_position_embeddings=shape.max_position_embeddings,
        rope_theta=shape.rope_theta, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1,
        eos_token_id=2, pad_token_id=0, torch_dtype=dtype,
    )


def save_random_model(shape: Shape, dest: Path, *, seed: int = 0, device: str = "cpu") -> dict:
    """Randomly initialise ``shape`` directly on ``device`` (bf16 on a GPU: 8B parameters never touch the CPU
    before saving) and save it with its tokenizer as a normal Hugging Face folder; returns timings."""
    import time

    import torch
    from transformers import LlamaForCausalLM

    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    started = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(llama_config(shape, str(dtype).removeprefix("torch.")), dtype=dtype)
    if device != "cpu":
        torch.cuda.synchronize()
    built = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, max_shard_size="4GB")
    build_tokenizer(shape.vocab_size).save_pretrained(dest)
    saved = time.perf_counter()
    n = sum(p.numel() for p in model.parameters())
    del model
    if device != "cpu":
        torch.cuda.empty_cache()
    return {"shape": asdict(shape), "params": n, "init_seconds": round(built - started, 2),
            "save_seconds": round(saved - built, 2), "dtype": str(dtype)}


def sample_lengths(n: int, *, mu: float = 5.5, sigma: float = 0.7, low: int = 32, high: int = 1024,
                   seed: int = 0) -> list[int]:
    """Token lengths like chat SFT data: lognormal(mu, sigma) clipped to [low, high] (median e^mu ~ 245)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(np.round(rng.lognormal(mu, sigma, n)), low, high)]


def token_examples(lengths: list[int], vocab_size: int, *, prompt_fraction: float = 0.3, seed: int = 0) -> list[dict]:
    """Pre-tokenized prompt/completion examples (TRL's processed form: ``input_ids`` + ``completion_mask``); the
    first ``prompt_fraction`` of each is prompt. Ids avoid the special tokens, so padding is never a real token."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    out = []
    for n in lengths:
        ids = rng.integers(FIRST_WORD_ID, vocab_size, size=n).tolist()
        p = max(1, min(n - 1, math.floor(n * prompt_fraction)))
        out.append({"input_ids": ids, "completion_mask": [0] * p + [1] * (n - p)})
    return out


def word_prompts(n: int, vocab_size: int, *, mu: float = 3.5, sigma: float = 0.5, low: int = 8, high: int = 256,
                 seed: int = 0) -> list[str]:
    """Text prompts for generation benchmarks: random words of the synthetic vocabulary (median ~33 tokens)."""
    import numpy as np

    rng = np.random.default_rng(seed + 2)
    lengths = sample_lengths(n, mu=mu, sigma=sigma, low=low, high=high, seed=seed)
    return [" ".join(f"w{i}" for i in rng.integers(FIRST_WORD_ID, vocab_size, size=k)) for k in lengths]
