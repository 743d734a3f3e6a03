"""Structured outputs: ``response_format`` json_object / json_schema enforced by constrained decoding.

The grammar engine is llguidance (the library behind Guidance, also used by vLLM and SGLang): it compiles a JSON
Schema into a token-level grammar and, at each step, says which tokens of the model's vocabulary may come next.
serve/engine.py masks every other token before choosing one, so a reply that ends on its own (finish_reason
"stop") is valid JSON that matches the schema; a reply cut by the token limit ("length") may be incomplete, as
OpenAI documents for its JSON mode. Writing a JSON grammar matcher by hand would be the slow, buggy copy of this.

Whitespace between tokens is fixed (``", "`` and ``": "``, no newlines): with free whitespace a model can pad a
reply with blank lines until it hits the token limit, which is the opposite of reliable.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ConstraintError(ValueError):
    """The response_format cannot be enforced (bad schema, unsupported keyword, tokenizer not supported)."""


@dataclass(frozen=True)
class Grammar:
    """A compiled, validated grammar for one request (``kind`` is the response_format type)."""

    kind: str
    source: str


class GrammarCompiler:
    """Builds llguidance matchers for one model's tokenizer (wrapping the tokenizer once, lazily: ~1 s)."""

    def __init__(self, tokenizer: Any, eos_ids: frozenset[int], vocab_size: int) -> None:
        self._hf_tokenizer = tokenizer
        self._eos_ids = sorted(eos_ids)
        self._vocab_size = vocab_size
        self._lock = threading.Lock()
        self._tokenizer: Any = None

    def _ll_tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf
                from transformers import PreTrainedTokenizerFast

                if not isinstance(self._hf_tokenizer, PreTrainedTokenizerFast):
                    raise ConstraintError("the served model's tokenizer is not a fast (Rust) tokenizer, which the "
                                          "constrained decoder needs")
                try:
                    self._tokenizer = llguidance.hf.from_tokenizer(self._hf_tokenizer, n_vocab=self._vocab_size,
                                                                   eos_token=self._eos_ids)
                except Exception as err:  # noqa: BLE001 - whatever the wrapper rejects: say so, refuse the format
                    raise ConstraintError(f"the constrained decoder cannot read this tokenizer: {err}") from None
            return self._tokenizer

    def token_bytes(self, token: int) -> bytes | None:
        """A token's raw bytes (part of a UTF-8 character, for some), or None where the tokenizer is not wrapped."""
        try:
            return bytes(self._ll_tokenizer().decode_bytes([token]))
        except ConstraintError:
            return None

    def compile(self, kind: str, schema: dict[str, Any] | None = None) -> Grammar:
        """The grammar for ``json_object`` (any JSON object) or ``json_schema`` (``schema``); ConstraintError if
        the schema is not one llguidance can enforce."""
        import llguidance

        target = {"type": "object"} if kind == "json_object" else (schema if schema is not None else {})
        try:
            source = llguidance.LLMatcher.grammar_from_json_schema(target, overrides=JSON_OPTIONS)
        except (ValueError, TypeError) as err:
            raise ConstraintError(f"not a usable JSON Schema: {err}") from None
        problem = llguidance.LLMatcher.validate_grammar(source, self._ll_tokenizer())
        if problem:
            raise ConstraintError(f"the schema cannot be enforced: {problem.strip()[:400]}")
        return Grammar(kind, source)

    def matcher(self, grammar: Grammar) -> "Matcher":
        import llguidance

        return Matcher(llguidance.LLMatcher(self._ll_tokenizer(), grammar.source, log_level=0), self._vocab_size)


class Matcher:
    """One row's grammar state: which tokens may come next; consumes the token chosen."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        import torch

        self._m = matcher
        self._words = (vocab_size + 31) // 32
        self._mask = torch.zeros(self._words, dtype=torch.int32)

    def allowed(self, width: int) -> Any:
        """A bool tensor of ``width`` (the logits' width): True where a token may come next."""
        import torch

        self._m.unsafe_compute_mask_ptr(self._mask.data_ptr(), self._words * 4)
        # Unpack the 32-bit words, least significant bit first (llguidance's layout), without torch.compile.
        bits = (self._mask.unsqueeze(1) >> torch.arange(32, dtype=torch.int32)) & 1
        flat = bits.flatten().bool()
        if flat.numel() >= width:
            return flat[:width]
        return torch.cat([flat, torch.zeros(width - flat.numel(), dtype=torch.bool)])

    def consume(self, token: int) -> None:
        if not self._m.consume_token(token):
            raise ConstraintError(f"constrained decoding failed: {self._m.get_error()}")

    @property
    def error(self) -> str | None:
        return self._m.get_error() or None if self._m.is_error() else None
