"""Batched generation with left padding: one model, many prompts, k samples each, on CPU or GPU.

Prompts are sorted by length so each batch pads little, then results are put back in the caller's order.
Greedy decoding is deterministic; sampling is seeded (reproducible on the same hardware and batch size).
"""

from __future__ import annotations

from typing import Iterable

from tqdm.auto import tqdm

from harmgate.config import GenerationConfig


Prompt = str | list[dict[str, str]]  # one user turn, or a whole conversation ending with a user turn


def with_system_prompt(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """``messages`` with ``system_prompt`` first; a conversation's own system message is kept after it (one
    system message: many chat templates accept no second one)."""
    messages = [dict(m) for m in messages]
    if not system_prompt:
        return messages
    if messages and messages[0].get("role") == "system":
        return [{"role": "system", "content": f"{system_prompt}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": system_prompt}, *messages]


def render_prompts(tokenizer, prompts: Iterable[Prompt], system_prompt: str | None = None) -> list[str]:
    rendered = []
    for prompt in prompts:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        rendered.append(tokenizer.apply_chat_template(with_system_prompt(messages, system_prompt), tokenize=False,
                                                      add_generation_prompt=True))
    return rendered


def prepare_tokenizer(tokenizer) -> None:
    """Left padding (decoder-only models continue from the right edge) and a pad token (Llama 3 has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def generate(model, tokenizer, prompts: list[Prompt], gen: GenerationConfig, *, k: int = 1, chat: bool = True,
             seed: int = 0, desc: str = "generating", system_prompt: str | None = None) -> list[list[str]]:
    """``k`` continuations of each prompt. chat=True renders each prompt (a user turn, or a list of messages)
    with the chat template, after ``system_prompt`` if given; chat=False continues the raw text (RealToxicity-
    Prompts, BOLD; a system prompt does not apply)."""
    import torch

    if k > 1 and gen.temperature == 0:
        raise ValueError(f"k={k} samples per prompt need temperature > 0 (greedy decoding repeats itself)")
    prepare_tokenizer(tokenizer)
    if not chat and (system_prompt or not all(isinstance(p, str) for p in prompts)):
        raise ValueError("raw continuation (chat=False) takes plain text prompts and no system prompt")
    texts = render_prompts(tokenizer, prompts, system_prompt) if chat else list(prompts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outputs: list[list[str]] = [[] for _ in texts]
    device = next(model.parameters()).device
    sampling = gen.temperature > 0
    if sampling:
        torch.manual_seed(seed)
    # A batch holds batch_size sequences: with k samples each, fewer prompts per batch.
    per_batch = max(1, gen.batch_size // k)
    with torch.inference_mode(), tqdm(total=len(texts), desc=desc, unit="prompt", leave=False) as bar:
        for start in range(0, len(order), per_batch):
            idx = order[start:start + per_batch]
            batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                              add_special_tokens=not chat).to(device)  # a chat template adds its own markers
            out = model.generate(
                **batch, max_new_tokens=gen.max_new_tokens, do_sample=sampling, num_return_sequences=k,
                temperature=gen.temperature if sampling else None, top_p=gen.top_p if sampling else None,
                top_k=None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            texts_out = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for j, i in enumerate(idx):
                outputs[i] = [t.strip() if chat else t for t in texts_out[j * k:(j + 1) * k]]
            bar.update(len(idx))
    return outputs


def generate_replies(model, tokenizer, prompts: list[Prompt], gen: GenerationConfig, *, desc: str = "generating",
                     system_prompt: str | None = None) -> list[str]:
    """One chat reply per prompt (the service and one-sample suites)."""
    return [o[0] for o in generate(model, tokenizer, prompts, gen, desc=desc, system_prompt=system_prompt)]
