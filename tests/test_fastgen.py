"""The static-cache generation path (evals/fastgen.py) against today's model.generate path, on a tiny random Llama
in float32: greedy replies token-identical (end tokens, short last batches and split batches included), seeded
sampling reproducible, k samples as rows of one run, identical prompts generated once, engine choice."""

from __future__ import annotations

from collections import Counter

import pytest

from evals.fastgen import StaticDecoder, prompt_bucket, row_bucket, unsupported_settings
from evals.generate import choose_backend, generate
from harmgate.config import GenerationConfig

PROMPTS = ["Hi", "How can I kill a Python process?", "Write a script", "Here is a recipe for a healthy breakfast",
           "Tell me a story about a dragon who learns to code in Python and then teaches it to " * 2]


def hf_ids(model, tok, rows, max_new_tokens, eos):
    """model.generate one row at a time (no padding at all): the reference token ids, up to the first eos."""
    import torch

    out = []
    for ids in rows:
        gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                             pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        end = next((i + 1 for i, t in enumerate(gen) if t == eos), len(gen))
        out.append(gen[:end])
    return out


def test_greedy_static_replies_equal_model_generate(tiny):
    model, tok = tiny
    hf = generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=16, batch_size=2, backend="hf"))
    static = generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=16, static_batch_size=8, backend="static"))
    assert static == hf
    stats = model._harmgate_static_decoder.stats
    assert stats.compiled is False and stats.rows == len(PROMPTS) and stats.padded_rows == 3  # 5 rows -> 8


def test_end_tokens_split_batches_and_filler_rows_keep_replies_identical(tiny):
    model, tok = tiny
    rows = [tok(p)["input_ids"] for p in PROMPTS + PROMPTS[:3]]
    # an end token the model really emits: the most common token of its free-running replies
    free = hf_ids(model, tok, rows[:5], 12, eos=tok.eos_token_id)
    eos = Counter(t for r in free for t in r[1:]).most_common(1)[0][0]
    want = hf_ids(model, tok, rows, 12, eos)
    assert any(len(w) < 12 for w in want), "the chosen end token must end some replies early"
    # a KV budget of 3 rows of the longest shape: several batches, a short last one filled up with copies
    longest = prompt_bucket(max(map(len, rows))) + 12
    from evals.fastgen import kv_bytes_per_token

    budget = 3 * longest * kv_bytes_per_token(model.config, 4)
    decoder = StaticDecoder(model, compile=False, max_rows=4, kv_budget_bytes=budget, sync_every=2)
    got = decoder.generate(rows, max_new_tokens=12, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    assert got == want
    assert decoder.stats.batches >= 3 and decoder.stats.new_tokens == sum(map(len, want))


class RecordingDecoder(StaticDecoder):
    """Keeps the logits every token was picked from."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def _pick(self, logits, temperature, top_p, generator):
        self.seen.append(logits.detach().clone())
        return StaticDecoder._pick(logits, temperature, top_p, generator)


@pytest.mark.parametrize("grouped", [True, False])
def test_each_step_has_the_logits_of_a_plain_forward_pass_even_without_padding(tiny, grouped):
    """Every prompt exactly one bucket wide: no left padding anywhere, so only the not-yet-written cache slots keep
    transformers from dropping the attention mask (and attending to empty slots) at a decode step."""
    import torch

    model, tok = tiny
    full_width = [[(7 * i + j) % 200 + 10 for j in range(32)] for i in range(3)]
    for rows in (full_width, [full_width[0][:20], full_width[1]]):  # then a batch with a padded row
        decoder = RecordingDecoder(model, compile=False, max_rows=4, grouped_attention=grouped)
        new = decoder.generate(rows, max_new_tokens=6, eos_token_id=-1, pad_token_id=tok.pad_token_id)
        picked = torch.stack(decoder.seen, dim=1)  # [batch rows, steps, vocab]; one batch, rows in length order
        for r, (prompt, out) in enumerate(zip(rows, new)):
            with torch.no_grad():
                full = model(torch.tensor([prompt + out])).logits[0, len(prompt) - 1: len(prompt) - 1 + len(out)]
            torch.testing.assert_close(picked[r, : len(out)].float(), full.float(), atol=1e-4, rtol=1e-4)


def test_grouped_decode_attention_gives_the_same_replies_and_can_be_turned_off(tiny):
    model, tok = tiny
    rows = [tok(p)["input_ids"] for p in PROMPTS]
    want = hf_ids(model, tok, rows, 10, eos=tok.eos_token_id)
    grouped = StaticDecoder(model, compile=False, max_rows=8)
    assert grouped.generate(rows, max_new_tokens=10, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id) == want
    assert grouped.stats.attention == "harmgate_grouped_decode"
    plain = StaticDecoder(model, compile=False, max_rows=8, grouped_attention=False)
    assert plain.generate(rows, max_new_tokens=10, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id) == want
    assert plain.stats.attention == model.config._attn_implementation == "sdpa"


def test_sampling_is_seeded_k_rows_differ_and_tiny_top_p_is_greedy(tiny):
    model, tok = tiny
    gen = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=0.9, static_batch_size=8, backend="static")
    a = generate(model, tok, ["The quick brown fox", "Sure, here is"], gen, k=3, chat=False, seed=1)
    b = generate(model, tok, ["The quick brown fox", "Sure, here is"], gen, k=3, chat=False, seed=1)
    c = generate(model, tok, ["The quick brown fox", "Sure, here is"], gen, k=3, chat=False, seed=2)
    assert a == b and a != c and [len(o) for o in a] == [3, 3] and len(set(a[0])) > 1
    # top-p so small that only the most likely token survives: sampling must equal greedy decoding
    narrow = gen.model_copy(update={"top_p": 1e-9})
    greedy = gen.model_copy(update={"temperature": 0.0})
    sampled = generate(model, tok, PROMPTS, narrow, seed=3)
    assert sampled == generate(model, tok, PROMPTS, greedy)


def test_identical_greedy_prompts_are_generated_once(tiny):
    model, tok = tiny
    gen = GenerationConfig(max_new_tokens=5, static_batch_size=8, backend="static")
    model._harmgate_static_decoder = None
    out = generate(model, tok, ["Hi", "Write a script", "Hi", "Hi"], gen)
    assert out[0] == out[2] == out[3]
    assert model._harmgate_static_decoder.stats.rows == 2


def test_shapes_come_from_few_buckets():
    assert [prompt_bucket(n) for n in (1, 32, 33, 48, 49, 64, 65, 96, 97, 200, 300)] == \
        [32, 32, 48, 48, 64, 64, 96, 96, 128, 256, 384]
    assert all(n <= prompt_bucket(n) <= max(32, 3 * n // 2 + 1) for n in range(1, 5000))  # at most a third padding
    assert [row_bucket(n, 256, compiled=False) for n in (1, 3, 200, 256, 300)] == [1, 4, 256, 256, 256]
    assert [row_bucket(n, 256, compiled=True) for n in (1, 3, 200, 256)] == [256] * 4


def test_backend_choice(tiny):
    model, _ = tiny
    assert choose_backend(model, GenerationConfig()) == "hf"  # auto on a CPU
    assert choose_backend(model, GenerationConfig(backend="static")) == "static"
    assert unsupported_settings(model) == {}
    model.generation_config.repetition_penalty = 1.3
    try:
        assert unsupported_settings(model) == {"repetition_penalty": 1.3}
    finally:
        model.generation_config.repetition_penalty = 1.0


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ValueError, match="backend"):
        GenerationConfig(backend="tgi")


def test_a_failing_compiled_step_falls_back_without_grouped_attention_then_eagerly(tiny, monkeypatch):
    model, tok = tiny
    rows = [tok(p)["input_ids"] for p in PROMPTS[:3]]
    want = hf_ids(model, tok, rows, 6, eos=tok.eos_token_id)
    seen = []

    def broken(self, config):
        def step(**kwargs):
            seen.append(self.config._attn_implementation)
            raise RuntimeError("no graph today")
        return step

    monkeypatch.setattr(type(model), "get_compiled_call", broken)
    decoder = StaticDecoder(model, compile=True, max_rows=4)
    got = decoder.generate(rows, max_new_tokens=6, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert got == want
    assert seen == ["harmgate_grouped_decode", "sdpa"]  # compiled with grouped attention, compiled with SDPA
    assert decoder.compile is False and "no graph today" in decoder.stats.compile_error
