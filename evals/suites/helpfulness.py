"""``helpfulness``: did safety tuning cost usefulness?

Two parts, one suite:

- answer perplexity on held-out instruction data (Alpaca, LIMA): exp(total NLL / total tokens) of the reference
  answer given the chat-rendered instruction. Lower is better; a tuned model that drifts away from helpful
  answers gets a higher value. These instructions are held out of training like every eval prompt.
- first-turn answers to MT-bench and safety-tuned-llamas' I-Alpaca, generated and kept in the per-sample records
  for the report (and for a later judge); here they give the share of these benign requests refused.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evals.stats import mean_metric, rate_metric, statistic_metric
from evals.suites.base import (EvalItem, Suite, SuiteContext, SuiteResult, group_items, register_suite,
                               sample_record)
from evals.suites.loglik import score_continuations
from evals.suites.refusal import STL, STL_HUB_NOTE, STL_LICENCE, judge_outputs, judgement_scores
from evals.suites.sources import SourceRows, SourceSpec
from harmgate.config import SuiteConfig

ALPACA = SourceSpec("alpaca", hub="tatsu-lab/alpaca", licence="CC BY-NC 4.0",
                    description="Stanford Alpaca instructions + answers (perplexity)")
# GAIR/lima (gated: accept its terms on the hub) ships a loading script, which datasets >= 4 refuses: read its
# train.jsonl ({"conversations": [user, assistant, ...], "source"}) through huggingface_hub.
LIMA = SourceSpec("lima", hub="GAIR/lima", hub_files=("train.jsonl",), licence="CC BY-NC-SA",
                  description="LIMA instructions + answers (perplexity)")
MT_BENCH = SourceSpec("mt_bench", hub="HuggingFaceH4/mt_bench_prompts", mirror="mt-bench/mt_bench_questions.jsonl",
                      licence="Apache-2.0", description="MT-bench first turns (answers kept for the report)")
I_ALPACA = SourceSpec("i_alpaca", mirror=f"{STL}/I-Alpaca.json", licence=STL_LICENCE,
                      description=f"safety-tuned-llamas I-Alpaca (answers kept for the report); {STL_HUB_NOTE}")
PERPLEXITY_SOURCES = ("alpaca", "lima")


def perplexity(nll: np.ndarray, tokens: np.ndarray) -> float:
    return math.exp(float(np.sum(nll)) / float(np.sum(tokens)))


class HelpfulnessOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_answer_tokens: int = Field(256, ge=1, description="reference answers are cut to this many tokens")


@register_suite
class Helpfulness(Suite):
    name = "helpfulness"
    description = "Answer perplexity on held-out Alpaca/LIMA; MT-bench and I-Alpaca first-turn answers kept."
    kind = "generation+likelihood"
    sources = (ALPACA, LIMA, MT_BENCH, I_ALPACA)
    metrics_doc = {"answer_perplexity": "perplexity of the reference answers, token-weighted (lower is better)",
                   "benign_refusal_rate": "share of MT-bench / I-Alpaca requests refused (lower is better)",
                   "mean_reply_words": "mean length of the generated answers, in words"}
    Options = HelpfulnessOptions

    def items_from_rows(self, src: SourceRows, options: Any) -> list[EvalItem]:
        from align.instructions import InstructionError, instruction_to_messages

        key, items = src.spec.key, []
        for i, r in enumerate(src.rows):
            if key in PERPLEXITY_SOURCES:
                try:
                    messages = instruction_to_messages(r)
                except InstructionError:
                    continue  # counted: the source's rows minus its items
                users = [m["content"] for m in messages if m["role"] == "user"]
                items.append(EvalItem(f"{key}-{i}", users[-1], {
                    "source": key, "task": "perplexity", "first_user_turn": users[0],
                    "context": messages[:-1], "answer": messages[-1]["content"]}))
            elif key == "mt_bench":
                turns = r.get("turns") or r.get("prompt")
                if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
                    raise ValueError(f"row {i}: MT-bench rows need 'turns' (or hub 'prompt') as a list of strings")
                items.append(EvalItem(f"mt_bench-{r.get('question_id', i)}", turns[0].strip(), {
                    "source": key, "task": "generation", "category": r.get("category", "unknown")}))
            else:
                text = r.get("instructions") or r.get("instruction") or r.get("prompt")
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"row {i}: no instruction text")
                items.append(EvalItem(f"{key}-{i}", text.strip(), {"source": key, "task": "generation"}))
        return items

    def run(self, model, tokenizer, cfg: SuiteConfig, ctx: SuiteContext) -> SuiteResult:
        from evals.generate import generate

        loaded = self.load(cfg, ctx.mirror)
        options = self.options(cfg)
        ppl_items = [it for it in loaded.items if it.meta["task"] == "perplexity"]
        gen_items = [it for it in loaded.items if it.meta["task"] == "generation"]
        metrics: dict[str, Any] = {}
        breakdowns: dict[str, dict[str, Any]] = {"source": {}}
        samples: list[dict[str, Any]] = []
        info: dict[str, Any] = {"sources": loaded.sources, "max_answer_tokens": options.max_answer_tokens}

        if ppl_items:
            contexts = [tokenizer.apply_chat_template(ctx.chat(it.meta["context"]), tokenize=False,
                                                      add_generation_prompt=True)
                        for it in ppl_items]
            scores = score_continuations(model, tokenizer, contexts, [it.meta["answer"] for it in ppl_items],
                                         batch_size=ctx.generation.batch_size,
                                         max_continuation_tokens=options.max_answer_tokens,
                                         desc=f"{ctx.desc or self.name} perplexity")
            nll = np.array([-s.logprob for s in scores])
            tokens = np.array([s.n_tokens for s in scores], dtype=float)
            metrics["answer_perplexity"] = statistic_metric([nll, tokens], perplexity, n=len(ppl_items), paired=True,
                                                            boot=ctx.boot, tokens=int(tokens.sum()))
            for g, idx in group_items(ppl_items, "source").items():
                breakdowns["source"][g] = {"answer_perplexity": statistic_metric(
                    [nll[idx], tokens[idx]], perplexity, n=len(idx), paired=True, boot=ctx.boot,
                    tokens=int(tokens[idx].sum()))}
            for it, s in zip(ppl_items, scores):
                meta = {k: v for k, v in it.meta.items() if k != "answer"}
                samples.append(sample_record(EvalItem(it.id, it.prompt, meta), None, {
                    "reference_answer": it.meta["answer"], "answer_logprob": s.logprob, "answer_tokens": s.n_tokens,
                    "truncated": s.truncated, "perplexity": math.exp(-s.mean_logprob)}))

        if gen_items:
            outputs = generate(model, tokenizer, [it.prompt for it in gen_items], ctx.generation, chat=True,
                               seed=cfg.seed, desc=f"{ctx.desc or self.name} answers", system_prompt=ctx.system_prompt)
            judgements, info["judge"] = judge_outputs(gen_items, outputs, ctx)
            refused = [bool(j.refused) for j in judgements]
            words = [len(o[0].split()) for o in outputs]
            metrics["benign_refusal_rate"] = rate_metric(refused, boot=ctx.boot)
            metrics["mean_reply_words"] = mean_metric(words, boot=ctx.boot)
            for g, idx in group_items(gen_items, "source").items():
                breakdowns["source"][g] = {"benign_refusal_rate": rate_metric([refused[i] for i in idx], boot=ctx.boot),
                                           "mean_reply_words": mean_metric([words[i] for i in idx], boot=ctx.boot)}
            cats = {g: {"benign_refusal_rate": rate_metric([refused[i] for i in idx], boot=ctx.boot)}
                    for g, idx in group_items(gen_items, "category").items() if g != "unknown"}
            if cats:
                breakdowns["mt_bench_category"] = cats
            samples.extend(sample_record(it, out[0], {**judgement_scores(j), "words": w})
                           for it, out, j, w in zip(gen_items, outputs, judgements, words))
        return SuiteResult(metrics, breakdowns, samples, info)
