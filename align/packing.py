"""Padding-free packing in rows: several samples share one row, and none attends to another.

TRL packs the tokenized samples best-fit-decreasing into rows of at most ``max_length`` tokens (``pack_dataset``,
strategy ``bfd``; each row records its samples' lengths in ``seq_lengths``). Its own padding-free collator then
concatenates the whole batch into ONE row, so with SDPA every token pays attention over the whole batch
(``batch x max_length`` keys, masked, not skipped). ``PackedRowsCollator`` keeps the rows instead: a batch is
``[rows, longest row]`` and attention costs what one ``max_length`` row costs.

Correctness rests on two things, both checked in tests/test_packing.py against samples run one by one:
- position ids restart at 0 for every sample, so RoPE sees each sample as if it were alone;
- no ``attention_mask`` is passed. transformers (masking_utils ``find_packed_sequence_indices``, present in 5.17
  and 5.2x) then reads sample boundaries from the position ids and builds a block-diagonal causal mask for
  sdpa/eager/flex attention. An attention mask, even all ones, switches that detection off and samples would
  attend to each other.
The label of each sample's first token is -100: it would otherwise be "predicted" from the previous sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


def position_ids_for(seq_lengths: list[int], row_length: int) -> list[int]:
    """0..n-1 for each sample of a row; padding after the last sample gets 0s (each pad token is its own
    one-token "sample", so it attends to nothing real and nothing real attends to it)."""
    ids = [p for n in seq_lengths for p in range(n)]
    if len(ids) > row_length:
        raise ValueError(f"seq_lengths {seq_lengths} sum to {len(ids)} tokens, more than the row's {row_length}")
    return ids + [0] * (row_length - len(ids))


@dataclass
class PackedRowsCollator:
    """Collates TRL-packed rows (``input_ids``, ``labels``, ``seq_lengths``) into padding-free row batches."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("empty batch")
        if "seq_lengths" not in examples[0]:
            raise ValueError("PackedRowsCollator needs packed rows with a seq_lengths column (TRL packing='bfd')")
        width = max(len(ex["input_ids"]) for ex in examples)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(examples), width), dtype=torch.long)
        for row, ex in enumerate(examples):
            n = len(ex["input_ids"])
            lengths = [int(x) for x in ex["seq_lengths"]]
            if sum(lengths) != n:
                raise ValueError(f"row {row}: seq_lengths {lengths} do not add up to its {n} tokens")
            input_ids[row, :n] = torch.as_tensor(ex["input_ids"])
            labels[row, :n] = torch.as_tensor(ex.get("labels", ex["input_ids"]))
            position_ids[row] = torch.as_tensor(position_ids_for(lengths, width))
        # First token of every sample (and all padding) carries no loss.
        labels[position_ids == 0] = IGNORE_INDEX
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens that are not padding, for a padded batch (attention_mask) or a packed one (position ids)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    pos = batch["position_ids"]
    # A pad token has position 0 and is followed by another 0 or the row's end; a real sample of one token too,
    # which packing never produces (samples are longer than one token), so count tokens inside runs.
    starts = pos == 0
    nxt = torch.cat([pos[:, 1:], torch.zeros_like(pos[:, :1])], dim=1)
    lone = starts & (nxt == 0)
    return int(pos.numel() - lone.sum())
