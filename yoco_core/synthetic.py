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
  haystacks and ``build_sample``), each of the four formats ``yoco needle`` scores
  (``NEEDLE_FORMATS``): ``single``; ``multi-key`` (one of 2 to 8 needles asked, the others
  distractors; after its answer each other needle is asked for in the same question format: more
  retrieval targets per sample, every needle a hard negative for the others); ``multi-needle``
  (2 to 8 keys asked at once); ``multi-value`` (one key with 2 to 8 values). Their answers list
  the values in the order they stand in the text (``needle_order="text"``), multi-needle's in the
  order the question lists the keys (``"asked"``), or both in a random order per sample, joined by
  commas alone (``"any"``: the next value is any one not yet given, and a comma says more
  follow), or multi-needle's in the question's order and multi-value's in a random one
  (``"asked-any"``: each multi-needle value is the lookup of the next key listed, none has to be
  remembered as given); the scorer takes any order.
  Each needle at a uniform random depth (the ends included). Haystacks (``HAYSTACKS``): ``noise``
  (the evaluation default, exactly), ``noise-lines`` (the same sentences a line at a time, as
  RULER's ``repeat`` haystack), ``text`` prose from grammar seeds other than the evaluation's
  seed 0, and ``needle-lines`` (a line per distractor needle of other keys, RULER's ``needle``
  haystack of ``niah_multikey_2``). Keys (``KEY_STYLES``): the evaluation's ``adjective-noun``
  pairs, or pairs of other words and made-up words, so that retrieval does not hang on a closed
  list of keys.
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
# What the generator makes, in the checkpoints: a run resumes only on the data it started on
# (1: single and multi-key needles; 2: every needle format, the line haystacks, the key styles)
DATA_VERSION = 2
TASKS = ("needle", "kv", "copy")
DEFAULT_MIX = {"needle": 0.5, "kv": 0.25, "copy": 0.25}

# The kv and copy tasks' own surface formats (the needle task uses yoco_core.needle's templates).
KV_INTRO = "Look up the number of each key in this table.\n"
KV_LINE = "{key}: {value}\n"
KV_QUERY = "{key}:"
KV_ANSWER = " {value}\n"
COPY_INTRO = "Read the passage, then repeat it.\n"
COPY_SEPARATOR = "\nRepeat:\n"

NEEDLE_FORMATS = {"single": 0.15, "multi-key": 0.35, "multi-needle": 0.3, "multi-value": 0.2}
MAX_TRAIN_NEEDLES = 8          # multi-* samples hold 2 .. this many needles
HAYSTACKS = {"noise": 0.35, "noise-lines": 0.1, "text": 0.35, "needle-lines": 0.2}
KEY_STYLES = {"grammar": 0.5, "words": 0.5}
# a list answer's order: the text's, the question's, random; asked-any: multi-needle the question's,
# multi-value (one key: the question orders nothing) random
NEEDLE_ORDERS = ("text", "asked", "any", "asked-any")
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]    # made-up words: 2 to 4 of these
TEXT_SEEDS = (1, 2, 3, 4)      # prose grammar seeds for training haystacks (evaluation uses 0)
POOL_SENTENCES = 6000          # sentences kept per prose seed (~70 bytes each)


def parse_weights(text: str, names, what: str, entry: str) -> dict[str, float]:
    """``A=0.5,B=0.25`` over ``names`` -> normalised weights (``normalise_weights``); ValueError (one
    line) if bad. ``what`` names the table in the message (``mix``), ``entry`` its entries (``TASK``)."""
    weights: dict[str, float] = {}
    for part in str(text).split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise ValueError(f"bad {what} entry {part.strip()!r}: use {entry}=WEIGHT with {entry} in "
                             f"{', '.join(names)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"bad {what} weight {value.strip()!r} for {name}: not a number") from None
    return normalise_weights(weights, names, what, entry)


def normalise_weights(weights: dict[str, float], names, what: str, entry: str) -> dict[str, float]:
    """Weights of some of ``names`` (one left out weighs 0) -> weights of every name summing to 1;
    ValueError (one line) for an unknown name, a negative weight or all weights 0."""
    for name, w in weights.items():
        if name not in names:
            raise ValueError(f"bad {what} entry {name!r}: use {entry}=WEIGHT with {entry} in {', '.join(names)}")
        if not 0 <= float(w) < math.inf:         # NaN fails this too
            raise ValueError(f"bad {what} weight {float(w):g} for {name}: must be a finite number >= 0")
    total = sum(float(w) for w in weights.values())
    if total <= 0:
        raise ValueError(f"the {what} gives every {entry.lower()} weight 0")
    return {k: float(weights.get(k, 0.0)) / total for k in names}


def parse_mix(text: str) -> dict[str, float]:
    """``needle=0.5,kv=0.25,copy=0.25`` -> normalised task weights; ValueError (one line) if bad."""
    return parse_weights(text, TASKS, "mix", "TASK")


def normalise_mix(mix: dict[str, float]) -> dict[str, float]:
    return normalise_weights(mix, TASKS, "mix", "TASK")


# The needle task's own tables, settable per run (``yoco train --needle-formats / --needle-counts``):
# the formats' weights (default ``NEEDLE_FORMATS``) and the weights of a multi-* sample's needle count
# (default: every count of 2 .. MAX_TRAIN_NEEDLES alike).
NEEDLE_COUNTS = tuple(str(n) for n in range(2, MAX_TRAIN_NEEDLES + 1))


def parse_needle_formats(text: str) -> dict[str, float]:
    """``single=1,multi-value=2`` -> weights of every format (``NEEDLE_FORMATS`` for an empty text)."""
    return parse_weights(text, tuple(NEEDLE_FORMATS), "needle format", "FORMAT") if str(text).strip() \
        else dict(NEEDLE_FORMATS)


def normalise_needle_formats(w: dict[str, float]) -> dict[str, float]:
    return normalise_weights(w, tuple(NEEDLE_FORMATS), "needle format", "FORMAT")


def parse_needle_counts(text: str) -> dict[str, float]:
    """``6=1,8=2`` -> weights of every count 2..8 (``{}`` for an empty text: all alike)."""
    return parse_weights(text, NEEDLE_COUNTS, "needle count", "N") if str(text).strip() else {}


def normalise_needle_counts(w: dict[str, float]) -> dict[str, float]:
    return normalise_weights({str(k): v for k, v in w.items()}, NEEDLE_COUNTS, "needle count", "N") if w else {}


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


class LinesHaystack(nd.Haystack):
    """RULER's line-per-unit haystacks: ``noise-lines`` repeats the noise sentences, a line at a
    time; ``needle-lines`` is a line per distractor needle (``keys()`` draws a key, never one of
    ``exclude``; the values are fresh 7-digit numbers). Each piece is a whole line, so the only
    boundaries are line starts, and a needle is a line of its own (``needle_prefix``), as the
    distractors are: nothing but its key tells it from them. Its snap distance is a line's length."""

    snap_tokens = 96
    needle_prefix = "\n"

    def __init__(self, tokenizer, kind: str, rng: random.Random, keys=None, exclude=()):
        super().__init__(tokenizer)
        self.name, self._rng, self._keys, self._exclude = kind, rng, keys, set(exclude)

    def pieces(self) -> Iterator[str]:
        if self.name == "noise-lines":
            while True:
                yield "\n" + " ".join(nd.NOISE)
        while True:
            key = self._keys()
            if key not in self._exclude:
                yield "\n" + nd.NEEDLE.format(key=key, value=nd.draw_values(self._rng, 1)[0])


class SyntheticData:
    """Builds the batch of any step: ``batch(step, batch_size, length)``."""

    def __init__(self, tokenizer: Tokenizer, seed: int = 0, mix: dict[str, float] | None = None,
                 needle_order: str = "text", needle_formats: dict[str, float] | None = None,
                 needle_counts: dict[str, float] | None = None):
        if needle_order not in NEEDLE_ORDERS:
            raise ValueError(f"needle order {needle_order!r}: use {' or '.join(NEEDLE_ORDERS)}")
        self.tok = tokenizer
        self.seed = int(seed)
        self.mix = normalise_mix(mix or DEFAULT_MIX)
        self.needle_order = needle_order
        # the defaults draw exactly as before the tables were settable (the same random stream)
        self.formats = NEEDLE_FORMATS if needle_formats is None else normalise_needle_formats(needle_formats)
        self.counts = normalise_needle_counts(needle_counts or {})
        self._pools: dict[int, list[str]] = {}
        self._noise = nd.make_haystack("noise", tokenizer)     # the evaluation's filler, exactly
        g = nd.grammar()
        self._words = sorted({w.lower() for k in ("nouns", "adjectives", "places", "key_nouns", "key_adjectives",
                                          "names", "verbs_i", "verbs_t", "adverbs") for w in g[k] if w.isalpha()})
        self._kv_intro = self.tok.encode(KV_INTRO, add_bos=True)
        self._copy_intro = self.tok.encode(COPY_INTRO, add_bos=True)
        self._copy_sep = self.tok.encode(COPY_SEPARATOR)
        # the longest key of any style (``_key``): the evaluation's, or two words or made-up words
        word = max(self._words + [SYLLABLES[0] * 4], key=lambda w: len(self.tok.encode(w)))
        key = max(nd.longest_key(self.tok), f"{word}-{word}", key=lambda k: len(self.tok.encode(k)))
        self._longest_key = key
        # an upper bound on one follow-up question + answer (longest key, 7-digit value)
        self._followup_max = len(self._followup(key, "9" * nd.VALUE_DIGITS)[0]) + 2
        nines = "9" * nd.VALUE_DIGITS
        self._answer_max = {n: len(self.tok.encode(" " + nd.join_keys([nines] * n) + ".")) + 2
                            for n in range(1, MAX_TRAIN_NEEDLES + 1)}
        self._min_ctx = {(f, n): nd.min_context(self.tok, f, n, key=key) for f in NEEDLE_FORMATS
                         for n in ([1] if f == "single" else range(2, MAX_TRAIN_NEEDLES + 1))}

    # -- state (the generator is a pure function of (seed, step); this is what resumes it) -------
    def state(self, next_step: int) -> dict:
        return {"version": DATA_VERSION, "seed": self.seed, "next_step": int(next_step), "mix": self.mix,
                "needle_order": self.needle_order, "needle_formats": dict(self.formats),
                "needle_counts": dict(self.counts)}

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

    def _key(self, style: str, rng: random.Random) -> str:
        if style == "grammar":
            return nd.draw_keys(rng, 1)[0]
        words = [rng.choice(self._words) if rng.random() < 0.5
                 else "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(2)]
        return "-".join(words)

    def _reserve(self, fmt: str, n: int) -> int:
        """Tokens after the prompt: the answer (and a multi-key sample's follow-up questions)."""
        if fmt == "multi-key":
            return self._answer_max[1] + (n - 1) * self._followup_max
        return self._answer_max[1 if fmt == "single" else n]

    def _needle(self, n_tokens: int, rng: random.Random):
        got = self.needle_sample(n_tokens, rng)
        return None if got is None else got[:2]

    def needle_sample(self, n_tokens: int, rng: random.Random, fmt: str | None = None, n: int | None = None,
                      haystack: str | None = None, key_style: str | None = None):
        """One needle sample of exactly ``n_tokens`` ids: (ids, kind, the ``NeedleSample``), or None
        when not even a single needle fits. Format, needle count, haystack and key style are drawn
        from ``rng`` unless given; a format (or count) that does not fit steps down to fewer
        needles, then to ``single``."""
        pick = lambda table: rng.choices(list(table), weights=list(table.values()))[0]
        fmt = fmt or pick(self.formats)
        if fmt == "single":
            n = 1
        elif n:
            n = int(n)
        else:
            n = int(pick(self.counts)) if self.counts else rng.randint(2, MAX_TRAIN_NEEDLES)
        haystack = haystack or pick(HAYSTACKS)
        style = key_style or pick(KEY_STYLES)
        while True:
            ctx = n_tokens - self._reserve(fmt, n)
            if ctx >= self._min_ctx[fmt, n]:
                break
            if n > 2:
                n -= 1
            elif fmt != "single":
                fmt, n = "single", 1
            else:
                return None
        keys: list[str] = []
        while len(keys) < (1 if fmt == "multi-value" else n):
            k = self._key(style, rng)
            if k not in keys:
                keys.append(k)
        if fmt == "multi-value":
            keys = keys * n
        values = nd.draw_values(rng, n)
        u = rng.random()
        depth = 0.0 if u < 0.05 else 1.0 if u < 0.10 else rng.random()
        if haystack == "noise":
            hay: nd.Haystack = self._noise
        elif haystack == "text":
            pool = self._pool(rng.choice(TEXT_SEEDS))
            hay = PoolHaystack(self.tok, pool, rng.randrange(len(pool)))
        else:
            hay = LinesHaystack(self.tok, haystack, random.Random(rng.getrandbits(64)),
                                lambda: self._key(style, rng), exclude=keys)
        s = nd.build_sample(self.tok, ctx, depth, fmt, n, rng, hay, keys=keys, values=values,
                            order="asked" if self.needle_order in ("asked", "asked-any") else "text")
        if (fmt in ("multi-needle", "multi-value") and self.needle_order == "any"
                or fmt == "multi-value" and self.needle_order == "asked-any"):
            rng.shuffle(s.expected)
            s.answer = " " + ", ".join(s.expected) + "."
        ids = list(s.prompt_ids)
        kind = [CONTEXT] * len(ids)
        answer = self.tok.encode(s.answer)
        ids += answer
        kind += [ANSWER] * len(answer)
        if fmt == "multi-key":
            others = list(range(1, n))
            rng.shuffle(others)
            for j in others:
                f_ids, f_kind = self._followup(s.keys[j], s.values[j])
                ids += f_ids
                kind += f_kind
        return (*_pad(ids, kind, n_tokens, self.tok.pad_id), s)

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

