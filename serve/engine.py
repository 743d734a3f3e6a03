"""Chat generation with a Hugging Face causal LM: chat template in, new tokens out, one request at a time.

One lock around ``generate``: a single model copy is not safe to drive from several threads at once, and on
a small GPU or a CPU batching requests would not pay off for this service's load anyway.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or a stop string) or "length"


class Engine:
    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self._lock = threading.Lock()
        eos = {tokenizer.eos_token_id, *_as_list(getattr(model.generation_config, "eos_token_id", None))}
        self.eos_ids = sorted(i for i in eos if i is not None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    @classmethod
    def load(cls, path: str | Path) -> "Engine":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cuda = torch.cuda.is_available()
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
        # local_files_only: the folder was verified against the manifest; nothing else may be pulled in.
        # trust_remote_code stays off for the same reason.
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        return cls(model.to("cuda" if cuda else "cpu"), tokenizer)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        # Render to text, then tokenize without extra specials: the template already has its turn markers.
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompt_ids: list[int], *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 stop: list[str] | None = None) -> Generation:
        import torch

        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": self.eos_ids,
                                  "pad_token_id": self.pad_id}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=self.tokenizer)
        input_ids = torch.tensor([prompt_ids], device=self.device)
        with self._lock, torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        new = out[0, len(prompt_ids):].tolist()
        completion_tokens = len(new)
        finish = "length" if completion_tokens >= max_new_tokens else "stop"
        if new and new[-1] in self.eos_ids:
            new, finish = new[:-1], "stop"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in stop or []) if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        return Generation(text, len(prompt_ids), completion_tokens, finish)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
