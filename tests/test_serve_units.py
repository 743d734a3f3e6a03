"""The service's parts in-process, where a live server cannot pin a case down: the streaming moderation gate on
text with sentence ends, fail-closed moderation, key checks, and the batcher's queueing and cancellation."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from harmgate.config import ModerationConfig, ServiceConfig
from serve.auth import ApiKeys, AuthConfigError, open_api_problem
from serve.blocklist import BlocklistScorer
from serve.moderation import Moderator


@pytest.fixture()
def blocklist(tmp_path) -> Path:
    path = tmp_path / "terms.txt"
    path.write_text("# never say\nforbidden\n")
    return path


def _grow(gate, text: str, step: int = 3) -> tuple[str, object]:
    """Feed ``text`` to the gate a few characters at a time, as tokens arrive; (everything sent, blocking result)."""
    sent = ""
    for end in range(step, len(text) + step, step):
        delta, blocked = gate.update(text[:end], final=False)
        sent += delta
        if blocked is not None:
            return sent, blocked
    delta, blocked = gate.update(text, final=True)
    return sent + delta, blocked


def test_stream_gate_releases_only_moderated_sentences(blocklist):
    gate = Moderator(BlocklistScorer(blocklist), ModerationConfig()).gate()
    sent, blocked = _grow(gate, "Hello there. You are nice!\nNow the forbidden part. And more.")
    assert sent == "Hello there. You are nice!\n"  # every sentence before the bad one, none of it
    assert blocked is not None and blocked.flagged and blocked.score == 1.0

    gate = Moderator(BlocklistScorer(blocklist), ModerationConfig()).gate()
    sent, blocked = _grow(gate, "Hello there. You are nice. The end")
    assert sent == "Hello there. You are nice. The end" and blocked is None and gate.last.flagged is False


def test_stream_gate_never_sends_part_of_a_term_split_across_sentences(blocklist):
    blocklist.write_text("bad. word\n")  # a term spanning a sentence end is caught on the cumulative text
    gate = Moderator(BlocklistScorer(blocklist), ModerationConfig()).gate()
    sent, blocked = _grow(gate, "It is bad. word again. Then", step=1)
    assert blocked is not None and "word" not in sent


def test_reply_granularity_holds_everything_until_scored(blocklist):
    gate = Moderator(BlocklistScorer(blocklist), ModerationConfig(stream_granularity="reply")).gate()
    assert gate.update("One. Two. Three. ", final=False) == ("", None)
    assert gate.update("One. Two. Three. Four", final=True) == ("One. Two. Three. Four", None)


def test_stream_gate_releases_long_text_without_sentence_ends(blocklist):
    gate = Moderator(BlocklistScorer(blocklist), ModerationConfig()).gate()
    text = "word " * 60  # 300 characters, no sentence end
    delta, blocked = gate.update(text, final=False)
    assert blocked is None and 0 < len(delta) <= len(text) and delta.endswith(" ")


def test_stream_gate_waits_for_a_whole_character(blocklist):
    gate = Moderator(BlocklistScorer(blocklist), ModerationConfig()).gate()
    delta, _ = gate.update("Caf\ufffd", final=False)  # the decoder's placeholder for a half-decoded character
    assert delta == ""


class _Broken:
    name = "broken"

    def __init__(self, result):
        self.result = result

    def score(self, texts):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.mark.parametrize("result", [RuntimeError("model crashed"), [1.5], [float("nan")], [], [0.1, 0.2]])
def test_moderation_fails_closed(result):
    verdict = Moderator(_Broken(result), ModerationConfig()).check("some reply")
    assert verdict.flagged and verdict.error and verdict.as_json()["error"]


def test_threshold_is_strictly_above():
    class Fixed:
        name = "fixed"

        def score(self, texts):
            return [0.5] * len(texts)

    assert not Moderator(Fixed(), ModerationConfig(threshold=0.5)).check("x").flagged
    assert Moderator(Fixed(), ModerationConfig(threshold=0.49)).check("x").flagged


def test_blocklist_rereads_its_file(blocklist):
    scorer = BlocklistScorer(blocklist)
    assert scorer.score(["a FORBIDDEN word", "fine"]) == [1.0, 0.0]
    blocklist.write_text("fine\n")
    assert scorer.score(["a FORBIDDEN word", "fine"]) == [0.0, 1.0]


def test_api_keys(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# rotated 2026-11\n" + "b" * 20 + "\n")
    keys = ApiKeys.from_config(ServiceConfig(api_keys_file=str(key_file)), {"HARMGATE_API_KEYS": "a" * 16 + ", "})
    assert keys.enabled and len(keys) == 2
    assert keys.check("Bearer " + "a" * 16) and keys.check("Bearer " + "b" * 20)
    for header in (None, "", "Bearer", "Bearer " + "a" * 15, "Bearer " + "a" * 17, "bearer " + "a" * 16, "a" * 16):
        assert not keys.check(header), header
    assert not ApiKeys.from_config(ServiceConfig(), {}).enabled
    with pytest.raises(AuthConfigError, match=r"keys:2 is shorter than 16"):
        key_file.write_text("# c\nshort\n")
        ApiKeys.from_config(ServiceConfig(api_keys_file=str(key_file)), {})
    open_keys = ApiKeys([])
    assert open_api_problem(open_keys, "127.0.0.1", ServiceConfig()) is None
    assert "0.0.0.0" in open_api_problem(open_keys, "0.0.0.0", ServiceConfig())
    assert open_api_problem(keys, "0.0.0.0", ServiceConfig()) is None


# -- batcher -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from serve.engine import Engine

    return Engine.load(tiny_model_dir)


def test_batcher_mixes_sampling_settings_and_matches_single_runs(engine):
    """Settings apply per row: greedy, seeded sampling and logprobs share one batch, and each row gets exactly
    what it got alone (a seed is repeatable whatever else is in the batch)."""
    from serve.batcher import Batcher
    from serve.engine import SamplingParams

    prompts = [engine.encode_chat([{"role": "user", "content": "hi " * i}]) for i in range(1, 5)]
    settings = [SamplingParams(max_new_tokens=6 + len(p) % 3) for p in prompts]
    settings.append(SamplingParams(max_new_tokens=5, temperature=0.7, top_p=0.9, seed=11, logprobs=True,
                                   top_logprobs=2))
    prompts.append(prompts[0])
    alone = []
    for p, params in zip(prompts, settings):
        single = Batcher(engine, max_batch_size=1, wait_s=0, max_queued=4)
        t = single.submit(p, params)
        t.wait(60)
        single.close()
        alone.append((t.tokens, t.finish_reason, [lp.token for lp in t.logprobs]))

    sizes: list[int] = []
    gate = threading.Event()
    batcher = Batcher(engine, max_batch_size=8, wait_s=0.2, max_queued=8,
                      on_batch=lambda n: (sizes.append(n), gate.wait(10)))
    tickets = [batcher.submit(p, params) for p, params in zip(prompts, settings)]
    gate.set()
    for t in tickets:
        t.wait(60)
    batcher.close()
    assert sizes == [5]  # one batch, whatever the settings
    assert [(t.tokens, t.finish_reason, [lp.token for lp in t.logprobs]) for t in tickets] == alone
    sampled = tickets[-1]
    assert sampled.completion_tokens == 5 and len(sampled.logprobs) == len(sampled.tokens)
    assert all(len(lp.top) == 2 and lp.logprob <= 0 for lp in sampled.logprobs)


def test_batcher_backpressure_and_cancellation(engine):
    from serve.batcher import Batcher, BatcherClosed, QueueFull
    from serve.engine import SamplingParams

    release = threading.Event()
    batcher = Batcher(engine, max_batch_size=1, wait_s=0, max_queued=2, on_batch=lambda n: release.wait(10))
    prompt = engine.encode_chat([{"role": "user", "content": "hi"}])
    params = SamplingParams(max_new_tokens=50)
    running = batcher.submit(prompt, params)
    while batcher.waiting:  # the loop took it and is held in on_batch
        pass
    queued = [batcher.submit(prompt, params), batcher.submit(prompt, params)]
    with pytest.raises(QueueFull):
        batcher.submit(prompt, params)
    batcher.close(cancel_reason="v1 was revoked")
    release.set()
    for t in [running, *queued]:
        t.wait(30)
        assert t.finish_reason == "cancelled" and t.cancel_reason == "v1 was revoked"
    assert running.completion_tokens < 50
    with pytest.raises(BatcherClosed):
        batcher.submit(prompt, params)
    batcher.join(10)


# -- constrained decoding -----------------------------------------------------------------------------------------
def test_grammar_mask_matches_llguidance_and_refuses_bad_schemas(engine):
    """serve/constrain.py unpacks llguidance's bitmask itself (no torch.compile): it must agree with llguidance's
    own per-token view, step by step along a valid reply."""
    import pytest as _pytest

    from serve.constrain import ConstraintError

    grammar = engine.grammars.compile("json_schema", {"type": "object", "properties": {"ok": {"type": "boolean"}},
                                                      "required": ["ok"], "additionalProperties": False})
    matcher = engine.grammars.matcher(grammar)
    for token in engine.tokenizer.encode('{"ok": true}', add_special_tokens=False):
        expected = [b == 200 for b in matcher._m.compute_logit_bias()][:engine.vocab_size]
        allowed = matcher.allowed(engine.vocab_size).tolist()
        assert allowed == expected + [False] * (engine.vocab_size - len(expected))
        assert allowed[token], engine.tokenizer.decode([token])
        matcher.consume(token)
    assert matcher.allowed(engine.vocab_size).nonzero().flatten().tolist() == sorted(engine.eos_ids)
    with _pytest.raises(ConstraintError, match="cannot be enforced"):
        engine.grammars.compile("json_schema", {"type": "strnig"})
