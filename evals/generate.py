"""Batched generation for evaluation: one model, many prompts, k samples each, on CPU or GPU.

Three engines behind one call (``evals.generation.backend``; docs/PERFORMANCE.md):

- ``hf``: transformers ``model.generate``, left-padded batches of ``batch_size`` sorted by length (CPU default).
- ``static``: :mod:`evals.fastgen`, a preallocated KV cache, large length-bucketed batches (``static_batch_size``)
  and a decode step compiled into CUDA graphs (CUDA default). Greedy replies are the same computation as ``hf``'s.
- ``vllm``: :mod:`evals.vllm_backend`, vLLM's offline engine, for users who have it installed.

Whatever the engine, results come back in the caller's order, ``k`` per prompt; identical greedy prompts are
generated once. Greedy decoding is deterministic; sampling is seeded (reproducible on the same hardware, engine
and batch shapes).
"""

from __future__ import annotations

from typing import Iterable

from tqdm.auto import tqdm

from evals.parallel import seed_for, shard_map
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


def choose_backend(model, gen: GenerationConfig) -> str:
    """The engine for this model and config: ``gen.backend``, with ``auto`` resolved (static on a CUDA GPU unless
    the model needs something only model.generate does, hf otherwise)."""
    from evals.fastgen import unsupported_settings

    if gen.backend != "auto":
        return gen.backend
    device = next(model.parameters()).device
    if device.type != "cuda":
        return "hf"
    if unsupported_settings(model):
        return "hf"  # e.g. a repetition penalty in the model's generation_config: only model.generate applies it
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not getattr(quantizer, "is_compileable", False):
        return "hf"  # bitsandbytes 4-bit: no compiled step, so the static loop would not pay
    return "static"


def static_decoder(model, gen: GenerationConfig):
    """The model's :class:`~evals.fastgen.StaticDecoder`, built once and kept on the model: its caches and
    compiled graphs serve every later suite of the same loaded model."""
    from evals.fastgen import StaticDecoder

    decoder = getattr(model, "_harmgate_static_decoder", None)
    on_gpu = next(model.parameters()).device.type == "cuda"
    compile_ = gen.compile and on_gpu
    if (decoder is None or decoder.max_rows != gen.static_batch_size or (decoder.compile and not compile_)
            or (decoder.grouped_attention and not gen.grouped_attention)):
        decoder = StaticDecoder(model, compile=compile_, max_rows=gen.static_batch_size,
                                grouped_attention=gen.grouped_attention)
        model._harmgate_static_decoder = decoder
    return decoder


def generate(model, tokenizer, prompts: list[Prompt], gen: GenerationConfig, *, k: int = 1, chat: bool = True,
             seed: int = 0, desc: str = "generating", system_prompt: str | None = None) -> list[list[str]]:
    """``k`` continuations of each prompt. chat=True renders each prompt (a user turn, or a list of messages)
    with the chat template, after ``system_prompt`` if given; chat=False continues the raw text (RealToxicity-
    Prompts, BOLD; a system prompt does not apply)."""
    if k > 1 and gen.temperature == 0:
        raise ValueError(f"k={k} samples per prompt need temperature > 0 (greedy decoding repeats itself)")
    prepare_tokenizer(tokenizer)
    if not chat and (system_prompt or not all(isinstance(p, str) for p in prompts)):
        raise ValueError("raw continuation (chat=False) takes plain text prompts and no system prompt")
    texts = render_prompts(tokenizer, prompts, system_prompt) if chat else list(prompts)
    # Identical greedy prompts (a request in two sources, a repeated MT-bench turn) are generated once.
    unique = list(dict.fromkeys(texts)) if gen.temperature == 0 else texts
    backend = choose_backend(model, gen)
    run = {"hf": _generate_hf, "static": _generate_static, "vllm": _generate_vllm}[backend]
    # Under a multi-process launch (evals/parallel.py) each process generates a share; all get every reply.
    outputs = shard_map(unique, lambda shard: run(model, tokenizer, shard, gen, k=k, chat=chat, seed=seed_for(seed),
                                                  desc=desc), cost=len)
    if unique is texts:
        return outputs
    by_text = dict(zip(unique, outputs))
    return [list(by_text[t]) for t in texts]


def _finish(text: str, chat: bool) -> str:
    return text.strip() if chat else text


def _generate_hf(model, tokenizer, texts: list[str], gen: GenerationConfig, *, k: int, chat: bool, seed: int,
                 desc: str) -> list[list[str]]:
    import torch

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
                outputs[i] = [_finish(t, chat) for t in texts_out[j * k:(j + 1) * k]]
            bar.update(len(idx))
    return outputs


def _generate_static(model, tokenizer, texts: list[str], gen: GenerationConfig, *, k: int, chat: bool, seed: int,
                     desc: str) -> list[list[str]]:
    # Same tokenisation as _generate_hf (a chat template adds its own markers); the k samples of a prompt are k
    # rows of the same batches, so sampling k continuations is one batched run.
    encoded = tokenizer(texts, add_special_tokens=not chat)["input_ids"]
    rows = [ids for ids in encoded for _ in range(k)]
    decoder = static_decoder(model, gen)
    with tqdm(total=len(rows), desc=desc, unit="row", leave=False) as bar:
        new = decoder.generate(rows, max_new_tokens=gen.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id, temperature=gen.temperature, top_p=gen.top_p,
                               seed=seed, progress=bar.update)
    decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
    return [[_finish(t, chat) for t in decoded[i * k:(i + 1) * k]] for i in range(len(texts))]


def _generate_vllm(model, tokenizer, texts: list[str], gen: GenerationConfig, *, k: int, chat: bool, seed: int,
                   desc: str) -> list[list[str]]:
    from evals.vllm_backend import vllm_engine

    engine = vllm_engine(model, tokenizer, gen)
    return [[_finish(t, chat) for t in outs]
            for outs in engine.generate(texts, k=k, max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                                        top_p=gen.top_p, seed=seed, add_special_tokens=not chat)]


def generate_replies(model, tokenizer, prompts: list[Prompt], gen: GenerationConfig, *, desc: str = "generating",
                     system_prompt: str | None = None) -> list[str]:
    """One chat reply per prompt (the service and one-sample suites)."""
    return [o[0] for o in generate(model, tokenizer, prompts, gen, desc=desc, system_prompt=system_prompt)]
