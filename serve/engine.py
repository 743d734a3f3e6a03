"""Chat generation with a Hugging Face causal LM: chat template in, new tokens out, several requests per call.

``Engine.run_batch`` drives one ``model.generate`` for a group of requests (left-padded, one sampling setting).
Each request is a ``Ticket``; a stopping criterion hands every new token to its ticket as soon as it exists, so
request threads can stream while the batch is still generating, and it ends each row on its own terms (eos, its
own max_tokens, its stop strings, or a cancel) while the others go on. Only ``serve.batcher`` calls
``run_batch``, from one thread: a model copy is never driven by two threads at once.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

# Finish reasons a ticket can end with. "cancelled" carries a reason (client gone, version revoked...).
STOP, LENGTH, CANCELLED, ERROR = "stop", "length", "cancelled", "error"
MIN_SAMPLING_TEMPERATURE = 1e-3


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    @property
    def sampled(self) -> bool:
        """Below MIN_SAMPLING_TEMPERATURE decoding is greedy: sampling there all but always picks the argmax,
        and dividing logits by e.g. 1e-300 overflows to inf and makes sampling fail for the whole batch."""
        return self.temperature >= MIN_SAMPLING_TEMPERATURE

    @property
    def batch_key(self) -> tuple[bool, float, float]:
        """Requests share a ``generate`` call only with the same sampling settings (they apply batch-wide)."""
        if not self.sampled:
            return (False, 0.0, 1.0)
        return (True, self.temperature, self.top_p)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or a stop string) or "length"


_ids = itertools.count(1)


class Ticket:
    """One request's generation: written by the batch thread, read (and maybe cancelled) by the request thread."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams) -> None:
        self.seq = next(_ids)
        self.prompt_ids = prompt_ids
        self.params = params
        self.tokens: list[int] = []          # generated tokens, without a final eos
        self.completion_tokens = 0           # every generated token, eos included (what usage reports)
        self.finish_reason: str | None = None
        self.cancel_reason: str | None = None
        self.error: BaseException | None = None
        self.queued_at = time.perf_counter()
        self.started_at: float | None = None
        self.first_token_at: float | None = None
        self._cond = threading.Condition()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    # -- written by the batch thread ------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.perf_counter()

    def push(self, token: int, engine: "Engine") -> bool:
        """Record one generated token; True when this row is finished."""
        if self.done:
            return True
        if self.cancel_reason is not None:
            self.finish(CANCELLED)
            return True
        with self._cond:
            self.completion_tokens += 1
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            if token in engine.eos_ids:
                self._finish_locked(STOP)
                return True
            self.tokens.append(token)
            if self.params.stop and engine.tail_has_stop(self.tokens, self.params.stop):
                self._finish_locked(STOP)
            elif self.completion_tokens >= self.params.max_new_tokens:
                self._finish_locked(LENGTH)
            self._cond.notify_all()
            return self.done

    def finish(self, reason: str, error: BaseException | None = None) -> None:
        with self._cond:
            if not self.done:
                self.error = error
                self._finish_locked(reason)

    def _finish_locked(self, reason: str) -> None:
        self.finish_reason = reason
        self._cond.notify_all()

    # -- used by the request thread -------------------------------------------------------------------
    def cancel(self, reason: str) -> None:
        """Stop this row at its next token (or before it starts); the batch's other rows go on."""
        with self._cond:
            if self.cancel_reason is None:
                self.cancel_reason = reason
            if self.started_at is None:
                self._finish_locked(CANCELLED)

    def updates(self, timeout: float | None = None) -> Iterator[int]:
        """Yield the token count each time it grows, until the ticket is done (then one last time)."""
        seen = -1
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: len(self.tokens) != seen or self.done, timeout):
                    raise TimeoutError(f"no token within {timeout} s")
                count, done = len(self.tokens), self.done
            if count != seen:
                seen = count
                yield count
            if done:
                return

    def wait(self, timeout: float | None = None) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.done, timeout):
                raise TimeoutError(f"generation did not finish within {timeout} s")


class Engine:
    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        eos = {tokenizer.eos_token_id, *_as_list(getattr(model.generation_config, "eos_token_id", None))}
        self.eos_ids = frozenset(i for i in eos if i is not None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        # Fast tokenizers raise "Already borrowed" when two threads encode at once; decoding is read-only.
        self._encode_lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, *, torch_threads: int | None = None) -> "Engine":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if torch_threads:
            torch.set_num_threads(torch_threads)
        cuda = torch.cuda.is_available()
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
        # local_files_only: the folder was verified against the manifest; nothing else may be pulled in.
        # trust_remote_code stays off for the same reason.
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        return cls(model.to("cuda" if cuda else "cpu"), tokenizer)

    @property
    def parameter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        # Render to text, then tokenize without extra specials: the template already has its turn markers.
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        with self._encode_lock:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def tail_has_stop(self, tokens: list[int], stops: tuple[str, ...]) -> bool:
        # A stop string of n characters spans at most n tokens (+1 for a partial byte sequence).
        window = max(len(s) for s in stops) + 1
        tail = self.decode(tokens[-window:])
        return any(s in tail for s in stops)

    def text_of(self, ticket: Ticket, upto: int | None = None) -> str:
        """The reply text so far, cut before the first stop string."""
        text = self.decode(ticket.tokens[:upto])
        cuts = [i for i in (text.find(s) for s in ticket.params.stop) if i >= 0]
        return text[:min(cuts)] if cuts else text

    def stream_text(self, ticket: Ticket) -> str:
        """``text_of`` minus a tail that may be the start of a stop string (it would be cut if completed)."""
        done = ticket.done  # read before the text: tokens only grow, so holding back is then always safe
        text = self.text_of(ticket)
        if done or not ticket.params.stop:
            return text
        hold = max((n for s in ticket.params.stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        return text[:len(text) - hold]

    def result(self, ticket: Ticket) -> Generation:
        return Generation(self.text_of(ticket), len(ticket.prompt_ids), ticket.completion_tokens,
                          ticket.finish_reason or LENGTH)

    def run_batch(self, tickets: list[Ticket]) -> None:
        """Generate for every ticket (same ``batch_key``) in one ``model.generate``; tickets end in any state."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        live = [t for t in tickets if not t.done]
        if not live:
            return
        for t in live:
            t.start()
        engine = self

        class _Rows(StoppingCriteria):
            # Called after every decoding step with the whole batch: feeds each row's ticket, says who is done.
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                last = input_ids[:, -1].tolist()
                done = [t.push(tok, engine) for t, tok in zip(live, last)]
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        width = max(len(t.prompt_ids) for t in live)
        ids = torch.tensor([[self.pad_id] * (width - len(t.prompt_ids)) + t.prompt_ids for t in live],
                           device=self.device)
        mask = torch.tensor([[0] * (width - len(t.prompt_ids)) + [1] * len(t.prompt_ids) for t in live],
                            device=self.device)
        params = live[0].params
        kwargs: dict[str, Any] = {"max_new_tokens": max(t.params.max_new_tokens for t in live),
                                  "eos_token_id": sorted(self.eos_ids), "pad_token_id": self.pad_id,
                                  "stopping_criteria": StoppingCriteriaList([_Rows()])}
        if params.sampled:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        for t in live:  # generate stopped at the batch's max_new_tokens: rows not ended by _Rows hit theirs
            t.finish(CANCELLED if t.cancel_reason else LENGTH)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
