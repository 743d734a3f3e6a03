"""ULMA: Unified Language Model Alignment with point-wise preference (Cai et al. 2023, arXiv 2312.02554).

Positive samples (chosen replies, safe demonstrations) get the plain SFT negative log-likelihood, with no KL
term. Negative samples (rejected replies) get a KL-regularised point-wise term

    loss_neg = -log sigmoid( -beta * (log pi_theta(y|x) - log pi_ref(y|x)) - z )

which pushes the policy's likelihood of a bad reply below the reference's, but only so far: once the log-ratio
is well below -z/beta the sigmoid saturates and the gradient vanishes, so the model is not driven to degenerate
text the way unlikelihood training can be. pi_ref is the frozen base; with LoRA it is the same network with the
adapter switched off, so no second model copy is held in memory.

Implemented as a TRL trainer + config pair (after DPOTrainer/DPOConfig): `ULMATrainer` reuses SFTTrainer's
dataset preparation (chat template, prompt masking) and replaces only the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTConfig, SFTTrainer

LABEL_COLUMN = "ulma_label"  # 1.0 positive, 0.0 negative


@dataclass
class ULMAConfig(SFTConfig):
    beta: float = field(default=0.1, metadata={"help": "KL strength of the negative-sample term"})
    ulma_z: float = field(default=0.0, metadata={"help": "offset z inside the negative-sample sigmoid"})


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(token) over the labelled (completion) tokens of each row, and how many there are."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != -100
    safe = shift_labels.masked_fill(~mask, 0)
    token_logp = torch.gather(F.log_softmax(shift_logits, dim=-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return (token_logp * mask).sum(-1), mask.sum(-1)


def ulma_loss(policy_logp: torch.Tensor, ref_logp: torch.Tensor, n_tokens: torch.Tensor, label: torch.Tensor,
              beta: float, z: float) -> torch.Tensor:
    """Per-example ULMA loss: token-mean NLL for positives, the point-wise KL term for negatives."""
    positive = -policy_logp / n_tokens.clamp(min=1)
    negative = -F.logsigmoid(-beta * (policy_logp - ref_logp) - z)
    return torch.where(label > 0.5, positive, negative)


class _LabelCollator:
    """TRL's collator for the token tensors, plus the point-wise label column it does not know about."""

    def __init__(self, base) -> None:
        self.base = base

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        labels = torch.tensor([float(ex.pop(LABEL_COLUMN)) for ex in examples])
        batch = self.base(examples)
        batch[LABEL_COLUMN] = labels
        return batch


class ULMATrainer(SFTTrainer):
    def __init__(self, *args, ref_model=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # With LoRA the reference is the same network with the adapter off; a full fine-tune needs a frozen copy.
        self.ref_model = ref_model
        if ref_model is None and not hasattr(self.accelerator.unwrap_model(self.model), "disable_adapter"):
            raise ValueError("ULMA without a LoRA adapter needs ref_model, a frozen copy of the starting model: "
                             "its negative term compares the policy with it")
        self.data_collator = _LabelCollator(self.data_collator)
        # The loss is a per-batch mean, not a sum over num_items_in_batch: let Trainer divide by the
        # gradient-accumulation steps itself.
        self.model_accepts_loss_kwargs = False

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if LABEL_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, LABEL_COLUMN]

    def _reference_logits(self, model, model_inputs):
        if self.ref_model is not None:
            return self.ref_model(**model_inputs, use_cache=False).logits
        with self.accelerator.unwrap_model(model).disable_adapter():  # the base: the adapter off
            return model(**model_inputs, use_cache=False).logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        label = inputs.pop(LABEL_COLUMN)
        labels = inputs.pop("labels")
        model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
        outputs = model(**model_inputs, use_cache=False)
        policy_logp, n_tokens = sequence_logprobs(outputs.logits, labels)
        ref_logp = torch.zeros_like(policy_logp)
        if (label < 0.5).any():
            with torch.no_grad():
                ref_logp = sequence_logprobs(self._reference_logits(model, model_inputs), labels)[0]
        per_example = ulma_loss(policy_logp, ref_logp, n_tokens, label, self.args.beta, self.args.ulma_z)
        loss = per_example.mean()
        mode = "train" if model.training else "eval"
        with torch.no_grad():
            pos, neg = label > 0.5, label < 0.5
            if pos.any():
                self._metrics[mode].setdefault("ulma/positive_nll", []).append(per_example[pos].mean().item())
            if neg.any():
                self._metrics[mode].setdefault("ulma/negative_loss", []).append(per_example[neg].mean().item())
                self._metrics[mode].setdefault("ulma/negative_logratio", []).append(
                    (policy_logp[neg] - ref_logp[neg]).mean().item())
        return (loss, outputs) if return_outputs else loss
