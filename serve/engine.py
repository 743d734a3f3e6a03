"""Chat generation with a Hugging Face causal LM: chat template in, new tokens out, several requests per call.

``Engine.run_batch`` drives one ``model.generate`` for a group of requests (left-padded). Each request is a
``Ticket``; a stopping criterion hands every new token to its ticket as soon as it exists, so request threads can
stream while the batch is still generating, and it ends each row on its own terms (eos, its own max_tokens, its
stop strings, or a cancel) while the others go on. Only ``serve.batcher`` calls ``run_batch``, from one thread:
a model copy is never driven by two threads at once.

Each row chooses its own next token (``_ChooseRows``, a logits processor; ``generate`` itself decodes greedily and
so takes exactly that token): the row's logit_bias and penalties, its grammar (serve/constrain.py), then greedy
or temperature/top-p sampling with the row's own seeded ``torch.Generator``. So requests with different sampling
settings share a batch, a seed gives the same reply whatever else is in the batch, and the log-probabilities
(of the model's distribution, before bias, penalties, grammar, temperature and top-p, as vLLM reports them by
default) are taken where the token is chosen.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from serve.constrain import ConstraintError, Grammar, GrammarCompiler, Matcher

# Finish reasons a ticket can end with. "cancelled" carries a reason (client gone, version revoked...).
STOP, LENGTH, CANCELLED, ERROR = "stop", "length", "cancelled", "error"
MIN_SAMPLING_TEMPERATURE = 1e-3


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None              # sampling only; None: a fresh random seed per request
    logprobs: bool = False
    top_logprobs: int = 0
    frequency_penalty: float = 0.0       # OpenAI's additive penalties, over the tokens generated so far
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: Grammar | None = None       # response_format json_object / json_schema

    @property
    def sampled(self) -> bool:
        """Below MIN_SAMPLING_TEMPERATURE decoding is greedy: sampling there all but always picks the argmax,
        and dividing logits by e.g. 1e-300 overflows to inf."""
        return self.temperature >= MIN_SAMPLING_TEMPERATURE


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the ``top`` most likely tokens at its position."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


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
        self.logprobs: list[TokenLogprob] = []  # one per token in ``tokens`` when params.logprobs
        self.matcher: Matcher | None = None  # the grammar state, when params.grammar
        self.generator: Any = None           # the row's torch.Generator, when sampling
        self._chosen: TokenLogprob | None = None  # set by _ChooseRows, recorded by push
        self._ends: list[int] = []           # character offset where each token's text ends (token_pieces)
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
            if self.params.logprobs:
                chosen = self._chosen if self._chosen is not None and self._chosen.token == token else None
                self.logprobs.append(chosen or TokenLogprob(token, float("nan")))
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
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.vocab_size = int(getattr(head, "out_features", 0) or model.config.vocab_size)
        self.grammars = GrammarCompiler(tokenizer, self.eos_ids, self.vocab_size)

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

    def token_pieces(self, ticket: Ticket, count: int) -> list[str]:
        """The text of each of the first ``count`` tokens, cut so that the pieces add up to the decoded reply
        (a piece is empty while a multi-byte character is still incomplete)."""
        ends = ticket._ends
        for i in range(len(ends), count):
            text = self.decode(ticket.tokens[:i + 1])
            if i + 1 < len(ticket.tokens):
                text = text.rstrip("\ufffd")  # the rest of the character comes with the next token
            ends.append(max(len(text), ends[-1] if ends else 0))
        full = self.decode(ticket.tokens[:count])
        return [full[(ends[i - 1] if i else 0):ends[i]] for i in range(count)]

    def token_bytes(self, token: int) -> bytes:
        """The token's raw bytes (a token may hold part of a UTF-8 character: OpenAI's logprobs ``bytes``)."""
        raw = self.grammars.token_bytes(token)
        return raw if raw is not None else self.tokenizer.decode([token], skip_special_tokens=False).encode()

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
        """Generate for every ticket in one ``model.generate`` (each with its own settings, ``_ChooseRows``);
        tickets end in any state."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        live = [t for t in tickets if not t.done]
        if not live:
            return
        for t in live:
            t.start()
            self._prepare(t)
        live = [t for t in live if not t.done]
        if not live:
            return
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
        # Greedy over the scores _ChooseRows leaves (only its chosen token is finite): generate takes that token.
        kwargs: dict[str, Any] = {"max_new_tokens": max(t.params.max_new_tokens for t in live),
                                  "eos_token_id": sorted(self.eos_ids), "pad_token_id": self.pad_id,
                                  "stopping_criteria": StoppingCriteriaList([_Rows()]),
                                  "logits_processor": LogitsProcessorList([_ChooseRows(live)]),
                                  "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with torch.inference_mode():
            self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        for t in live:  # generate stopped at the batch's max_new_tokens: rows not ended by _Rows hit theirs
            t.finish(CANCELLED if t.cancel_reason else LENGTH)


    def _prepare(self, t: Ticket) -> None:
        """The row's generator and grammar state; a grammar that cannot be set up fails this row only."""
        import torch

        if t.params.sampled and t.generator is None:
            seed = t.params.seed if t.params.seed is not None else secrets.randbits(63)
            t.generator = torch.Generator(device=self.device).manual_seed(seed)
        if t.params.grammar is not None and t.matcher is None:
            try:
                t.matcher = self.grammars.matcher(t.params.grammar)
            except ConstraintError as err:
                t.finish(ERROR, err)


class _ChooseRows:
    """A logits processor that picks each row's next token (see the module docstring) and leaves only that token
    finite, so ``generate``'s greedy step takes it."""

    def __init__(self, tickets: list[Ticket]) -> None:
        self.tickets = tickets

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        out = torch.full_like(scores, float("-inf"))
        for i, t in enumerate(self.tickets):
            if t.done:
                out[i, 0] = 0.0  # generate pads finished rows anyway
                continue
            try:
                token = self._choose(t, scores[i].float())
            except Exception as err:  # noqa: BLE001 - one row's failure (grammar) must not end the others
                t.finish(ERROR, err)
                out[i, 0] = 0.0
                continue
            out[i, token] = 0.0
        return out

    @staticmethod
    def _choose(t: Ticket, raw: Any) -> int:
        import torch

        p = t.params
        logits = raw
        if p.logit_bias:
            logits = logits.clone()
            ids = torch.tensor([i for i, _ in p.logit_bias], device=raw.device)
            logits[ids] += torch.tensor([b for _, b in p.logit_bias], device=raw.device, dtype=logits.dtype)
        if (p.frequency_penalty or p.presence_penalty) and t.tokens:
            counts = torch.bincount(torch.tensor(t.tokens, device=raw.device), minlength=raw.numel())[:raw.numel()]
            logits = logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0)
        if t.matcher is not None:
            allowed = t.matcher.allowed(raw.numel()).to(raw.device)
            if not bool(allowed.any()):
                raise ConstraintError("constrained decoding reached a state with no allowed token")
            logits = logits.masked_fill(~allowed, float("-inf"))
        if p.sampled:
            probs = torch.softmax(logits / p.temperature, dim=-1)
            if p.top_p < 1.0:  # nucleus: the most likely tokens until their mass reaches top_p (at least one)
                sorted_p, order = probs.sort(descending=True)
                sorted_p[(sorted_p.cumsum(0) - sorted_p) >= p.top_p] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
            token = int(torch.multinomial(probs, 1, generator=t.generator))
        else:
            token = int(logits.argmax())
        if t.matcher is not None:
            t.matcher.consume(token)
        if p.logprobs:
            lp = torch.log_softmax(raw, dim=-1)
            top: tuple[tuple[int, float], ...] = ()
            if p.top_logprobs:
                values, ids = lp.topk(min(p.top_logprobs, lp.numel()))
                top = tuple(zip(ids.tolist(), values.tolist()))
            t._chosen = TokenLogprob(token, float(lp[token]), top)
        return token


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
