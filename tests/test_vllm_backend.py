"""evals/vllm_backend.py against a stand-in ``vllm`` module with vLLM's offline API (``LLM(model=..., ...)``,
``LLM.generate(list[TokensPrompt], sampling_params=SamplingParams(...), use_tqdm=...)`` -> ``RequestOutput``s
whose ``.outputs`` are ``CompletionOutput``s with ``.text``). The stand-in decodes with the tiny transformers model,
so the backend's outputs contract (tokenisation, k per prompt, order, stripping) is checked against the hf path.
vLLM itself is not installed here: what it would compute is not tested."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

from evals.generate import generate
from harmgate.config import GenerationConfig


@dataclass
class SamplingParams:  # the fields of vllm.SamplingParams this backend sets
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True


def fake_vllm(model, tok, calls):
    import torch

    class LLM:
        def __init__(self, model: str, tokenizer: str | None = None, dtype: str = "auto", seed: int = 0,
                     gpu_memory_utilization: float = 0.9, **kwargs):
            calls.append({"model": model, "tokenizer": tokenizer, "dtype": dtype,
                          "gpu_memory_utilization": gpu_memory_utilization, **kwargs})

        def generate(self, prompts, sampling_params=None, use_tqdm=True, lora_request=None):
            sp = sampling_params
            out = []
            for p in prompts:
                ids = torch.tensor([p["prompt_token_ids"]])
                texts = []
                for _ in range(sp.n):
                    new = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=sp.max_tokens,
                                         do_sample=sp.temperature > 0, eos_token_id=sp.stop_token_ids,
                                         pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
                    texts.append(types.SimpleNamespace(text=tok.decode(new, skip_special_tokens=sp.skip_special_tokens)))
                out.append(types.SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=texts))
            return out

    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    mod.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    mod.__spec__ = types.SimpleNamespace(name="vllm")  # importlib.util.find_spec reads it from sys.modules
    return mod


@pytest.fixture
def with_fake_vllm(tiny, monkeypatch):
    model, tok = tiny
    calls: list[dict] = []
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(model, tok, calls))
    model.name_or_path = "/models/tiny"  # what vLLM would load: the same weights' folder
    monkeypatch.setattr(model, "_harmgate_vllm_engine", None, raising=False)
    return model, tok, calls


def test_greedy_replies_match_the_hf_path_and_the_engine_is_built_once(with_fake_vllm):
    model, tok, calls = with_fake_vllm
    prompts = ["Hi", "How can I kill a Python process?", "Hi", "Write a script"]
    gen = GenerationConfig(max_new_tokens=8, batch_size=2)
    want = generate(model, tok, prompts, gen.model_copy(update={"backend": "hf"}))
    got = generate(model, tok, prompts, gen.model_copy(update={"backend": "vllm", "vllm_gpu_memory_utilization": 0.3}))
    again = generate(model, tok, ["Hi"], gen.model_copy(update={"backend": "vllm"}))
    assert got == want and again == [want[0]]
    assert calls == [{"model": "/models/tiny", "tokenizer": "/models/tiny", "dtype": "float32",
                      "gpu_memory_utilization": 0.3}]


def test_k_samples_are_one_request_each_and_raw_text_keeps_special_tokens(with_fake_vllm):
    model, tok, _ = with_fake_vllm
    from evals.vllm_backend import vllm_engine

    gen = GenerationConfig(max_new_tokens=4, temperature=1.0, top_p=0.9, backend="vllm")
    out = generate(model, tok, ["The quick brown fox", "Sure, here is"], gen, k=3, chat=False, seed=5)
    assert [len(o) for o in out] == [3, 3]
    params = vllm_engine(model, tok, gen).sampling_params(k=3, max_new_tokens=4, temperature=1.0, top_p=0.9, seed=5)
    assert (params.n, params.seed, params.top_p, params.stop_token_ids) == (3, 5, 0.9, [tok.eos_token_id])
    greedy = vllm_engine(model, tok, gen).sampling_params(k=1, max_new_tokens=4, temperature=0.0, top_p=0.9, seed=5)
    assert (greedy.temperature, greedy.top_p, greedy.seed) == (0.0, 1.0, None)


def test_missing_vllm_is_a_clear_error_before_any_model_loads(monkeypatch, shared_data):
    from evals.runner import check_suites
    from evals.vllm_backend import VLLMUnavailable
    from harmgate.config import parse_config

    monkeypatch.delitem(sys.modules, "vllm", raising=False)  # not installed here; a stand-in must not linger
    config = parse_config({
        "name": "t", "model": {"base": "harmgate/tiny-random-llama"},
        "data": {"sources": [{"id": "tatsu-lab/alpaca", "format": "instruction"}]},
        "evals": {"generation": {"backend": "vllm"}, "suites": [{"name": "advbench_refusal"}]},
        "policy": {"kpis": [{"name": "k", "metric": "advbench_refusal.compliance_rate", "direction": "lower",
                             "max": 1}]},
    })
    with pytest.raises(VLLMUnavailable, match=r"pip install 'harmgate\[vllm\]'"):
        check_suites(config)
