"""Synthetic long-context training data, generated on the fly (used by ``yoco_core.train``).

Every sample is exactly ``length + 1`` token ids (inputs are ``ids[:-1]``, labels ``ids[1:]``) and a
``kind`` per token saying how the trainer weighs the loss of *predicting* that token:

* ``ANSWER`` (2): a token that can only be predicted by retrieving something from the context
  (a needle's value, a looked-up value, a copied span); the trainer's main loss;
* ``CONTEXT`` (1): everything else (instruction, filler, needles, questions); an auxiliary
  language-modelling loss of small weight;
* ``IGNORE`` (0): padding at the end of a sample; no loss.

Three tasks, mixed per sample (``mix``):

* ``needle``: the exact evaluation format of :mod:`yoco_core.needle` (its templates, keys, values,
  haystacks and ``build_sample``), RULER ``niah_single`` or ``niah_multikey`` with 2 to 4 needles,
  each needle at a uniform random depth (the ends included). A multi-key sample asks the
  evaluated question first, then, after its answer, asks for each other needle in the same
  question format: more retrieval targets per sample, and every needle is a hard negative for
  the others. Haystack: ``noise`` (the evaluation default, exactly) or ``text`` prose from
  grammar seeds other than the evaluation's seed 0.
* ``kv``: a dense table of ``key: value`` lines (the needle keys and 7-digit values) followed by
  lookups ``key:`` -> `` value``: associative recall at every distance, many targets per sample.
* ``copy``: a random passage of words and numbers, a separator, then the passage again: induction
  (find the earlier occurrence of what was just read, continue it) at every distance.

The batch of training step ``s`` depends only on ``(seed, s)`` (its own ``numpy`` generator), so
resuming at step ``s`` reproduces the data exactly, and batches can be built ahead in a thread.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from . import needle as nd
from .tokenizer import Tokenizer

IGNORE, CONTEXT, ANSWER = 0, 1, 2
TASKS = ("needle", "kv", "copy")
DEFAULT_MIX = {"needle": 0.5, "kv": 0.25, "copy": 0.25}

# The kv and copy tasks' own surface formats (the needle task uses yoco_core.needle's templates).
KV_INTRO = "Look up the number of each key in this table.\n"
KV_LINE = "{key}: {value}\n"
KV_QUERY = "{key}:"
KV_ANSWER = " {value}\n"
COPY_INTRO = "Read the passage, then repeat it.\n"
COPY_SEPARATOR = "\nRepeat:\n"

MAX_TRAIN_NEEDLES = 4          # multi-key samples hold 2 .. this many needles
TEXT_SEEDS = (1, 2, 3, 4)      # prose grammar seeds for training haystacks (evaluation uses 0)
POOL_SENTENCES = 6000          # sentences kept per prose seed (~70 bytes each)


def parse_mix(text: str) -> dict[str, float]:
    """``needle=0.5,kv=0.25,copy=0.25`` -> normalised weights; ValueError (one line) if bad."""
    mix: dict[str, float] = {}
    for part in str(text).split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in TASKS:
            raise ValueError(f"bad mix entry {part.strip()!r}: use TASK=WEIGHT with TASK in {', '.join(TASKS)}")
        try:
            mix[name] = float(value)
        except ValueError:
            raise ValueError(f"bad mix weight {value.strip()!r} for {name}: not a number") from None
    return normalise_mix(mix)


def normalise_mix(mix: dict[str, float]) -> dict[str, float]:
    """Task weights (a task left out weighs 0) -> weights of every task summing to 1;
    ValueError (one line) for an unknown task, a negative weight or all weights 0."""
    for name, w in mix.items():
        if name not in TASKS:
            raise ValueError(f"bad mix entry {name!r}: use TASK=WEIGHT with TASK in {', '.join(TASKS)}")
        if not 0 <= float(w) < math.inf:         # NaN fails this too
            raise ValueError(f"bad mix weight {float(w):g} for {name}: must be a finite number >= 0")
    total = sum(float(w) for w in mix.values())
    if total <= 0:
        raise ValueError("the mix gives every task weight 0")
    return {k: float(mix.get(k, 0.0)) / total for k in TASKS}


@dataclass
class Batch:
    ids: np.ndarray        # int64 [B, length + 1]
    kind: np.ndarray       # int8  [B, length + 1]: IGNORE / CONTEXT / ANSWER of each token
    tasks: list[str]


class PoolHaystack(nd.Haystack):
    """Prose sentences of a fixed pool, starting at a given sentence and wrapping around:
    a cheap fresh haystack per sample (``yoco_core.needle.Haystack`` does the rest)."""

    name = "text-pool"

    def __init__(self, tokenizer, sentences: list[str], start: int):
        super().__init__(tokenizer)
        self._sentences, self._start = sentences, start

    def pieces(self) -> Iterator[str]:
        s, i = self._sentences, self._start
        while True:
            yield s[i]
            i = (i + 1) % len(s)


class SyntheticData:
    """Builds the batch of any step: ``batch(step, batch_size, length)``."""

    def __init__(self, tokenizer: Tokenizer, seed: int = 0, mix: dict[str, float] | None = None):
        self.tok = tokenizer
        self.seed = int(seed)
        self.mix = normalise_mix(mix or DEFAULT_MIX)
        self._pools: dict[int, list[str]] = {}
        self._noise = nd.make_haystack("noise", tokenizer)     # the evaluation's filler, exactly
        g = nd.grammar()
        self._words = sorted({w for k in ("nouns", "adjectives", "places", "key_nouns", "key_adjectives",
                                          "names", "verbs_i", "verbs_t", "adverbs") for w in g[k]})
        self._kv_intro = self.tok.encode(KV_INTRO, add_bos=True)
        self._copy_intro = self.tok.encode(COPY_INTRO, add_bos=True)
        self._copy_sep = self.tok.encode(COPY_SEPARATOR)
        # an upper bound on one follow-up question + answer (longest key, 7-digit value)
        key = max((f"{a}-{n}" for a in g["key_adjectives"] for n in g["key_nouns"]),
                  key=lambda k: len(self.tok.encode(k)))
        self._followup_max = len(self._followup(key, "9" * nd.VALUE_DIGITS)[0]) + 2
        self._answer_max = len(self.tok.encode(f" {'9' * nd.VALUE_DIGITS}.")) + 2
        self._min_ctx = {n: nd.min_context(self.tok, "single" if n == 1 else "multi-key", n)
                         for n in range(1, MAX_TRAIN_NEEDLES + 1)}

    # -- state (the generator is a pure function of (seed, step); this is what resumes it) -------
    def state(self, next_step: int) -> dict:
        return {"seed": self.seed, "next_step": int(next_step), "mix": self.mix}

    # -- batches ------------------------------------------------------------------------------
    def batch(self, step: int, batch_size: int, length: int) -> Batch:
        rng = np.random.default_rng([self.seed, int(step)])
        names = list(self.mix)
        probs = np.array([self.mix[n] for n in names])
        picks = rng.choice(len(names), size=batch_size, p=probs)
        ids = np.empty((batch_size, length + 1), dtype=np.int64)
        kind = np.empty((batch_size, length + 1), dtype=np.int8)
        tasks = []
        for b in range(batch_size):
            task = names[picks[b]]
            seed = int(rng.integers(1 << 62))
            row, k, task = self.sample(task, length + 1, seed)
            ids[b], kind[b] = row, k
            tasks.append(task)
        return Batch(ids, kind, tasks)

    def sample(self, task: str, n_tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
        """One sample of exactly ``n_tokens`` ids: (ids, kind, the task it became).

        A needle sample too short for even one needle becomes a kv sample."""
        rng = random.Random(seed)
        if task == "needle":
            out = self._needle(n_tokens, rng)
            if out is not None:
                return (*out, "needle")
            task = "kv"
        if task == "kv":
            return (*self._kv(n_tokens, rng), "kv")
        if task == "copy":
            return (*self._copy(n_tokens, rng), "copy")
        raise ValueError(f"unknown task {task!r}")

    # -- needle: yoco_core.needle's exact format -----------------------------------------------
    def _pool(self, text_seed: int) -> list[str]:
        pool = self._pools.get(text_seed)
        if pool is None:
            hay = nd.TextHaystack(self.tok, text_seed)
            it = hay.pieces()
            pool = self._pools[text_seed] = [next(it) for _ in range(POOL_SENTENCES)]
        return pool

    def _followup(self, key: str, value: str) -> tuple[list[int], list[int]]:
        """The evaluated question asked again for another needle: (ids, kind)."""
        q = self.tok.encode("\n" + nd.QUESTION.format(key=key))
        a = self.tok.encode(f" {value}.")
        return q + a, [CONTEXT] * len(q) + [ANSWER] * len(a)

    def _needle(self, n_tokens: int, rng: random.Random):
        n = rng.choice([1, 1] + list(range(2, MAX_TRAIN_NEEDLES + 1)))
        if rng.random() < 0.5:
            haystack: nd.Haystack = self._noise
        else:
            pool = self._pool(rng.choice(TEXT_SEEDS))
            haystack = PoolHaystack(self.tok, pool, rng.randrange(len(pool)))
        u = rng.random()
        depth = 0.0 if u < 0.05 else 1.0 if u < 0.10 else rng.random()
        while n >= 1:
            task = "single" if n == 1 else "multi-key"
            reserve = self._answer_max + (n - 1) * self._followup_max
            ctx = n_tokens - reserve
            if ctx >= self._min_ctx[n]:
                break
            n -= 1
        else:
            return None
        s = nd.build_sample(self.tok, ctx, depth, task, n, rng, haystack)
        ids = list(s.prompt_ids)
        kind = [CONTEXT] * len(ids)
        answer = self.tok.encode(s.answer)
        ids += answer
        kind += [ANSWER] * len(answer)
        others = list(range(1, n))
        rng.shuffle(others)
        for j in others:
            f_ids, f_kind = self._followup(s.keys[j], s.values[j])
            ids += f_ids
            kind += f_kind
        return _pad(ids, kind, n_tokens, self.tok.pad_id)

    # -- kv: a table, then lookups ------------------------------------------------------------------
    def _kv(self, n_tokens: int, rng: random.Random):
        ids = list(self._kv_intro)
        kind = [CONTEXT] * len(ids)
        line_len = len(self.tok.encode(KV_LINE.format(key="amber-otter", value="1234567")))
        budget = n_tokens - len(ids)
        n_pairs = max(1, min(2000, int(budget * rng.uniform(0.4, 0.7)) // max(1, line_len)))
        keys = nd.draw_keys(rng, n_pairs)
        values = [str(rng.randint(10 ** (nd.VALUE_DIGITS - 1), 10 ** nd.VALUE_DIGITS - 1)) for _ in keys]
        n_table = 0
        for k, v in zip(keys, values):
            line = self.tok.encode(KV_LINE.format(key=k, value=v))
            if len(ids) + len(line) > n_tokens:
                break
            ids += line
            kind += [CONTEXT] * len(line)
            n_table += 1
        if n_table == 0:
            return _pad(ids, kind, n_tokens, self.tok.pad_id)
        while True:
            j = rng.randrange(n_table)
            q = self.tok.encode(KV_QUERY.format(key=keys[j]))
            a = self.tok.encode(KV_ANSWER.format(value=values[j]))
            if len(ids) + len(q) + len(a) > n_tokens:
                break
            ids += q + a
            kind += [CONTEXT] * len(q) + [ANSWER] * len(a)
        return _pad(ids, kind, n_tokens, self.tok.pad_id)

    # -- copy: a passage, then the passage again ----------------------------------------------------
    def _copy(self, n_tokens: int, rng: random.Random):
        head, sep = self._copy_intro, self._copy_sep
        span = (n_tokens - len(head) - len(sep)) // 2
        if span < 1:
            return _pad(list(head), [CONTEXT] * len(head), n_tokens, self.tok.pad_id)
        words: list[int] = []
        while len(words) < span:
            if rng.random() < 0.1:
                w = str(rng.randint(0, 10 ** rng.randint(1, nd.VALUE_DIGITS) - 1))
            else:
                w = rng.choice(self._words)
            words += self.tok.encode(" " + w)
        passage = words[:span]
        ids = list(head) + passage + list(sep) + passage
        kind = [CONTEXT] * (len(head) + span + len(sep)) + [ANSWER] * span
        return _pad(ids, kind, n_tokens, self.tok.pad_id)


def _pad(ids: list[int], kind: list[int], n_tokens: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    if len(ids) > n_tokens:
        raise AssertionError(f"sample of {len(ids)} tokens exceeds {n_tokens}")
    short = n_tokens - len(ids)
    out = np.fromiter(ids + [pad_id] * short, dtype=np.int64, count=n_tokens)
    k = np.fromiter(kind + [IGNORE] * short, dtype=np.int8, count=n_tokens)
    return out, k

