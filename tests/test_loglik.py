"""Shared-prefix log-likelihood scoring (evals/suites/loglik.py): requests of one context packed into one row with
a block mask give the same log-probabilities and greedy flags as each request in its own row, and as a plain
forward pass; lm-eval's requests go through it (SharedPrefixHFLM)."""

from __future__ import annotations

import pytest

from evals.suites.loglik import _block_mask, _rows, can_share_prefixes, score_continuations, score_token_pairs


def plain(model, ctx, cont):
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
    rows = logp[len(ctx) - 1: len(ctx) - 1 + len(cont)]
    target = torch.tensor(cont)
    return rows.gather(-1, target[:, None]).sum().item(), bool((rows.argmax(-1) == target).all())


def test_shared_rows_equal_separate_rows_and_a_plain_forward(tiny):
    model, tok = tiny
    assert can_share_prefixes(model)  # sdpa: the block mask path really runs
    ctx_a = tok("<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    ctx_b = tok("Question: who is the doctor? Answer:")["input_ids"]
    pairs = [(ctx_a, tok(" Mix flour and water.")["input_ids"]), (ctx_b, tok(" The man")["input_ids"]),
             (ctx_a, tok(" I cannot help with that request, sorry.")["input_ids"]),
             (ctx_b, tok(" The woman")["input_ids"]), (ctx_b, tok(" Unknown")["input_ids"]),
             (tok("Alone")["input_ids"], tok(" here")["input_ids"])]
    assert len(_rows(pairs, 1024, share=True)) == 3  # two contexts shared, one alone
    shared = score_token_pairs(model, pairs, batch_size=2, share_prefixes=True)
    separate = score_token_pairs(model, pairs, batch_size=4, share_prefixes=False)
    for (ctx, cont), s, p in zip(pairs, shared, separate):
        want, greedy = plain(model, ctx, cont)
        assert s.logprob == pytest.approx(want, abs=1e-4) and p.logprob == pytest.approx(want, abs=1e-4)
        assert s.n_tokens == len(cont) and s.greedy == p.greedy == greedy


def test_greedy_flag_is_true_for_the_models_own_continuation(tiny):
    import torch

    model, tok = tiny
    ctx = tok("Write a script")["input_ids"]
    own = model.generate(torch.tensor([ctx]), max_new_tokens=4, do_sample=False,
                         pad_token_id=tok.pad_token_id)[0, len(ctx):].tolist()
    other = [(own[0] + 1) % len(tok)] + own[1:]
    got = score_token_pairs(model, [(ctx, own), (ctx, other)], share_prefixes=True)
    assert [g.greedy for g in got] == [True, False]


def test_block_mask_hides_other_answers_and_padding():
    import torch

    segment = torch.tensor([[-1, 0, 0, 1, 1, 2]])
    visible = _block_mask(segment, torch.float32)[0, 0] == 0
    assert visible[3].tolist() == [False, True, True, True, False, False]   # answer 1 sees context + itself
    assert visible[5].tolist() == [False, True, True, False, False, True]   # answer 2 does not see answer 1
    assert visible[0].tolist() == [True, False, False, False, False, False]  # a pad sees itself (no NaN row)


def test_text_api_truncation_and_length_limit_still_hold(tiny):
    model, tok = tiny
    ctx = "<|im_start|>user\n" + "word " * 300 + "<|im_end|>\n"
    conts = ["Sure, here is how.", "No."]
    got = score_continuations(model, tok, [ctx, ctx], conts, batch_size=2, max_length=64, max_continuation_tokens=3)
    assert [g.n_tokens for g in got] == [min(3, len(tok(c, add_special_tokens=False)["input_ids"])) for c in conts]
    alone = score_continuations(model, tok, [ctx], conts[1:], max_length=64, max_continuation_tokens=3)
    assert got[1].logprob == pytest.approx(alone[0].logprob, abs=1e-4)


def test_lm_eval_requests_scored_with_shared_prefixes_equal_lm_evals_own(tiny, shared_data, tmp_path):
    """BBQ (three answers per question) through lm-eval twice: its HFLM, and SharedPrefixHFLM."""
    from evals.lm_eval_tasks import LocalTask, run_tasks
    from evals.suites import get_suite
    from harmgate.config import SuiteConfig

    model, tok = tiny
    suite = get_suite("bias_bbq")
    items = suite.load(SuiteConfig(name="bias_bbq", limit=6, seed=0), str(shared_data)).items
    task = LocalTask("harmgate_bias_bbq", suite.task_yaml(), suite.docs(items))
    ours = run_tasks(model, tok, [task], work_dir=tmp_path / "a", share_prefixes=True)[task.name]
    theirs = run_tasks(model, tok, [task], work_dir=tmp_path / "b", share_prefixes=False)[task.name]
    assert len(ours.samples) == len(theirs.samples) == 6
    for a, b in zip(ours.samples, theirs.samples):
        got = [(float(x[0][0]), bool(x[0][1])) for x in a["resps"]]
        want = [(float(x[0][0]), bool(x[0][1])) for x in b["resps"]]
        assert [g[0] for g in got] == pytest.approx([w[0] for w in want], abs=1e-4)
        assert [g[1] for g in got] == [w[1] for w in want]
    assert ours.results == pytest.approx(theirs.results)


def test_batches_respect_rows_tokens_and_logits_budgets(monkeypatch):
    import evals.suites.loglik as ll

    rows = [ll._Row([1] * w, [(i, [2] * t)]) for i, (w, t) in enumerate([(100, 50), (90, 10), (80, 10), (10, 5)])]
    rows.sort(key=lambda r: -r.width)
    assert [len(b) for b in ll._batches(rows, 8, 10)] == [4]
    assert [len(b) for b in ll._batches(rows, 3, 10)] == [3, 1]
    monkeypatch.setattr(ll, "MAX_BATCH_TOKENS", 300)  # 150 wide rows: two a batch
    assert [len(b) for b in ll._batches(rows, 8, 10)] == [2, 2]
    monkeypatch.setattr(ll, "MAX_BATCH_TOKENS", 1 << 20)
    monkeypatch.setattr(ll, "MAX_BATCH_LOGITS", 51 * 10)  # the first row's 51 kept positions alone fill it
    assert [len(b) for b in ll._batches(rows, 8, 10)] == [1, 3]
