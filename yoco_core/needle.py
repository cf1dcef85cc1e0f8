"""Needle-in-a-haystack retrieval: haystacks, needles, prompts built to an exact token count, scoring.

Conventions (RULER, Hsieh et al. 2024, "What's the real context size of your long-context LMs?",
its ``niah_*`` tasks; the passkey filler of Mohtashami & Jaggi 2023):

* **Needle**: ``One of the special magic numbers for {key} is: {value}.`` The key is a random
  ``adjective-noun`` pair (RULER's "words" keys, from our own word lists), the value a random
  7-digit number (RULER's "numbers" values). Both are drawn from a seed, so a run is reproducible
  and a model cannot guess the answer.
* **Prompt**: an instruction line, the haystack with the needle(s) inside, then the question and
  the start of the answer, which the model completes::

      Some special magic numbers are hidden within the following text. Make sure to memorize it.
      I will quiz you about the numbers afterwards.
      <haystack ... One of the special magic numbers for shy-otter is: 4819302. ... haystack>
      What is the special magic number for shy-otter mentioned in the provided text? The special
      magic number for shy-otter mentioned in the provided text is

  For a base model the question and the answer prefix form one plain continuation. For an
  instruct model (``chat_template``: a jinja text, ``tokenizer.chat_template_for``), as RULER: the
  instruction, haystack and question are the user turn of transformers' ``apply_chat_template``
  (with the generation prompt), and the answer prefix follows it (``chat_prompt``).
* **Tasks** (``n`` = the needles inserted; RULER's default for the multi tasks is 4):

  - ``single``: one needle, one question (RULER ``niah_single``);
  - ``multi-needle``: ``n`` needles with different keys, the question asks for all of them
    (RULER ``niah_multiquery``; the multi-needle setting of the YOCO paper);
  - ``multi-key``: ``n`` needles with different keys, the question asks for one; the other
    ``n - 1`` are distractors (RULER ``niah_multikey``);
  - ``multi-value``: one key with ``n`` values in ``n`` needles, the question asks for all of them
    (RULER ``niah_multivalue``).

  Multi-key questions (``multi-needle``) list the keys as ``a, b, and c``; questions asking for
  several values use "What are all the special magic numbers for ...".
* **Haystacks**: ``noise`` repeats "The grass is green. The sky is blue. The sun is yellow. Here we
  go. There and back again." (the passkey filler, RULER's ``noise``); ``text`` is readable
  English-like prose generated from a seeded grammar shipped in ``yoco_core/data/prose.json``
  (in place of RULER's Paul Graham essays, which cannot ship); any other value is a UTF-8 file,
  repeated as often as needed (as RULER repeats its essays).
* **Length and depth**: the prompt is the text a person would write (``sample.prompt_text``),
  tokenized once as the model's tokenizer tokenizes a whole text (its BOS, when it adds one,
  counts; with a chat template, none: the template writes it), so ``prompt_ids ==
  tokenizer.encode(prompt_text, add_special_tokens=True)``. The length is exact: the filler's
  length, estimated from its sentences tokenized in context (``Haystack``), is corrected by the
  whole text's count and searched around on token boundaries of the filler (``_fit``). The
  haystack takes what the other parts leave, ``H`` tokens (its last sentence may be cut short).
  Depth ``d`` puts the needle after ``round(d * H)`` haystack tokens (0 = right after the
  instruction, 1 = right before the question), moved to the nearest sentence boundary when one is
  within ``max(16, H / 200)`` tokens (``snap_tolerance``); the needle's token position is read off
  the whole text's tokenization (offsets). With several needles the first sits at ``d`` and the
  others follow at ``d + j / n`` (wrapping past the end), evenly spread over the haystack; for
  ``multi-key`` the first is the one asked about. For the byte tokenizer (the tiny models) the
  prompts are byte for byte what piece-wise concatenation gave before.
* **Scoring**: greedy generation of at most ``12`` tokens per expected value (+4), stopped at a
  newline or a period; the score is the share of expected values that occur in the answer as
  whole numbers (not inside a longer number). RULER's ``string_match_all`` is the same share with
  plain substring matching.
"""
from __future__ import annotations

import bisect
import functools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from .generation import generate

DATA_DIR = Path(__file__).parent / "data"

# -- templates (RULER style) -----------------------------------------------------------------
INTRO = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
         "I will quiz you about the numbers afterwards.\n")
NEEDLE = "One of the special magic numbers for {key} is: {value}."
QUESTION = ("What is the special magic number for {key} mentioned in the provided text? "
            "The special magic number for {key} mentioned in the provided text is")
QUESTION_ALL = ("What are all the special magic numbers for {key} mentioned in the provided text? "
                "The special magic numbers for {key} mentioned in the provided text are")
NOISE = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
         "There and back again.")

TASKS = ("single", "multi-needle", "multi-key", "multi-value")
DEFAULT_NEEDLES = {"single": 1, "multi-needle": 4, "multi-key": 4, "multi-value": 4}
MAX_NEEDLES = 64
VALUE_DIGITS = 7
ANSWER_TOKENS_PER_VALUE = 12
ANSWER_EXTRA_TOKENS = 4
STOP_STRINGS = ("\n", ".")
SNAP_TOKENS = 16          # snap a needle to a sentence boundary this close (or H / SNAP_FRACTION)
SNAP_FRACTION = 200


@functools.lru_cache(maxsize=1)
def grammar() -> dict:
    """The shipped word lists and sentence templates (``yoco_core/data/prose.json``)."""
    return json.loads((DATA_DIR / "prose.json").read_text(encoding="utf-8"))


# -- haystacks ----------------------------------------------------------------------------------
ANCHOR = "."          # what a sentence follows: pieces are tokenized after it (then dropped), as mid-text


class Haystack:
    """An endless stream of filler sentences, tokenized piece by piece and cached: the stream's
    token count estimates the filler's share of a prompt, which is then tokenized as one text.

    Every piece starts with whitespace (as the needles do), so needles and sentences join cleanly
    wherever a needle goes. A tokenizer with ``encode_offsets`` tokenizes a piece after ``ANCHOR``
    (then drops it), so a sentencepiece-style normalizer (``Prepend("▁")``) sees it as in mid-text.

    ``take(n)`` gives the first ``n`` token ids; ``snap(pos, n)`` moves a position to the nearest
    sentence boundary within tolerance; ``text(n)`` is the stream text of the first ``n`` tokens.
    One instance belongs to one tokenizer.
    """

    name = "haystack"
    snap_tokens = SNAP_TOKENS      # the least distance a needle may move to a sentence boundary
    needle_prefix = " "            # what a needle starts with (a line haystack's start a line)

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._ids: list[int] = []
        self._bounds: list[int] = [0]       # token offsets where a sentence starts
        self._chars: list[int] = [0]        # character offsets of the same
        self._texts: list[str] = []         # the pieces so far
        self._starts: list[list[int] | None] = []   # each piece's token start characters (None: not yet)
        self._pieces: Iterator[str] | None = None
        self._memo: dict[str, tuple[list[int], list[int] | None]] = {}
        self._joined = ""

    def pieces(self) -> Iterator[str]:
        """Sentences in order, each with its leading whitespace; never ends."""
        raise NotImplementedError

    def _encode(self, piece: str) -> tuple[list[int], list[int] | None]:
        got = self._memo.get(piece)
        if got is None:
            got = _encode_in_text(self.tokenizer, piece)
            if len(self._memo) < 4096:
                self._memo[piece] = got
        return got

    def _fill(self, n: int) -> None:
        if self._pieces is None:
            self._pieces = self.pieces()
        stalled = 0
        while len(self._ids) < n:
            piece = next(self._pieces)
            ids, starts = self._encode(piece)
            if not ids:
                stalled += 1
                if stalled > 1000:
                    raise ValueError(f"haystack {self.name!r} yields no tokens")
                continue
            stalled = 0
            self._ids.extend(ids)
            self._bounds.append(len(self._ids))
            self._texts.append(piece)
            self._starts.append(starts)
            self._chars.append(self._chars[-1] + len(piece))

    def take(self, n: int) -> list[int]:
        self._fill(n)
        return self._ids[:n]

    def char_at(self, pos: int) -> int:
        """The stream character where token ``pos`` starts (the end of the stream text of the
        first ``pos`` tokens)."""
        self._fill(pos)
        k = bisect.bisect_right(self._bounds, pos) - 1
        within = pos - self._bounds[k]
        if within == 0:
            return self._chars[k]
        if self._starts[k] is None:                   # no offsets: the decoded length of the prefix
            ids = self._ids[self._bounds[k]: self._bounds[k + 1]]
            self._starts[k] = [len(self.tokenizer.decode(ids[:j])) for j in range(len(ids))]
        return self._chars[k] + self._starts[k][within]

    def text(self, start_char: int, end_char: int) -> str:
        """The stream's characters ``[start_char, end_char)``."""
        if len(self._joined) < end_char:
            self._joined = "".join(self._texts)
        return self._joined[start_char:end_char]

    def snap(self, pos: int, n: int, tolerance: int | None = None) -> int:
        """Where a needle aimed at ``pos`` of an ``n``-token haystack goes: the nearest sentence
        boundary within ``tolerance`` tokens (0 and ``n`` count as boundaries), else the nearest
        word start (a token whose text begins with whitespace) within it, else ``pos`` itself."""
        self._fill(n)
        if tolerance is None:
            tolerance = max(self.snap_tokens, snap_tolerance(n))
        hi = bisect.bisect_right(self._bounds, n)
        i = bisect.bisect_left(self._bounds, pos, 0, hi)
        candidates = [b for b in (self._bounds[i - 1] if i > 0 else None,
                                  self._bounds[i] if i < hi else None, n) if b is not None]
        best = min(candidates, key=lambda b: (abs(b - pos), b))
        if abs(best - pos) <= tolerance:
            return best
        for off in range(min(tolerance, SNAP_TOKENS) + 1):
            for p in (pos - off, pos + off):
                if 0 < p < n:
                    c = self.char_at(p)
                    if self.text(c, c + 1).isspace():
                        return p
        return pos


def snap_tolerance(n: int) -> int:
    """How far (tokens) a needle may move to a sentence boundary in an ``n``-token haystack."""
    return max(SNAP_TOKENS, n // SNAP_FRACTION)


def _encode_in_text(tokenizer, piece: str) -> tuple[list[int], list[int] | None]:
    """``piece``'s ids as inside a text (after ``ANCHOR``), with each token's start character;
    a tokenizer without ``encode_offsets``: ``encode(piece)`` and None."""
    offsets = getattr(tokenizer, "encode_offsets", None)
    if offsets is None:
        return tokenizer.encode(piece), None
    ids, starts = offsets(ANCHOR + piece)
    if len(starts) != len(ids):                       # no offsets from this tokenizer
        return tokenizer.encode(piece), None
    keep = [j for j, c in enumerate(starts) if c >= len(ANCHOR)]
    if not keep or starts[keep[0]] != len(ANCHOR) or any(j != keep[0] + i for i, j in enumerate(keep)):
        return tokenizer.encode(piece), None
    return [ids[j] for j in keep], [starts[j] - len(ANCHOR) for j in keep]


class NoiseHaystack(Haystack):
    """The passkey filler: five short sentences, repeated."""

    name = "noise"

    def pieces(self) -> Iterator[str]:
        while True:
            yield from (" " + s for s in NOISE)


class TextHaystack(Haystack):
    """Readable English-like prose from the shipped grammar; ``seed`` picks the text."""

    name = "text"

    def __init__(self, tokenizer, seed: int = 0):
        super().__init__(tokenizer)
        self.seed = seed

    def pieces(self) -> Iterator[str]:
        rng = random.Random(f"yoco-haystack:{self.seed}")
        first = True
        while True:                                   # paragraphs of 4 to 9 sentences
            for i in range(rng.randint(4, 9)):
                yield (" " if i or first else "\n\n ") + prose_sentence(rng)
                first = False


class FileHaystack(Haystack):
    """A user's UTF-8 text file, split into sentences and repeated as often as needed."""

    def __init__(self, tokenizer, path):
        super().__init__(tokenizer)
        path = Path(path).expanduser()
        self.name = str(path)
        if not path.is_file():
            raise ValueError(f"haystack {str(path)!r} is neither noise, text nor an existing file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"haystack file {str(path)!r} is not UTF-8 text") from None
        except OSError as e:
            raise ValueError(f"cannot read haystack file {str(path)!r}: {e.strerror}") from None
        text = text.strip()
        if not text:
            raise ValueError(f"haystack file {str(path)!r} is empty")
        # split after sentence-final punctuation; every piece starts with whitespace
        self._sentences = [p for p in re.split(r"(?<=[.!?])(?=\s)", " " + text) if p]

    def pieces(self) -> Iterator[str]:
        yield from self._sentences
        while True:
            yield "\n\n" + self._sentences[0]
            yield from self._sentences[1:]


def _article(m: re.Match) -> str:
    a, word = m.group(1), m.group(2)
    return (a + "n " if word[0].lower() in "aeiou" else a + " ") + word


def prose_sentence(rng: random.Random) -> str:
    """One sentence of the grammar (no digits, never the needle phrasing)."""
    g = grammar()
    name, name2 = rng.sample(g["names"], 2)
    place, place2 = rng.sample(g["places"], 2)
    noun, noun2 = rng.sample(g["nouns"], 2)
    adj, adj2 = rng.sample(g["adjectives"], 2)
    time_, scene = rng.choice(g["times"]), rng.choice(g["scenes"])
    slots = dict(name=name, name2=name2, place=place, place2=place2, noun=noun, noun2=noun2,
                 adj=adj, adj2=adj2, vt=rng.choice(g["verbs_t"]), vi=rng.choice(g["verbs_i"]),
                 adv=rng.choice(g["adverbs"]), time=time_, scene=scene,
                 Name=name[0].upper() + name[1:], Time=time_[0].upper() + time_[1:],
                 Scene=scene[0].upper() + scene[1:])
    text = rng.choice(g["templates"]).format(**slots)
    return re.sub(r"\b([Aa]) (\w+)", _article, text)


@functools.lru_cache(maxsize=16)
def _cached_haystack(spec: str, tokenizer) -> Haystack:
    return make_haystack(spec, tokenizer)


def make_haystack(spec: str, tokenizer, seed: int = 0) -> Haystack:
    """``noise``, ``text`` (prose of grammar seed ``seed``) or a path to a UTF-8 file.

    Raises ``ValueError`` (one line) for a missing, empty or non-UTF-8 file."""
    if spec == "noise":
        return NoiseHaystack(tokenizer)
    if spec == "text":
        return TextHaystack(tokenizer, seed)
    return FileHaystack(tokenizer, spec)


# -- needles ------------------------------------------------------------------------------------
def draw_keys(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct ``adjective-noun`` keys."""
    g = grammar()
    keys: list[str] = []
    while len(keys) < n:
        key = f"{rng.choice(g['key_adjectives'])}-{rng.choice(g['key_nouns'])}"
        if key not in keys:
            keys.append(key)
    return keys


def draw_values(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct 7-digit numbers (as strings)."""
    lo, hi = 10 ** (VALUE_DIGITS - 1), 10 ** VALUE_DIGITS - 1
    values: list[str] = []
    while len(values) < n:
        v = str(rng.randint(lo, hi))
        if v not in values:
            values.append(v)
    return values


def check_task(task: str, n_needles: int | None = None) -> tuple[str, int]:
    """Validate a task and its needle count (None: the task's default); ValueError if bad."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (use {', '.join(TASKS)})")
    n = DEFAULT_NEEDLES[task] if n_needles is None else int(n_needles)
    if task == "single" and n != 1:
        raise ValueError(f"task single has one needle, not {n} (use --task multi-needle for several)")
    if task != "single" and not 2 <= n <= MAX_NEEDLES:
        raise ValueError(f"task {task} needs 2 to {MAX_NEEDLES} needles, not {n}")
    return task, n


def join_keys(keys: Sequence[str]) -> str:
    """``a``; ``a and b``; ``a, b, and c`` (RULER's multi-query question)."""
    keys = list(keys)
    if len(keys) == 1:
        return keys[0]
    if len(keys) == 2:
        return f"{keys[0]} and {keys[1]}"
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


def needle_depths(depth: float, n: int) -> list[float]:
    """The first needle at ``depth``, the others ``1/n`` apart after it, wrapping past the end."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth {depth:g} is not between 0 and 1")
    return [depth] + [(depth + j / n) % 1.0 for j in range(1, n)]


def answer_tokens(n_expected: int) -> int:
    """Greedy tokens generated: enough for the expected value(s), no more."""
    return ANSWER_TOKENS_PER_VALUE * n_expected + ANSWER_EXTRA_TOKENS


def n_expected(task: str, n_needles: int) -> int:
    return 1 if task in ("single", "multi-key") else n_needles


@dataclass
class NeedleSample:
    prompt_ids: list[int]
    expected: list[str]            # the values the answer must contain
    answer: str                    # a correct continuation of the prompt, e.g. " 4819302."
    keys: list[str]                # the key of each needle, in insertion order
    values: list[str]              # the value of each needle
    question_keys: list[str]
    depths: list[float]            # requested depth of each needle
    needle_positions: list[int] = field(default_factory=list)   # token index where each needle starts
    needle_lengths: list[int] = field(default_factory=list)
    haystack_start: int = 0        # token index of the first haystack token
    haystack_tokens: int = 0       # H
    prompt_text: str = ""          # the text prompt_ids tokenize

    @property
    def max_new_tokens(self) -> int:
        return answer_tokens(len(self.expected))


def _texts(task: str, keys: list[str], values: list[str], prefix: str = " ") -> tuple[list[str], list[str], str,
                                                                                      list[str]]:
    """(needle texts, each after ``prefix``; question keys; question + answer prefix; expected values)."""
    needles = [prefix + NEEDLE.format(key=k, value=v) for k, v in zip(keys, values)]
    if task in ("single", "multi-key"):      # multi-key: needles 2..n are distractors
        qkeys, expected, q = keys[:1], values[:1], QUESTION
    elif task == "multi-needle":
        qkeys, expected, q = keys, values, QUESTION_ALL
    else:  # multi-value: one key
        qkeys, expected, q = keys[:1], values, QUESTION_ALL
    return needles, qkeys, "\n" + q.format(key=join_keys(qkeys)), expected


def _draw(task: str, n: int, rng: random.Random) -> tuple[list[str], list[str]]:
    if task == "multi-value":
        keys = draw_keys(rng, 1) * n
    else:
        keys = draw_keys(rng, n)
    return keys, draw_values(rng, n)


def longest_key(tokenizer) -> str:
    """The drawn key (``draw_keys``) of the most tokens."""
    g = grammar()
    adj = max(g["key_adjectives"], key=lambda w: (len(tokenizer.encode(w)), len(w)))
    noun = max(g["key_nouns"], key=lambda w: (len(tokenizer.encode(w)), len(w)))
    return f"{adj}-{noun}"


def prompt_overhead(tokenizer, task: str, n_needles: int | None = None, chat_template: str | None = None,
                    key: str | None = None) -> int:
    """An upper bound on the tokens a prompt spends outside its haystack: every key as long as
    ``key`` (default: the longest ``draw_keys`` draws; a caller with keys of its own passes its
    longest)."""
    task, n = check_task(task, n_needles)
    key = key or longest_key(tokenizer)
    keys = [key] * n
    values = ["9" * VALUE_DIGITS] * n
    needles, qkeys, question, _ = _texts(task, keys, values)
    head, tail, special = _frame(tokenizer, question, chat_template)
    slack = 2 * (n + len(qkeys)) + 2 * n + 4   # merges across the hyphen and at the joins
    return (len(_encode(tokenizer, head, special)) + sum(len(tokenizer.encode(t)) for t in needles)
            + len(tokenizer.encode(tail)) + slack)


def min_context(tokenizer, task: str, n_needles: int | None = None, chat_template: str | None = None,
                key: str | None = None) -> int:
    """The smallest prompt that holds the instruction, the needle(s), the question and one
    haystack token, whatever keys are drawn (or keys no longer than ``key``)."""
    return prompt_overhead(tokenizer, task, n_needles, chat_template, key) + 1


SENTINEL = "\x00YOCO-HAYSTACK\x00"


def chat_prompt(tokenizer, user_text: str, answer_prefix: str, template: str | None) -> str:
    """The prompt text for ``user_text`` (the haystack and the question) as the user turn of
    ``template`` (transformers' ``apply_chat_template``, with its generation prompt), then
    ``answer_prefix`` for the model to continue, as RULER does. ``template`` None: plain text,
    ``user_text + " " + answer_prefix``."""
    if template is None:
        return f"{user_text} {answer_prefix}"
    from .tokenizer import render_chat

    return render_chat(tokenizer, [{"role": "user", "content": user_text}], template) + answer_prefix


def _frame(tokenizer, question: str, template: str | None) -> tuple[str, str, bool]:
    """(the text before the haystack, the text after it, whether the tokenizer adds its special
    tokens): the instruction and the question with its answer prefix, in ``template`` if given.
    A chat template writes its own BOS, so its prompts are tokenized without special tokens (as
    ``apply_chat_template(tokenize=True)`` does)."""
    asked, _, prefix = question.partition("? ")
    whole = chat_prompt(tokenizer, INTRO + SENTINEL + asked + "?", prefix, template)
    head, _, tail = whole.partition(SENTINEL)
    return head, tail, template is None


def build_sample(tokenizer, ctx_tokens: int, depth: float, task: str = "single",
                 n_needles: int | None = None, rng: random.Random | int | str = 0,
                 haystack: Haystack | str = "noise", chat_template: str | None = None,
                 keys: Sequence[str] | None = None, values: Sequence[str] | None = None,
                 order: str = "asked") -> NeedleSample:
    """A prompt of exactly ``ctx_tokens`` tokens with the needle(s) at ``depth``.

    The prompt is a text (``sample.prompt_text``) tokenized once, as the model's tokenizer makes
    it (``prompt_ids == tokenizer.encode(prompt_text, add_special_tokens=True)``; with a chat
    template, ``False``: the template writes the specials). ``rng`` (a ``random.Random`` or a seed)
    draws the keys and values; ``haystack`` is a ``Haystack`` built for ``tokenizer`` or a spec
    for ``make_haystack`` (``noise``, ``text``, a file); ``chat_template``: a jinja template text
    (``tokenizer.chat_template_for``) or None. ``keys`` / ``values``: the needles' own (``n``
    each; a multi-value sample's keys all the same) in place of drawing them from ``rng`` (the
    trainer's other key styles). ``sample.answer`` is a correct continuation: the values in the
    order asked (``order="text"``: multi-needle's too in the order they stand in the text;
    multi-value's always are); the trainer appends ``tokenizer.encode(sample.answer)`` to train on
    it. A needle starts with the haystack's ``needle_prefix`` (a space; a line haystack's newline).
    """
    task, n = check_task(task, n_needles)
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    if isinstance(haystack, str):
        haystack = _cached_haystack(haystack, tokenizer)
    depths = needle_depths(float(depth), n)
    if order not in ("asked", "text"):
        raise ValueError(f"answer order {order!r}: use asked or text")
    if (keys is None) != (values is None):
        raise ValueError("give the needles' keys and values together, or neither")
    if keys is None:
        keys, values = _draw(task, n, rng)
    keys, values = list(keys), list(values)
    if len(keys) != n or len(values) != n or len(set(keys)) != (1 if task == "multi-value" else n):
        raise ValueError(f"task {task} with {n} needle(s) takes {n} values and "
                         + ("one key" if task == "multi-value" else f"{n} different keys"))
    needle_texts, qkeys, question, expected = _texts(task, keys, values, haystack.needle_prefix)
    head, tail, special = _frame(tokenizer, question, chat_template)
    fixed = (len(_encode(tokenizer, head, special)) + len(tokenizer.encode(tail))
             + sum(len(tokenizer.encode(t)) for t in needle_texts))
    ctx_tokens = int(ctx_tokens)
    if ctx_tokens - fixed < 1:
        raise ValueError(f"a {ctx_tokens}-token prompt is too small: the instruction, {n} needle(s) "
                         f"and the question take {fixed} tokens")
    text, ids, cuts = _fit(tokenizer, haystack, ctx_tokens, ctx_tokens - fixed, depths, head, needle_texts,
                           tail, special)
    starts, lengths, hay_start, hay_tokens = _locate(tokenizer, text, ids, cuts, special)
    if task == "multi-value" or (task == "multi-needle" and order == "text"):     # in the order of the text
        expected = [values[j] for j in sorted(range(n), key=lambda j: starts[j])]
    if len(expected) == 1:
        answer = f" {expected[0]}."
    else:
        answer = " " + join_keys(expected) + "."
    return NeedleSample(ids, expected, answer, keys, values, qkeys, depths, starts, lengths, hay_start,
                        hay_tokens, text)


FIT_ROUNDS = 8       # corrections of the haystack's length before a local search
FIT_SEARCH = 24      # haystack lengths tried either side in that search
FIT_PADS = 3         # a last resort: up to this many spaces after the haystack (a cut that no
                     # character boundary makes exact: multi-byte characters of a byte tokenizer)


def _fit(tokenizer, haystack: Haystack, ctx: int, H: int, depths, head, needle_texts, tail, special):
    """(text, ids, character cuts) of the prompt with exactly ``ctx`` tokens: the haystack's
    stream length ``H`` (tokens) corrected by what the whole text's tokenization counts, then
    searched around; a ValueError when no length gives ``ctx``."""
    counts: list[int] = []
    for pad in range(FIT_PADS + 1):
        found = _fit_length(tokenizer, haystack, ctx, H, depths, head, needle_texts, " " * pad + tail,
                            special, counts)
        if found is not None:
            return found
    if min(counts) > ctx:
        raise ValueError(f"a {ctx}-token prompt is too small: the instruction, {len(needle_texts)} needle(s) "
                         f"and the question take more than {ctx} tokens")
    raise ValueError(f"no haystack length gives a prompt of exactly {ctx} tokens with this tokenizer")


def _fit_length(tokenizer, haystack, ctx, H, depths, head, needle_texts, tail, special, counts):
    seen: set[int] = set()

    def attempt(h):
        text, cuts = _assemble(haystack, h, depths, head, needle_texts, tail)
        ids = _encode(tokenizer, text, special)
        seen.add(h)
        counts.append(len(ids))
        return (text, ids, cuts) if len(ids) == ctx else None

    for _ in range(FIT_ROUNDS):
        if (found := attempt(H)) is not None:
            return found
        H = max(1, H + ctx - counts[-1])
        if H in seen:
            break
    for off in range(1, FIT_SEARCH + 1):
        for h in (H - off, H + off):
            if h >= 1 and h not in seen and (found := attempt(h)) is not None:
                return found
    return None


def _assemble(haystack: Haystack, H: int, depths, head: str, needle_texts, tail: str):
    """The prompt text with ``H`` stream tokens of haystack and the needles at ``depths``, and the
    character cuts: [haystack start, (needle start, needle end) per needle, tail start]."""
    haystack.take(H)
    positions = [haystack.snap(round(d * H), H) for d in depths]
    parts, cuts, at, cursor = [head], [len(head)], len(head), 0
    spans = [None] * len(depths)
    for j in sorted(range(len(depths)), key=lambda j: (positions[j], j)):
        c = haystack.char_at(positions[j])
        piece = haystack.text(cursor, c)
        parts.append(piece)
        at += len(piece)
        parts.append(needle_texts[j])
        spans[j] = (at, at + len(needle_texts[j]))
        at += len(needle_texts[j])
        cursor = c
    piece = haystack.text(cursor, haystack.char_at(H))
    parts += [piece, tail]
    return "".join(parts), cuts + spans + [at + len(piece)]


def _locate(tokenizer, text: str, ids: list[int], cuts, special: bool):
    """(needle token starts, needle token lengths, haystack start, haystack tokens) in ``ids``
    (the tokenization of ``text``) for the character ``cuts`` of ``_assemble``."""
    raw, starts = _offsets(tokenizer, text)
    k = next((k for k in range(len(ids) - len(raw) + 1) if ids[k:k + len(raw)] == raw), 0)

    def first_at(c):                              # the first token that starts at or after c
        return k + bisect.bisect_left(starts, c)

    def holding(c):                               # the token that holds character c
        return k + max(0, bisect.bisect_right(starts, c) - 1)

    hay_start, tail_start = first_at(cuts[0]), first_at(cuts[-1])
    begins = [holding(a) for a, _ in cuts[1:-1]]
    lengths = [first_at(b) - p for p, (_, b) in zip(begins, cuts[1:-1])]
    return begins, lengths, hay_start, tail_start - hay_start - sum(lengths)


def _offsets(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """The bare ids of ``text`` and each token's start character (from ``encode_offsets``, else
    the decoded length of each prefix)."""
    get = getattr(tokenizer, "encode_offsets", None)
    if get is not None:
        raw, starts = get(text)
        if len(starts) == len(raw):
            return raw, starts
    raw = tokenizer.encode(text)
    return raw, _DecodedStarts(tokenizer, raw)


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    """``text``'s ids, with the special tokens the tokenizer itself adds when ``special`` (a
    tokenizer of the older protocol, ``encode(text, add_bos)``: a BOS)."""
    if not special:
        return tokenizer.encode(text)
    try:
        return tokenizer.encode(text, add_special_tokens=True)
    except TypeError:
        return tokenizer.encode(text, add_bos=True)


class _DecodedStarts:
    """Token start characters computed on demand, for ``bisect`` (a tokenizer without offsets)."""

    def __init__(self, tokenizer, ids):
        self.tokenizer, self.ids = tokenizer, ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return len(self.tokenizer.decode(self.ids[:i]))


# -- scoring and running ------------------------------------------------------------------------
def score(expected: Sequence[str], prediction: str) -> float:
    """Share of ``expected`` values found in ``prediction`` as whole tokens (``1234567`` does not
    count inside ``12345678`` or ``a1234567``)."""
    if not expected:
        raise ValueError("nothing expected")
    hits = sum(1 for v in expected
               if re.search(rf"(?<![0-9A-Za-z]){re.escape(str(v))}(?![0-9A-Za-z])", prediction))
    return hits / len(expected)


def cell_rng(seed: int, task: str, ctx: int, depth: float, n_needles: int, trial: int) -> random.Random:
    """The generator a cell's keys and values come from: one per (seed, cell, trial)."""
    return random.Random(f"yoco-needle:{seed}:{task}:{int(ctx)}:{round(float(depth), 6)!r}:{n_needles}:{trial}")


@dataclass
class NeedleResult:
    """What one cell measured: the prompt asked for and built, the answer and its score. ``yoco
    needle`` adds what ran it (model, haystack, device, dtype, date) to make a ``needle.csv`` row."""
    task: str
    ctx_requested: int
    ctx_tokens: int
    depth: float
    n_needles: int
    trial: int
    seed: int
    expected: list[str]            # the values the answer had to contain
    prediction: str                # the generated answer, stripped
    score: float
    prefill_seconds: float         # time to first token


def run_cell(model, ctx: int, depth: float, task: str = "single", n_needles: int | None = None,
             trial: int = 0, seed: int = 0, haystack: Haystack | str = "noise",
             chunk_size: int | None = 32768, chat_template: str | None = None) -> NeedleResult:
    """Build one prompt (in ``chat_template`` if given), generate greedily (prefill + decode,
    stopped at any EOS of the tokenizer) and score the answer."""
    import torch

    task, n = check_task(task, n_needles)
    sample = build_sample(model.tokenizer, ctx, depth, task, n,
                          cell_rng(seed, task, ctx, depth, n, trial), haystack, chat_template)
    ids = torch.tensor([sample.prompt_ids], dtype=torch.long)
    gen = generate(model, ids, sample.max_new_tokens, chunk_size=chunk_size, stop_strings=STOP_STRINGS)
    prediction = gen.texts[0].strip()
    return NeedleResult(task=task, ctx_requested=int(ctx), ctx_tokens=len(sample.prompt_ids),
                        depth=float(depth), n_needles=n, trial=int(trial), seed=int(seed),
                        expected=list(sample.expected), prediction=prediction,
                        score=score(sample.expected, prediction), prefill_seconds=gen.prefill_seconds)


__all__ = [
    "INTRO", "NEEDLE", "QUESTION", "QUESTION_ALL", "NOISE", "TASKS", "DEFAULT_NEEDLES", "STOP_STRINGS",
    "Haystack", "NoiseHaystack", "TextHaystack", "FileHaystack", "make_haystack", "prose_sentence",
    "draw_keys", "draw_values", "check_task", "needle_depths", "answer_tokens", "n_expected",
    "NeedleSample", "build_sample", "chat_prompt", "snap_tolerance", "longest_key", "prompt_overhead", "min_context",
    "score",
    "cell_rng",
    "NeedleResult", "run_cell",
]
