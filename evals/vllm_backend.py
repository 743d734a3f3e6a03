"""vLLM's offline engine as an evaluation generation backend (``evals.generation.backend: vllm``), for machines
that have it (``pip install 'harmgate[vllm]'``), the way lm-evaluation-harness offers its ``vllm`` model type.

Same outputs contract as the other engines (evals/generate.py): the prompts are tokenised here exactly as for
``model.generate`` (chat-rendered text without extra special tokens, raw text with them) and handed to vLLM as
token ids (``TokensPrompt``, as lm-eval does), ``k`` samples per prompt are one request with ``n=k``, and each
reply is decoded without special tokens. The engine loads the same weights as the transformers model (its
``name_or_path``) next to it: likelihood suites keep using the transformers model, generation goes to vLLM, so
``vllm_gpu_memory_utilization`` leaves room for both.

Differences to know: vLLM stops at every end token of the model's generation_config as well as the tokenizer's
(``model.generate`` here stops at the tokenizer's only), and its kernels round differently, so greedy replies can
differ at near-ties, as between batch sizes of one engine. Sampling is seeded per request (``SamplingParams.seed``).
Not run in this repository's CI or on its GPU machine (vLLM cannot be installed there): tests/test_vllm_backend.py
checks this module against a stand-in with vLLM's call signatures, not vLLM itself.
"""

from __future__ import annotations

import importlib.util
from typing import Any

INSTALL_HINT = "pip install 'harmgate[vllm]' (vLLM needs a CUDA GPU and pulls its own torch build)"


class VLLMUnavailable(RuntimeError):
    """backend: vllm was asked for and the vllm package is not importable."""


def check_available() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise VLLMUnavailable(f"evals.generation.backend is 'vllm' but the vllm package is not installed: {INSTALL_HINT}")


class VLLMEngine:
    """One ``vllm.LLM`` for one model folder or hub id."""

    def __init__(self, model_ref: str, tokenizer, *, dtype: str = "auto", gpu_memory_utilization: float = 0.45,
                 seed: int = 0, max_model_len: int | None = None, llm_kwargs: dict[str, Any] | None = None):
        check_available()
        from vllm import LLM

        self.model_ref = model_ref
        self.tokenizer = tokenizer
        kwargs = {"model": model_ref, "tokenizer": model_ref, "dtype": dtype, "seed": seed,
                  "gpu_memory_utilization": gpu_memory_utilization}
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs, **(llm_kwargs or {}))

    def sampling_params(self, *, k: int, max_new_tokens: int, temperature: float, top_p: float, seed: int):
        from vllm import SamplingParams

        sampling = temperature > 0
        return SamplingParams(n=k, temperature=temperature if sampling else 0.0, top_p=top_p if sampling else 1.0,
                              max_tokens=max_new_tokens, seed=seed if sampling else None,
                              stop_token_ids=[self.tokenizer.eos_token_id], skip_special_tokens=True)

    def generate(self, texts: list[str], *, k: int, max_new_tokens: int, temperature: float, top_p: float,
                 seed: int, add_special_tokens: bool) -> list[list[str]]:
        from vllm import TokensPrompt

        ids = self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
        params = self.sampling_params(k=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                      seed=seed)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], sampling_params=params,
                                    use_tqdm=True)
        if len(outputs) != len(texts):
            raise RuntimeError(f"vLLM returned {len(outputs)} results for {len(texts)} prompts")
        return [[c.text for c in out.outputs] for out in outputs]


def vllm_engine(model, tokenizer, gen) -> VLLMEngine:
    """The engine for this loaded transformers model (same weights: its ``name_or_path``), built once and kept on
    the model object like the static decoder."""
    engine = getattr(model, "_harmgate_vllm_engine", None)
    if engine is not None:
        return engine
    ref = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not ref:
        raise VLLMUnavailable("backend vllm loads the model by path or hub id, and this in-memory model has neither "
                              "(name_or_path is empty)")
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    engine = VLLMEngine(ref, tokenizer, dtype=dtype, gpu_memory_utilization=gen.vllm_gpu_memory_utilization)
    model._harmgate_vllm_engine = engine
    return engine
