"""Greedy generation through ``prefill`` + one-token decode steps (a CUDA graph on the GPU), with timings."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .graphs import make_decoder


@dataclass
class Generation:
    tokens: list[list[int]]            # the new tokens of each row (stops removed)
    texts: list[str]
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    decoded: int = 0                   # decode steps run
    stopped: list[bool] = field(default_factory=list)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, chunk_size: int | None = None,
             stop_strings: tuple[str, ...] = (), stop_at_eos: bool = True, tokenizer=None) -> Generation:
    """Greedy decoding of ``max_new_tokens`` after ``input_ids`` ``[B, T]``.

    A row stops at any of the tokenizer's EOS ids (``tokenizer.eos_ids``: generation_config.json's
    ``eos_token_id``, one or a list, and the tokenizer's own) or once its text contains one of ``stop_strings``
    (the text is cut there); the loop ends when every row has stopped. ``tokenizer``: the one
    ``load_model`` attached to the model unless given (a model from ``build_model`` has none).
    """
    tok = tokenizer or model.tokenizer
    if tok is None:
        raise ValueError("generate needs a tokenizer: load_model attaches one to the model; for a model "
                         "from build_model pass tokenizer=tokenizer_for(model.config)")
    stops = set(getattr(tok, "eos_ids", None) or (tok.eos_id,)) if stop_at_eos else set()
    input_ids = input_ids.to(model.device)
    B, T = input_ids.shape
    _sync(model.device)
    t0 = time.perf_counter()
    logits, cache = model.prefill(input_ids, chunk_size=chunk_size, reserve=max_new_tokens)
    _sync(model.device)
    t1 = time.perf_counter()
    step = None                      # built at the first decode step: not at all when every row stops at once
    rows: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    steps = 0
    nxt = logits.argmax(-1)
    for i in range(max_new_tokens):
        ids = nxt.tolist()
        for b in range(B):
            if done[b]:
                continue
            if ids[b] in stops:
                done[b] = True
                continue
            rows[b].append(ids[b])
            if stop_strings and any(s in tok.decode(rows[b][-64:]) for s in stop_strings):
                done[b] = True
        if all(done) or i == max_new_tokens - 1:
            break
        if step is None:
            step = make_decoder(model, cache)
        logits = step(nxt[:, None])
        steps += 1
        nxt = logits[:, -1].argmax(-1)
    _sync(model.device)
    t2 = time.perf_counter()
    texts = []
    for r in rows:
        text = tok.decode(r)
        for s in stop_strings:
            if s in text:
                text = text[: text.index(s)]
        texts.append(text)
    return Generation(rows, texts, T, t1 - t0, t2 - t1, steps, done)
