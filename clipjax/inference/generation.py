"""Autoregressive text generation under jit: greedy, nucleus / top-k sampling and beam search,
with min/max length and repetition penalty, following transformers' `generate` step for step
so that greedy and beam outputs equal transformers' on the same weights.

Everything has static shapes: sequences live in a (N, max_length) buffer padded with
`pad_id`, the loop is a `lax.while_loop`, and the model is a function

    decode_fn(tokens (N, max_length) int32, cur_len scalar int32) -> logits (N, vocab)

returning the next-token logits at position cur_len - 1. With a causal decoder, positions at
and after cur_len do not influence those logits, so `decode_fn` may run the whole buffer (no
key/value cache: each step recomputes the prefix, O(max_length^2) per sequence — captions are
~30-40 tokens). For beam search, N = batch * num_beams (beams of an item are adjacent, as
`expand_for_beams` lays out encoder states).

Semantics kept from transformers 5 (`GenerationMixin._sample` / `_beam_search`):
- `max_length` / `min_length` count the prompt; generation stops when every sequence has
  produced `eos_id` or the buffer is full; finished sequences are padded with `pad_id`.
- processors in transformers' order: repetition penalty (over every token so far, the
  prompt included: score < 0 -> score * p, else score / p), min length (eos -> -inf), then
  for sampling temperature, top-k, top-p (keep the smallest set whose probability reaches
  top_p, at least one token). Beam search applies them to log-softmax scores.
- beam search: 2 * num_beams candidates per step, hypotheses scored by
  sum log p / generated_length ** length_penalty, `early_stopping` False / True / "never".
Returned sequences are the full buffer; `length` is where transformers would cut them
(positions at and after it are `pad_id`; beam search fills with `pad_id or eos_id`, as
transformers does).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf
_BIG = 1.0e9  # transformers' "very large negative" for beams that must not be chosen


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    max_length: int = 30
    min_length: int = 0
    num_beams: int = 1
    do_sample: bool = False
    top_p: float = 1.0
    top_k: int = 0  # 0: off (transformers' default for sampling is 50; pass it explicitly)
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False

    def __post_init__(self):
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.do_sample and self.num_beams > 1:
            raise ValueError("beam sampling is not supported; use do_sample with num_beams=1")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.early_stopping not in (False, True, "never"):
            raise ValueError(f"early_stopping must be False, True or 'never', got {self.early_stopping!r}")


def expand_for_beams(x, num_beams: int):
    """(B, ...) -> (B * num_beams, ...), each item repeated num_beams times in a row."""
    return jnp.repeat(x, num_beams, axis=0)


# ------------------------------------------------------------------------------ processors


def _seen_tokens(tokens, cur_len, vocab: int):
    """(N, V) bool: which ids occur in tokens[:, :cur_len]."""
    valid = jnp.arange(tokens.shape[1])[None, :] < cur_len
    seen = jnp.zeros((tokens.shape[0], vocab + 1), bool)
    rows = jnp.arange(tokens.shape[0])[:, None]
    seen = seen.at[rows, jnp.where(valid, tokens, vocab)].set(True)  # invalid positions -> spare column
    return seen[:, :vocab]


def process_scores(scores, tokens, cur_len, cfg: GenerationConfig, eos_id: int, warp: bool):
    """transformers' logits processors (and, when `warp`, the sampling warpers) on (N, V)."""
    vocab = scores.shape[-1]
    if cfg.repetition_penalty != 1.0:
        seen = _seen_tokens(tokens, cur_len, vocab)
        p = cfg.repetition_penalty
        scores = jnp.where(seen, jnp.where(scores < 0, scores * p, scores / p), scores)
    if cfg.min_length > 0:
        scores = jnp.where((cur_len < cfg.min_length) & (jnp.arange(vocab) == eos_id)[None, :], NEG_INF, scores)
    if warp:
        if cfg.temperature != 1.0:
            scores = scores / cfg.temperature
        if cfg.top_k > 0:
            k = min(cfg.top_k, vocab)
            kth = jax.lax.top_k(scores, k)[0][:, -1:]
            scores = jnp.where(scores < kth, NEG_INF, scores)
        if cfg.top_p < 1.0:
            scores = _top_p(scores, cfg.top_p)
    return scores


def _top_p(scores, top_p: float):
    """TopPLogitsWarper: sort ascending, drop the tokens whose cumulative probability is
    <= 1 - top_p, always keeping the most likely one."""
    order = jnp.argsort(scores, axis=-1)  # ascending
    sorted_scores = jnp.take_along_axis(scores, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_scores, axis=-1), axis=-1)
    remove_sorted = cum <= 1.0 - top_p
    remove_sorted = remove_sorted.at[:, -1].set(False)
    remove = jnp.zeros_like(remove_sorted).at[jnp.arange(scores.shape[0])[:, None], order].set(remove_sorted)
    return jnp.where(remove, NEG_INF, scores)


# --------------------------------------------------------------------------- greedy / sample


def _sample_or_greedy(decode_fn, tokens, prompt_len, cfg, eos_id, pad_id, rng):
    n, max_len = tokens.shape

    def cond(state):
        tokens, cur_len, unfinished, rng = state
        return (cur_len < max_len) & jnp.any(unfinished)

    def body(state):
        tokens, cur_len, unfinished, rng = state
        logits = decode_fn(tokens, cur_len).astype(jnp.float32)
        scores = process_scores(logits, tokens, cur_len, cfg, eos_id, warp=cfg.do_sample)
        if cfg.do_sample:
            rng, key = jax.random.split(rng)
            nxt = jax.random.categorical(key, scores, axis=-1)
        else:
            nxt = jnp.argmax(scores, axis=-1)
        nxt = jnp.where(unfinished, nxt, pad_id).astype(tokens.dtype)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], cur_len, axis=1)
        unfinished = unfinished & (nxt != eos_id)
        return tokens, cur_len + 1, unfinished, rng

    init = (tokens, jnp.asarray(prompt_len, jnp.int32), jnp.ones((n,), bool), rng)
    tokens, cur_len, _, _ = jax.lax.while_loop(cond, body, init)
    return tokens, cur_len


# ------------------------------------------------------------------------------ beam search


def _beam_search(decode_fn, tokens, prompt_len, cfg: GenerationConfig, eos_id, pad_id):
    nk, max_len = tokens.shape
    k = cfg.num_beams
    b = nk // k
    keep = 2 * k  # max(2, 1 + number of eos ids) * num_beams with one eos id
    top_k_mask = jnp.arange(keep) < k
    lp, early = cfg.length_penalty, cfg.early_stopping

    def gather(x, idx):  # x (B, M, ...) , idx (B, J) -> (B, J, ...)
        return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    running = tokens.reshape(b, k, max_len)
    state = dict(
        running=running,
        running_scores=jnp.where(jnp.arange(k)[None, :] == 0, 0.0, -_BIG) * jnp.ones((b, 1)),
        seqs=running,
        scores=jnp.full((b, k), -_BIG),
        lengths=jnp.full((b, k), prompt_len, jnp.int32),  # where each finished hypothesis ends
        finished=jnp.zeros((b, k), bool),
        unsat=jnp.ones((b, 1), bool),  # early-stop heuristic not yet satisfied
        go=jnp.asarray(True),
        cur_len=jnp.asarray(prompt_len, jnp.int32),
    )

    def body(s):
        cur_len = s["cur_len"]
        flat = s["running"].reshape(nk, max_len)
        logits = decode_fn(flat, cur_len).astype(jnp.float32)
        logp = process_scores(jax.nn.log_softmax(logits, axis=-1), flat, cur_len, cfg, eos_id, warp=False)
        vocab = logp.shape[-1]
        acc = (logp.reshape(b, k, vocab) + s["running_scores"][:, :, None]).reshape(b, k * vocab)
        top_scores, top_idx = jax.lax.top_k(acc, keep)
        beam, tok = top_idx // vocab, top_idx % vocab
        cand = gather(s["running"], beam)
        cand = jax.lax.dynamic_update_slice_in_dim(cand, tok[:, :, None].astype(cand.dtype), cur_len, axis=2)
        hits = (tok == eos_id) | (cur_len + 1 >= max_len)

        # running beams for the next step: the best `k` candidates that did not stop
        run_scores = top_scores - _BIG * hits
        nxt = jax.lax.top_k(run_scores, k)[1]
        running, running_scores = gather(cand, nxt), gather(run_scores, nxt)

        # finished hypotheses: merge the top-k candidates that just stopped
        just = hits & top_k_mask[None, :]
        fin = top_scores / ((cur_len + 1 - prompt_len).astype(jnp.float32) ** lp)
        if early is True:
            fin = fin - _BIG * jnp.all(s["finished"], axis=-1, keepdims=True)
        fin = fin - _BIG * (~s["unsat"]) - _BIG * (~just)
        merged_scores = jnp.concatenate([s["scores"], fin], axis=1)
        best = jax.lax.top_k(merged_scores, k)[1]
        seqs = gather(jnp.concatenate([s["seqs"], cand], axis=1), best)
        scores = gather(merged_scores, best)
        lengths = gather(jnp.concatenate([s["lengths"], jnp.full((b, keep), cur_len + 1, jnp.int32)], axis=1), best)
        finished = gather(jnp.concatenate([s["finished"], just], axis=1), best)

        cur_len = cur_len + 1
        if early == "never" and lp > 0.0:
            best_len = jnp.asarray(max_len - prompt_len, jnp.float32)
        else:
            best_len = (cur_len - prompt_len).astype(jnp.float32)
        best_running = running_scores[:, :1] / best_len ** lp
        worst_finished = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), -_BIG)
        unsat = s["unsat"] & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
        go = jnp.any(unsat) & ~jnp.all(hits)
        if early is True:
            go = go & ~jnp.all(finished)
        return dict(running=running, running_scores=running_scores, seqs=seqs, scores=scores, lengths=lengths,
                    finished=finished, unsat=unsat, go=go, cur_len=cur_len)

    s = jax.lax.while_loop(lambda s: s["go"], body, state)
    return s["seqs"], s["scores"], s["lengths"]


# ------------------------------------------------------------------------------------- API


def generate(decode_fn: Callable, prompt, cfg: GenerationConfig, eos_id: int, pad_id: int,
             rng: Optional[jax.Array] = None, num_return_sequences: int = 1):
    """prompt (B, P) int -> dict(sequences (B * num_return_sequences, max_length) int32,
    length scalar: transformers' output length (the longest returned sequence), scores
    (beam search: the returned hypotheses' length-normalised log-probabilities)).

    For beam search `decode_fn` sees B * num_beams rows (prompt rows repeated per beam), so
    encoder states it closes over must be laid out with `expand_for_beams`. Jit-compatible
    (cfg, eos_id, pad_id static)."""
    prompt = jnp.asarray(prompt, jnp.int32)
    b, p = prompt.shape
    if p >= cfg.max_length:
        raise ValueError(f"the prompt has {p} tokens; max_length {cfg.max_length} leaves no room to generate")
    tokens = jnp.full((b, cfg.max_length), pad_id, jnp.int32).at[:, :p].set(prompt)
    if cfg.num_beams == 1:
        if num_return_sequences != 1:
            raise ValueError("num_return_sequences > 1 needs beam search")
        if cfg.do_sample and rng is None:
            raise ValueError("sampling needs an rng key")
        seqs, length = _sample_or_greedy(decode_fn, tokens, p, cfg, eos_id, pad_id,
                                         rng if rng is not None else jax.random.PRNGKey(0))
        return dict(sequences=seqs, length=length, scores=None)
    if not 1 <= num_return_sequences <= cfg.num_beams:
        raise ValueError(f"num_return_sequences must be in [1, num_beams={cfg.num_beams}]")
    seqs, scores, lengths = _beam_search(decode_fn, expand_for_beams(tokens, cfg.num_beams), p, cfg, eos_id, pad_id)
    seqs, scores, lengths = (x[:, :num_return_sequences] for x in (seqs, scores, lengths))
    # after a hypothesis' end transformers' beam buffer holds `pad_token_id or eos_token_id`:
    # a pad id of 0 (BERT's) is falsy there, so it fills with eos
    pos = jnp.arange(cfg.max_length)[None, None, :]
    seqs = jnp.where(pos < lengths[:, :, None], seqs, pad_id if pad_id else eos_id)
    return dict(sequences=seqs.reshape(-1, cfg.max_length), length=jnp.max(lengths),
                scores=scores.reshape(-1))
