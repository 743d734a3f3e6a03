"""Log-probability of a continuation given a context, batched: the likelihood suites' one primitive.

Context and continuation are tokenised separately and concatenated (as lm-evaluation-harness does), so the
continuation's tokens are exactly its own. Batches are left-padded with explicit position ids, so every
continuation ends at the right edge and only its logits are computed (``logits_to_keep``): scoring 512
answer tokens needs a 512 x vocab slice per row, not the whole sequence's.

Shared prefixes: requests with the same context (a preference pair's chosen and rejected reply, a multiple-choice
question's answers) are packed into one row, ``context + answer_1 + answer_2 + ...``, with a block attention mask
(each answer sees the context and itself, not the other answers) and position ids that restart after the context
for every answer. The context is computed once instead of once per answer, and each answer's log-probability is
the same computation as in its own row (tests/test_loglik.py). lm-eval's HFLM only reuses logits for one-token
continuations (its own TODO asks for this); :class:`SharedPrefixHFLM` routes lm-eval's requests through here.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

# Attention implementations that take a 4D mask as given (flash-attention kernels do not).
MASK_4D_ATTENTION = ("sdpa", "eager", "harmgate_grouped_decode")  # the last: evals/fastgen.py, SDPA for prompts


@dataclass(frozen=True)
class ContinuationScore:
    logprob: float      # sum of the continuation tokens' log-probabilities (nats)
    n_tokens: int       # continuation tokens scored (after truncation)
    truncated: bool = False
    greedy: bool = False  # every continuation token was the model's argmax (lm-eval's is_greedy)

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.n_tokens if self.n_tokens else float("nan")


def _max_length(model, tokenizer, cap: int | None) -> int:
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    return min(limit, cap) if cap else limit


def can_share_prefixes(model) -> bool:
    return getattr(model.config, "_attn_implementation", "eager") in MASK_4D_ATTENTION


def score_continuations(model, tokenizer, contexts: list[str], continuations: list[str], *, batch_size: int = 8,
                        max_continuation_tokens: int | None = None, max_length: int | None = None,
                        desc: str = "log-likelihood", share_prefixes: bool = True) -> list[ContinuationScore]:
    """One :class:`ContinuationScore` per (context, continuation). Contexts are already rendered (chat
    template applied by the caller when wanted); an empty context is scored after the BOS/EOS token."""
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    limit = _max_length(model, tokenizer, max_length)
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded: list[tuple[list[int], list[int]]] = []
    truncated: list[bool] = []
    ctx_cache: dict[str, list[int]] = {}
    for ctx, cont in zip(contexts, continuations):
        if ctx not in ctx_cache:
            ctx_cache[ctx] = tokenizer(ctx, add_special_tokens=False)["input_ids"] if ctx else [start_id]
        cont_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
        if not cont_ids:
            raise ValueError(f"empty continuation for context {ctx[:60]!r}")
        cut = bool(max_continuation_tokens and len(cont_ids) > max_continuation_tokens)
        if cut:
            cont_ids = cont_ids[:max_continuation_tokens]
        encoded.append((ctx_cache[ctx], cont_ids))
        truncated.append(cut)
    scores = score_token_pairs(model, encoded, batch_size=batch_size, max_length=limit, desc=desc,
                               share_prefixes=share_prefixes, pad_id=_pad_id(tokenizer))
    return [ContinuationScore(s.logprob, s.n_tokens, t, s.greedy) for s, t in zip(scores, truncated)]


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@dataclass
class _Row:
    context: list[int]
    answers: list[tuple[int, list[int]]]   # (request index, continuation ids)

    @property
    def width(self) -> int:
        return len(self.context) + sum(len(a) for _, a in self.answers)

    @property
    def tail(self) -> int:  # positions whose logits are needed: the context's last one and every answer's
        return 1 + sum(len(a) for _, a in self.answers)


def _rows(pairs: list[tuple[list[int], list[int]]], limit: int, share: bool) -> list[_Row]:
    """Requests -> rows: each (context, continuation) fitted into ``limit`` positions (the end of a long context
    kept: it is what conditions the continuation); with ``share``, requests of one context packed into one row of
    at most ``limit`` tokens."""
    rows: list[_Row] = []
    open_rows: dict[tuple[int, ...], _Row] = {}
    for i, (ctx, cont) in enumerate(pairs):
        cont = cont[: limit - 1]
        ctx = ctx[-(limit - len(cont)):]
        key = tuple(ctx)
        row = open_rows.get(key) if share else None
        if row is not None and row.width + len(cont) <= limit:
            row.answers.append((i, cont))
            continue
        row = _Row(list(ctx), [(i, cont)])
        rows.append(row)
        if share:
            open_rows[key] = row
    return rows


def score_token_pairs(model, pairs: list[tuple[list[int], list[int]]], *, batch_size: int = 8,
                      max_length: int | None = None, desc: str = "log-likelihood", share_prefixes: bool = True,
                      pad_id: int = 0, disable_tqdm: bool = False) -> list[ContinuationScore]:
    """Scores of token-level (context ids, continuation ids) pairs, in order (no ``truncated`` flag: the caller
    knows what it cut). ``max_length``: positions a row may use (default the model's). Under a multi-process
    launch (evals/parallel.py) each process scores a share of the contexts, each context's requests together."""
    from evals.parallel import ranks, shard_map

    def local(subset: list[tuple[list[int], list[int]]]) -> list[ContinuationScore]:
        return _score_local(model, subset, batch_size=batch_size, max_length=max_length, desc=desc,
                            share_prefixes=share_prefixes, pad_id=pad_id, disable_tqdm=disable_tqdm)

    if ranks().world <= 1:
        return local(pairs)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, _) in enumerate(pairs):
        groups.setdefault(tuple(ctx), []).append(i)
    members = list(groups.values())

    def score_groups(shard: list[list[int]]) -> list[list[ContinuationScore]]:
        flat = local([pairs[i] for g in shard for i in g])
        out, at = [], 0
        for g in shard:
            out.append(flat[at:at + len(g)])
            at += len(g)
        return out

    results: list[ContinuationScore | None] = [None] * len(pairs)
    for g, scores in zip(members, shard_map(members, score_groups,
                                            cost=lambda g: sum(len(pairs[i][0]) + len(pairs[i][1]) for i in g))):
        for i, s in zip(g, scores):
            results[i] = s
    return [r for r in results if r is not None]


def _score_local(model, pairs: list[tuple[list[int], list[int]]], *, batch_size: int, max_length: int | None,
                 desc: str, share_prefixes: bool, pad_id: int, disable_tqdm: bool) -> list[ContinuationScore]:
    import torch

    limit = max_length or _max_length(model, None, None)
    share = share_prefixes and can_share_prefixes(model) and len({tuple(c) for c, _ in pairs}) < len(pairs)
    rows = sorted(_rows(pairs, limit, share), key=lambda r: -r.width)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    results: list[ContinuationScore | None] = [None] * len(pairs)
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else 1
    with torch.inference_mode(), tqdm(total=len(pairs), desc=desc, unit="seq", leave=False,
                                      disable=disable_tqdm) as bar:
        for batch in _batches(rows, batch_size, vocab):
            width = max(r.width for r in batch)
            keep = max(r.tail for r in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            positions = torch.zeros((len(batch), width), dtype=torch.long)
            # segment of each position: -1 pad, 0 context, j >= 1 the j-th answer
            segment = torch.full((len(batch), width), -1, dtype=torch.long)
            for r, row in enumerate(batch):
                at = width - row.width
                n = len(row.context)
                input_ids[r, at:at + n] = torch.tensor(row.context)
                positions[r, at:at + n] = torch.arange(n)
                segment[r, at:at + n] = 0
                at += n
                for j, (_, ans) in enumerate(row.answers, start=1):
                    input_ids[r, at:at + len(ans)] = torch.tensor(ans)
                    positions[r, at:at + len(ans)] = torch.arange(n, n + len(ans))
                    segment[r, at:at + len(ans)] = j
                    at += len(ans)
            kwargs = dict(input_ids=input_ids.to(device), position_ids=positions.to(device))
            if share:
                kwargs["attention_mask"] = _block_mask(segment, dtype).to(device)
            else:
                kwargs["attention_mask"] = (segment >= 0).long().to(device)
            try:
                logits = model(**kwargs, logits_to_keep=keep).logits
            except TypeError:  # architectures without logits_to_keep: compute all, keep the tail
                logits = model(**kwargs).logits[:, -keep:]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for r, row in enumerate(batch):
                # tail layout (right-aligned): [last context token][answer 1]...[answer m]; logits at position t
                # predict token t+1, and every answer's first token is predicted by the last context token
                offset = keep - row.tail
                first = offset
                at = offset + 1
                for i, ans in row.answers:
                    n = len(ans)
                    pred = torch.cat([logprobs[r, first:first + 1], logprobs[r, at:at + n - 1]])
                    target = torch.tensor(ans, device=pred.device)
                    total = pred.gather(-1, target[:, None]).sum().item()
                    greedy = bool((pred.argmax(-1) == target).all())
                    results[i] = ContinuationScore(total, n, False, greedy)
                    at += n
            bar.update(sum(len(row.answers) for row in batch))
    return [r for r in results if r is not None]


# Per batch at most this many input tokens and float32 log-probabilities of the kept positions: a large
# batch_size with long rows or long answers is split instead of running out of memory (about 4 GiB of logits).
MAX_BATCH_TOKENS = 1 << 17
MAX_BATCH_LOGITS = 1 << 30


def _batches(rows: list[_Row], batch_size: int, vocab: int) -> list[list[_Row]]:
    """Consecutive rows (sorted longest first) in batches of at most ``batch_size`` rows and the budgets above."""
    out: list[list[_Row]] = []
    cur: list[_Row] = []
    for row in rows:
        n = len(cur) + 1
        width = max([row.width] + [r.width for r in cur])
        keep = max([row.tail] + [r.tail for r in cur])
        if cur and (n > batch_size or n * width > MAX_BATCH_TOKENS or n * keep * vocab > MAX_BATCH_LOGITS):
            out.append(cur)
            cur = []
        cur.append(row)
    if cur:
        out.append(cur)
    return out


def _block_mask(segment, dtype):
    """Additive 4D mask [batch, 1, q, k]: a query sees earlier keys of the context and of its own segment; a pad
    position sees itself only (a row with no visible key would turn into NaN and spread through the values)."""
    import torch

    q, k = segment[:, :, None], segment[:, None, :]
    n = segment.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    visible = causal & (k >= 0) & (q >= 0) & ((k == 0) | (k == q))
    visible |= torch.eye(n, dtype=torch.bool)
    mask = torch.zeros(visible.shape, dtype=dtype)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[:, None]
