"""Fine-tune a BERT-family encoder (all-MiniLM-L6-v2) into a sequence classifier: the one training loop behind the
toxicity scorer (evals/scorers/train.py, multi-label over Detoxify's labels) and the refusal judge's cross-encoder
(evals/scorers/judge_encoder.py, one label over a prompt + reply pair).

A plain loop rather than ``transformers.Trainer`` or sentence-transformers' ``CrossEncoder``: both callers need a
weight on every (row, label) cell (labels a source does not have are masked out; sources and classes are
balanced), which neither takes without subclassing its loss, and the loop is short enough to read in one go.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

Text = str | tuple[str, str]      # one text, or a (first, second) pair for a cross-encoder


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-4
    head_learning_rate: float = 1e-3
    warmup_fraction: float = 0.1
    max_length: int = 64
    freeze_embeddings: bool = True      # the 11.7M-parameter word embeddings: slow to update, quick to overfit
    # Each random batch runs as this many length-sorted chunks whose gradients add up to the batch's: random
    # batches of the scorer's corpus pad to 2.4x the real tokens (most texts are short, a few reach 64), and on a
    # CPU time goes with tokens (8 chunks: 1.9x faster, bench/finetune_batches.py). On a GPU a batch this small
    # costs kernel launches, not tokens, so None (auto) means 8 on a CPU and 1 elsewhere. Batches grouped by
    # length instead (Trainer's ``group_by_length``) pad less still, but cost 0.03 of functional-suite AUC here
    # (docs/SCORERS.md): they change what a step sees; chunks do not.
    length_chunks: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        problems = self.finetune_problems()
        if problems:
            raise ValueError("invalid fine-tuning settings: " + "; ".join(problems))

    def finetune_problems(self) -> list[str]:
        problems = [f"{name} must be > 0, got {getattr(self, name)}"
                    for name in ("epochs", "batch_size", "learning_rate", "head_learning_rate", "max_length")
                    if getattr(self, name) <= 0]
        if self.length_chunks is not None and self.length_chunks < 1:
            problems.append(f"length_chunks must be >= 1 (or None: auto), got {self.length_chunks}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0 <= self.warmup_fraction < 1:
            problems.append(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        return problems


@dataclass
class Fitted:
    model: Any
    tokenizer: Any
    stats: dict[str, Any]


def _call_tokenizer(tokenizer, texts: Sequence[Text], max_length: int | None, **kw):
    """The tokenizer on single texts, or on (first, second) pairs truncated longest-first, cut at ``max_length``."""
    if max_length:
        kw["max_length"] = max_length
    if texts and isinstance(texts[0], tuple):
        first, second = [t[0] for t in texts], [t[1] for t in texts]  # type: ignore[index]
        return tokenizer(first, second, truncation="longest_first", **kw)
    return tokenizer(list(texts), truncation=True, **kw)


def _tokenize(tokenizer, texts: Sequence[Text], max_length: int | None, device: str):
    return _call_tokenizer(tokenizer, texts, max_length, padding=True, return_tensors="pt").to(device)


def token_lengths(tokenizer, texts: Sequence[Text], max_length: int | None) -> list[int]:
    """Each text's length in tokens as a batch would see it (truncated, special tokens included)."""
    return [len(ids) for ids in _call_tokenizer(tokenizer, texts, max_length)["input_ids"]]


def chunks_for(s: FinetuneSettings, device: str) -> int:
    """``length_chunks`` as set, or auto: 8 on a CPU, 1 on an accelerator."""
    if s.length_chunks is not None:
        return s.length_chunks
    return 8 if str(device).startswith("cpu") else 1


def length_chunks(idx: Sequence[int], lengths: Sequence[int], chunks: int) -> list[list[int]]:
    """A batch's rows in up to ``chunks`` contiguous runs of the length-sorted order (each pads only to its own
    longest row); empty runs dropped."""
    ranked = sorted(idx, key=lambda i: lengths[i])
    size = math.ceil(len(ranked) / max(1, chunks))
    return [ranked[k:k + size] for k in range(0, len(ranked), size)]


def finetune_classifier(texts: Sequence[Text], y, weight, s: FinetuneSettings, *, encoder: str, device: str,
                        labels: Sequence[str], multi_label: bool, progress: bool = True, desc: str = "train",
                        log: Callable[[str], None] = print) -> Fitted:
    """Fine-tune ``encoder`` on ``texts`` with targets ``y`` (n, k) in [0, 1] and per-cell loss weights ``weight``
    (n, k; 0 masks a cell out): binary cross-entropy per cell, weighted, summed, divided by the number of cells
    with a non-zero weight. Seeded; the model comes back in eval mode."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

    random.seed(s.seed)
    np.random.seed(s.seed)
    torch.manual_seed(s.seed)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    model = BertForSequenceClassification.from_pretrained(
        encoder, num_labels=len(labels), problem_type="multi_label_classification" if multi_label else None,
        id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)}).to(device)
    if s.freeze_embeddings:
        model.bert.embeddings.requires_grad_(False)
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("classifier")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("classifier")]
    optim = torch.optim.AdamW([{"params": body, "lr": s.learning_rate},
                               {"params": head, "lr": s.head_learning_rate}], weight_decay=0.01)
    steps_per_epoch = math.ceil(len(texts) / s.batch_size)
    total = s.max_steps or max(1, math.ceil(steps_per_epoch * s.epochs))
    sched = get_linear_schedule_with_warmup(optim, int(total * s.warmup_fraction), total)
    y_all, w_all = torch.as_tensor(y, dtype=torch.float32), torch.as_tensor(weight, dtype=torch.float32)
    n_chunks = chunks_for(s, device)
    lengths = token_lengths(tokenizer, texts, s.max_length) if n_chunks > 1 else [0] * len(texts)
    order = list(range(len(texts)))
    rng = random.Random(s.seed)
    loss_curve, seen_tokens, padded_tokens, step = [], 0, 0, 0
    model.train()
    bar = tqdm(total=total, desc=desc, disable=not progress)
    loop_started = time.time()
    while step < total:
        rng.shuffle(order)
        for start in range(0, len(order), s.batch_size):
            if step >= total:
                break
            idx = order[start:start + s.batch_size]
            # the batch's loss normaliser, then each chunk's share of the loss: the gradients add up to the batch's
            cells = (w_all[idx] > 0).float().sum().clamp(min=1.0).to(device)
            loss_sum = 0.0
            for chunk in length_chunks(idx, lengths, n_chunks):
                batch = _tokenize(tokenizer, [texts[i] for i in chunk], s.max_length, device)
                logits = model(**batch).logits
                yb, wb = y_all[chunk].to(device), w_all[chunk].to(device)
                per = torch.nn.functional.binary_cross_entropy_with_logits(logits, yb, reduction="none")
                part = (per * wb).sum() / cells
                part.backward()
                loss_sum += float(part.detach())
                seen_tokens += int(batch["attention_mask"].sum())
                padded_tokens += int(batch["attention_mask"].numel())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            loss_curve.append({"step": step, "loss": round(loss_sum, 5)})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_curve[-1]['loss']:.4f}")
    bar.close()
    model.eval()
    stats = {"device": device, "encoder": encoder, "examples": len(texts), "steps": step,
             "epochs_equivalent": round(step * s.batch_size / max(1, len(texts)), 3), "tokens_seen": seen_tokens,
             "padded_tokens": padded_tokens, "length_chunks": n_chunks,
             "train_seconds": round(time.time() - started, 1), "loop_seconds": round(time.time() - loop_started, 2),
             "final_loss": loss_curve[-1]["loss"] if loss_curve else None, "loss_curve": loss_curve}
    return Fitted(model, tokenizer, stats)


def predict_probs(model, tokenizer, texts: Sequence[Text], *, device: str, batch_size: int, max_length: int | None,
                  progress: bool = False, desc: str = "scoring"):
    """Sigmoid outputs, (n, classes), in eval mode, in the order of ``texts``. Batches are cut from the texts sorted
    by length (padding is masked out, so a row's output does not depend on its batch; it halves the padding);
    characters stand in for tokens there, which saves a tokenizer pass over every text."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]) if isinstance(texts[i], str)
                   else sum(len(part) for part in texts[i]))
    rows = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            batch = _tokenize(tokenizer, [texts[i] for i in order[start:start + batch_size]], max_length, device)
            rows.append(torch.sigmoid(model(**batch).logits).float().cpu())
    if not rows:
        return None
    out = np.empty((len(texts), rows[0].shape[1]), dtype=np.float32)
    out[order] = torch.cat(rows).numpy()
    return out
