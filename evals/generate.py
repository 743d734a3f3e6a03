"""Batched chat generation with left padding: one model, many prompts, deterministic when greedy."""

from __future__ import annotations

from typing import Iterable

from tqdm.auto import tqdm

from harmgate.config import GenerationConfig


def render_prompts(tokenizer, prompts: Iterable[str], system_prompt: str | None = None) -> list[str]:
    rendered = []
    for prompt in prompts:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": prompt}]
        rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return rendered


def generate_replies(model, tokenizer, prompts: list[str], gen: GenerationConfig, *, desc: str = "generating",
                     system_prompt: str | None = None) -> list[str]:
    import torch

    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    texts = render_prompts(tokenizer, prompts, system_prompt)
    # Sort by length so each batch pads little; restore the original order at the end.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    replies: list[str | None] = [None] * len(texts)
    device = next(model.parameters()).device
    sampling = gen.temperature > 0
    with torch.inference_mode(), tqdm(total=len(texts), desc=desc, unit="prompt", leave=False) as bar:
        for start in range(0, len(order), gen.batch_size):
            idx = order[start:start + gen.batch_size]
            batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            out = model.generate(
                **batch, max_new_tokens=gen.max_new_tokens, do_sample=sampling,
                temperature=gen.temperature if sampling else None, top_p=gen.top_p if sampling else None,
                top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            for i, seq in zip(idx, new_tokens):
                replies[i] = tokenizer.decode(seq, skip_special_tokens=True).strip()
            bar.update(len(idx))
    return [r or "" for r in replies]
