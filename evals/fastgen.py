"""Static-KV-cache decoding for evaluation: large length-bucketed batches, a preallocated cache, and a decode step
compiled once per shape and replayed as a CUDA graph.

Why not ``model.generate``: at evaluation batch sizes an 8B decode step is launch- and Python-bound in eager mode
(about 110 ms a step measured on an H200 at batch 64 and at 256 alike: docs/PERFORMANCE.md), while the step's real
work (read 16 GB of weights plus the KV cache) takes a few milliseconds. A CUDA graph replays the whole step with
one launch. ``generate(cache_implementation="static")`` compiles too, but runs its logits processors and an
all-finished check (a host sync) between steps; this loop keeps the GPU queue full and checks for the end every
``sync_every`` steps. transformers' own ``StaticCache`` and ``get_compiled_call`` do the caching and compiling
(the same objects ``generate`` uses), so only the loop is ours.

Greedy decoding here is the same computation as ``evals.generate``'s ``model.generate`` path (same positions, same
padding mask, argmax of the same logits): token-identical in float32 (tests/test_fastgen.py). In bf16 a different
batch shape changes the matmul kernels' rounding, so a near-tie can flip a token, exactly as changing the batch
size of ``model.generate`` does (bench/eval_throughput.py measures both rates).

Shapes: a batch is ``rows x (prompt bucket + max_new_tokens)``; prompt widths round up to a few buckets and a short
last batch is filled with copies of its last row (outputs dropped), so a whole evaluation compiles a handful of
graphs. Sampling (temperature, top-p) runs eagerly on the step's logits with a seeded generator.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# Settings of a model's generation_config that model.generate would apply and this loop does not: a model that
# sets any of them goes through model.generate instead (evals.generate.choose_backend).
UNSUPPORTED_GENERATION_SETTINGS = {
    "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "min_length": 0, "min_new_tokens": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "sequence_bias": None, "renormalize_logits": False,
    "diversity_penalty": 0.0, "exponential_decay_length_penalty": None,
}


def unsupported_settings(model) -> dict[str, Any]:
    """The model's generation_config settings that this loop would silently ignore (empty: safe to use)."""
    cfg = getattr(model, "generation_config", None)
    if cfg is None:
        return {}
    out = {}
    for name, neutral in UNSUPPORTED_GENERATION_SETTINGS.items():
        value = getattr(cfg, name, neutral)
        if value not in (neutral, None) and not (name == "min_length" and value == 0):
            out[name] = value
    return out


def prompt_bucket(width: int, minimum: int = 32) -> int:
    """Round a prompt width up to 2^n or 1.5 x 2^n (at least ``minimum``): few shapes, at most a third padding."""
    width = max(width, minimum)
    p = 1 << (width - 1).bit_length()
    return p * 3 // 4 if p * 3 // 4 >= width and p >= 64 else p


def row_bucket(rows: int, max_rows: int, *, compiled: bool) -> int:
    """Rows of a batch. Compiled: always ``max_rows`` (a short last batch is filled up): a decode step reads the
    same weights for 64 rows as for 256, so the filler costs little, while a new shape costs a compile.
    Eager (CPU): the next power of two, as compute grows with the rows there."""
    return max_rows if compiled else min(max_rows, 1 << max(0, (rows - 1).bit_length()))


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    text = getattr(config, "get_text_config", lambda: config)()
    heads = getattr(text, "num_attention_heads")
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers * 2 * kv_heads * head_dim * dtype_bytes


GROUPED_ATTENTION = "harmgate_grouped_decode"


def grouped_decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             is_causal=None, **kwargs):
    """Attention for one new token per row without copying the KV cache per query head.

    transformers' SDPA path repeats each key/value head for its query heads (``repeat_kv``) whenever a mask is
    given, and a static cache always needs one: at batch 256 that copy is 4x the KV cache, written and read again
    every step and layer, several times the bytes of the weights. Here the query heads of one KV head form a group
    and attend with two batched matmuls, reading the cache once. Prompts (more than one query position) go to
    transformers' SDPA function unchanged."""
    import torch

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] != 1 or attention_mask is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    b, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim ** -0.5
    q = query.view(b, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale           # [b, kv_heads, group, length]
    if attention_mask is not None:
        mask = attention_mask[:, :, -1:, : key.shape[2]]                       # [b, 1, 1, length]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    probs = scores.softmax(dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)                                           # [b, kv_heads, group, dim]
    return out.reshape(b, 1, heads, dim), None                                 # as SDPA's: [b, q, heads, dim]


def _attn(model) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


def use_grouped_attention(model) -> None:
    """Register :func:`grouped_decode_attention` (with SDPA's mask builder) and switch ``model`` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GROUPED_ATTENTION, grouped_decode_attention)
    AttentionMaskInterface.register(GROUPED_ATTENTION, sdpa_mask)
    model.set_attn_implementation(GROUPED_ATTENTION)


@dataclass
class DecodeStats:
    """What the decoder did, for benchmarks and logs."""

    batches: int = 0
    rows: int = 0                   # real rows (prompts x k)
    padded_rows: int = 0            # filler rows of short last batches
    steps: int = 0                  # decode steps over all batches
    new_tokens: int = 0             # tokens generated for real rows, up to and including the end token
    prefill_s: float = 0.0
    decode_s: float = 0.0
    compiled: bool = False
    compile_error: str | None = None
    attention: str | None = None    # the attention implementation the decode steps ran with
    shapes: list[tuple[int, int]] = field(default_factory=list)   # (rows, cache length) in the order first used

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(map(list, v)) if k == "shapes" else v) for k, v in self.__dict__.items()}


class StaticDecoder:
    """Batched greedy or sampled decoding with a transformers ``StaticCache`` and a compiled decode step.

    One decoder serves one model: caches and compiled graphs are kept per shape and reused across calls (a suite
    after another, an arm's every suite). ``compile=False`` runs the same loop eagerly (CPU, tests, fallback).
    """

    def __init__(self, model, *, compile: bool = True, max_rows: int = 256, kv_budget_bytes: int | None = None,
                 prefill_tokens: int = 131072, sync_every: int = 16, compile_mode: str = "reduce-overhead",
                 compile_dynamic: bool | None = None, grouped_attention: bool = True):
        self.model = model
        self.compile = compile
        current = _attn(model)
        self._plain_attention = "sdpa" if current == GROUPED_ATTENTION else current  # what to go back to
        self.grouped_attention = grouped_attention and current in ("sdpa", "eager", GROUPED_ATTENTION)
        self.max_rows = max_rows
        self.kv_budget_bytes = kv_budget_bytes
        self.prefill_tokens = prefill_tokens
        self.sync_every = max(1, sync_every)
        self.compile_mode = compile_mode
        self.compile_dynamic = compile_dynamic
        self.stats = DecodeStats()
        self._caches: dict[tuple[int, int], Any] = {}
        self._step = None
        params = inspect.signature(model.forward).parameters
        # transformers renamed past_key_values to cache after 5.17; both name the same Cache object
        self._cache_kw = "past_key_values" if "past_key_values" in params else "cache"
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    # ---------------------------------------------------------------- shapes and memory
    def kv_budget(self) -> int | None:
        """Bytes the KV caches may take: ``kv_budget_bytes``, else on a GPU half the free memory plus what the
        caches already hold; None on a CPU (no limit from here)."""
        if self.kv_budget_bytes is not None:
            return self.kv_budget_bytes
        if self.device.type != "cuda":
            return None
        import torch

        free, _ = torch.cuda.mem_get_info(self.device)
        return free // 2 + sum(self._cache_bytes(k) for k in self._caches)

    def rows_for(self, cache_len: int, width: int | None = None) -> int:
        """Rows a batch may have at this cache length: max_rows, fewer when the KV cache or the prefill would not
        fit (:meth:`kv_budget`)."""
        rows = self.max_rows
        budget = self.kv_budget()
        if budget:
            per_row = cache_len * kv_bytes_per_token(self.model.config, self.dtype.itemsize)
            rows = min(rows, max(1, budget // per_row))
        rows = min(rows, max(1, self.prefill_tokens // max(1, width or cache_len)))  # the prefill's activations
        return 1 << (rows.bit_length() - 1)  # a power of two: fewer distinct shapes

    def _cache_bytes(self, key: tuple[int, int]) -> int:
        rows, length = key
        return rows * length * kv_bytes_per_token(self.model.config, self.dtype.itemsize)

    def _cache(self, rows: int, length: int):
        """The cache of this shape, emptied. Caches of recent shapes are kept while they fit the budget: a CUDA
        graph recorded on one cache replays only on that cache's memory (a new one means recording again)."""
        from transformers import StaticCache

        key = (rows, length)
        cache = self._caches.pop(key, None)
        if cache is None:
            budget = self.kv_budget() if self.device.type == "cuda" else 0
            need = self._cache_bytes(key)
            while self._caches and sum(map(self._cache_bytes, self._caches)) + need > (budget or 0):
                self._caches.pop(next(iter(self._caches)))  # the least recently used
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            self.stats.shapes.append(key)
        else:
            cache.reset()
        self._caches[key] = cache  # most recently used last
        return cache

    # ---------------------------------------------------------------- the compiled step
    def _decode_fn(self):
        if self._step is not None:
            return self._step
        if not self.compile:
            self._step = self.model.__call__
            return self._step
        import torch

        # compile_dynamic None: the first shape compiles static, the second recompiles with symbolic sizes, later
        # shapes reuse that graph (a CUDA graph is still recorded per concrete shape, which is cheap). The
        # recompile limit is raised so that a long evaluation's shapes never silently drop back to eager.
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), 64))
        try:
            from transformers.generation.configuration_utils import CompileConfig

            cfg = CompileConfig(fullgraph=False, dynamic=self.compile_dynamic, mode=self.compile_mode)
            self._step = self.model.get_compiled_call(cfg)
        except (ImportError, AttributeError):  # an older transformers: compile the call ourselves
            self._step = torch.compile(self.model.__call__, mode=self.compile_mode, dynamic=self.compile_dynamic)
        self.stats.compiled = True
        return self._step

    def _fall_back_to_eager(self, err: BaseException) -> None:
        log.warning("compiled decode step failed (%s: %s); continuing eagerly", type(err).__name__, err)
        self.stats.compile_error = f"{type(err).__name__}: {err}"[:500]
        self.stats.compiled = False
        self.compile = False
        self._step = self.model.__call__

    # ---------------------------------------------------------------- one batch
    def decode(self, rows: list[list[int]], *, max_new_tokens: int, eos_token_id: int | list[int], pad_token_id: int,
               temperature: float = 0.0, top_p: float = 1.0, generator=None) -> list[list[int]]:
        """New token ids for each row of ``rows`` (prompt token ids); each ends at its first end token
        (included) or after ``max_new_tokens``. A compiled step that fails reruns the batch eagerly."""
        import torch

        state = generator.get_state() if generator is not None else None
        while True:
            self._set_attention()
            try:
                with torch.no_grad():
                    return self._decode(rows, max_new_tokens, eos_token_id, pad_token_id, temperature, top_p,
                                        generator)
            except Exception as err:  # noqa: BLE001 - a compile/graph failure: fall back one level and rerun
                if not self.compile:
                    raise
                if self.grouped_attention:  # first without the grouped attention, still compiled
                    log.warning("compiled decode with grouped attention failed (%s: %s); retrying with SDPA",
                                type(err).__name__, err)
                    self.stats.compile_error = f"grouped attention: {type(err).__name__}: {err}"[:500]
                    self.grouped_attention = False
                else:  # then eagerly
                    self._fall_back_to_eager(err)
                if generator is not None:
                    generator.set_state(state)

    def _set_attention(self) -> None:
        """The model's attention as this decoder wants it (the grouped one, or back to SDPA after a failure)."""
        current = _attn(self.model)
        if self.grouped_attention and current != GROUPED_ATTENTION:
            use_grouped_attention(self.model)
        elif not self.grouped_attention and current == GROUPED_ATTENTION:
            self.model.set_attn_implementation(self._plain_attention)
        self.stats.attention = _attn(self.model)

    def _decode(self, rows, max_new_tokens, eos_token_id, pad_token_id, temperature, top_p, generator):
        import torch

        n = len(rows)
        width = prompt_bucket(max(len(r) for r in rows))
        length = width + max_new_tokens
        batch_rows = row_bucket(n, self.rows_for(length, width), compiled=self.compile)
        if batch_rows < n:
            raise ValueError(f"{n} rows but this shape allows {batch_rows}; split with StaticDecoder.batches")
        filled = rows + [rows[-1]] * (batch_rows - n)
        ids = torch.full((batch_rows, width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((batch_rows, length), dtype=torch.long)
        for r, toks in enumerate(filled):
            ids[r, width - len(toks):] = torch.tensor(toks, dtype=torch.long)
            mask[r, width - len(toks):] = 1
        # Positions still to come stay 0 until their token is fed, as in model.generate's growing mask. (5.17 and
        # 5.24 keep the mask at a static-cache decode step anyway; a mask of all ones could otherwise be dropped
        # and the empty slots attended to.)
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        next_pos = mask[:, :width].sum(-1, keepdim=True)           # each row's first new position
        ids, mask, positions, next_pos = (t.to(self.device) for t in (ids, mask, positions, next_pos))
        eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=self.device)
        cache = self._cache(batch_rows, length)

        t0 = time.perf_counter()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **{self._cache_kw: cache})
        token = self._pick(out.logits[:, -1, :], temperature, top_p, generator)
        del out
        self._sync()
        t1 = time.perf_counter()

        step_fn = self._decode_fn()
        done = torch.zeros(batch_rows, dtype=torch.bool, device=self.device)
        pad = torch.full_like(token, pad_token_id)
        produced = []
        steps = 0
        for step in range(max_new_tokens):
            token = torch.where(done, pad, token)
            produced.append(token)
            done = done | torch.isin(token, eos)
            if step == max_new_tokens - 1:
                break
            if (step + 1) % self.sync_every == 0 and bool(done[:n].all()):
                break
            mask[:, width + step] = 1  # in place: same shape every step, copied into the graph's input
            if self.compile:
                torch.compiler.cudagraph_mark_step_begin()
            logits = step_fn(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos + step,
                             use_cache=True, **{self._cache_kw: cache}).logits[:, -1, :]
            # picked before the next call: a CUDA graph's output is overwritten by its next replay
            token = self._pick(logits, temperature, top_p, generator)
            steps += 1
        self._sync()
        self.stats.prefill_s += t1 - t0
        self.stats.decode_s += time.perf_counter() - t1
        new = torch.stack(produced, dim=1)[:n].tolist()
        results = []
        eos_set = set(eos.tolist())
        for toks in new:
            end = next((i + 1 for i, t in enumerate(toks) if t in eos_set), len(toks))
            results.append(toks[:end])
        self.stats.batches += 1
        self.stats.rows += n
        self.stats.padded_rows += batch_rows - n
        self.stats.steps += steps
        self.stats.new_tokens += sum(len(r) for r in results)
        return results

    @staticmethod
    def _pick(logits, temperature: float, top_p: float, generator):
        import torch

        if temperature <= 0:
            return logits.argmax(-1)
        # As transformers' TemperatureLogitsWarper then TopPLogitsWarper, then multinomial sampling.
        scores = logits.float() / temperature
        if top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(scores, descending=False)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove = cumulative <= (1 - top_p)
            remove[..., -1:] = False  # keep at least one token
            scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), -math.inf)
        probs = scores.softmax(dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    # ---------------------------------------------------------------- many prompts
    def batches(self, lengths: list[int], max_new_tokens: int) -> list[list[int]]:
        """Indices of ``lengths`` grouped into batches: sorted by length (short first), each batch as many rows as
        its longest prompt's shape allows."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        out: list[list[int]] = []
        start = 0
        while start < len(order):
            # the batch's longest prompt decides its shape; grow while the shape still admits the rows
            rows = self.max_rows
            while True:
                idx = order[start:start + rows]
                width = prompt_bucket(max(lengths[i] for i in idx))
                cap = self.rows_for(width + max_new_tokens, width)
                if len(idx) <= cap:
                    break
                rows = cap
            out.append(idx)
            start += len(idx)
        return out

    def generate(self, rows: list[list[int]], *, max_new_tokens: int, eos_token_id, pad_token_id: int,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, progress=None) -> list[list[int]]:
        """New token ids for every row, in the order given."""
        import torch

        generator = None
        if temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
        results: list[list[int] | None] = [None] * len(rows)
        for idx in self.batches([len(r) for r in rows], max_new_tokens):
            got = self.decode([rows[i] for i in idx], max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                              pad_token_id=pad_token_id, temperature=temperature, top_p=top_p, generator=generator)
            for i, toks in zip(idx, got):
                results[i] = toks
            if progress is not None:
                progress(len(idx))
        return [r if r is not None else [] for r in results]
