"""Log-probability of a continuation given a context, batched: the likelihood suites' one primitive.

Context and continuation are tokenised separately and concatenated (as lm-evaluation-harness does), so the
continuation's tokens are exactly its own. Batches are left-padded with explicit position ids, so every
continuation ends at the right edge and only its logits are computed (``logits_to_keep``): scoring 512
answer tokens needs a 512 x vocab slice per row, not the whole sequence's.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm


@dataclass(frozen=True)
class ContinuationScore:
    logprob: float      # sum of the continuation tokens' log-probabilities (nats)
    n_tokens: int       # continuation tokens scored (after truncation)
    truncated: bool = False

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.n_tokens if self.n_tokens else float("nan")


def _max_length(model, tokenizer, cap: int | None) -> int:
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    return min(limit, cap) if cap else limit


def score_continuations(model, tokenizer, contexts: list[str], continuations: list[str], *, batch_size: int = 8,
                        max_continuation_tokens: int | None = None, max_length: int | None = None,
                        desc: str = "log-likelihood") -> list[ContinuationScore]:
    """One :class:`ContinuationScore` per (context, continuation). Contexts are already rendered (chat
    template applied by the caller when wanted); an empty context is scored after the BOS/EOS token."""
    import torch

    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    limit = _max_length(model, tokenizer, max_length)
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded: list[tuple[list[int], list[int], bool]] = []
    for ctx, cont in zip(contexts, continuations):
        ctx_ids = tokenizer(ctx, add_special_tokens=False)["input_ids"] if ctx else [start_id]
        cont_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
        if not cont_ids:
            raise ValueError(f"empty continuation for context {ctx[:60]!r}")
        truncated = False
        if max_continuation_tokens and len(cont_ids) > max_continuation_tokens:
            cont_ids, truncated = cont_ids[:max_continuation_tokens], True
        cont_ids = cont_ids[: limit - 1]
        ctx_ids = ctx_ids[-(limit - len(cont_ids)):]  # keep the end of a long context: it is what conditions
        encoded.append((ctx_ids, cont_ids, truncated))

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: -(len(encoded[i][0]) + len(encoded[i][1])))
    results: list[ContinuationScore | None] = [None] * len(encoded)
    with torch.inference_mode(), tqdm(total=len(order), desc=desc, unit="seq", leave=False) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            seqs = [encoded[i][0] + encoded[i][1] for i in idx]
            width = max(len(s) for s in seqs)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                input_ids[r, width - len(s):] = torch.tensor(s)
                mask[r, width - len(s):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = max(len(encoded[i][1]) for i in idx) + 1
            kwargs = dict(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                          position_ids=positions.to(device))
            try:
                logits = model(**kwargs, logits_to_keep=keep).logits
            except TypeError:  # architectures without logits_to_keep: compute all, keep the tail
                logits = model(**kwargs).logits[:, -keep:]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(idx):
                cont = encoded[i][1]
                n = len(cont)
                # logits at position t predict token t+1: the last n+1 positions predict the n continuation tokens
                rows = logprobs[r, keep - n - 1: keep - 1]
                target = torch.tensor(cont, device=rows.device)
                total = rows.gather(-1, target[:, None]).sum().item()
                results[i] = ContinuationScore(total, n, encoded[i][2])
            bar.update(len(idx))
    return [r for r in results if r is not None]
