"""Training a preset on synthetic long-context data (``yoco train``).

* **Data**: :mod:`yoco_core.synthetic`, generated on the fly (the evaluated needle format, kv
  lookups, copying); the batch of step ``s`` is a pure function of ``(seed, s)``.
* **Length curriculum**: the steps are split evenly over the ``curriculum`` lengths (e.g. 512, 1K,
  2K, 4K); each step holds about ``batch_tokens`` tokens, ``batch = max(1, batch_tokens // length)``.
  After the first phase a share ``mix_lengths`` of the steps (drawn from the seed and the step)
  takes one of the earlier lengths instead, so the lengths trained first are not forgotten.
* **Loss**: next-token cross-entropy, ``answer loss + lm_weight * mean over the other tokens``
  (padding excluded). The answer loss averages each sample's answer tokens (needle values,
  looked-up values, copied spans), then the samples, so every task weighs as its share of the mix
  (a copy sample has hundreds of answer tokens, a needle sample nine). The answer tokens carry
  the retrieval signal; a plain mean over all tokens would be dominated by thousands of filler
  tokens per answer, so the model would mostly learn to predict filler. The small ``lm_weight``
  term keeps a little language modelling of the rest (spelling of keys, structure).
* **Optimiser**: AdamW (fused on CUDA), weight decay on matrices only, linear warm-up then cosine
  decay to ``min_lr_ratio * lr``, gradient clipping. bf16 autocast on CUDA (weights stay float32),
  TF32 matmuls. On CUDA with fla-core, its gRet kernels are first checked against the PyTorch
  form (forward and backward, under the same autocast); on any failure that ``train`` call runs
  the PyTorch form (``check_gret_backend``, ``kernels.backend.override``).
* **Checkpoints**: ``OUT/step_N/`` = ``model.safetensors`` + ``config.json`` (``save_model``),
  ``optimizer.safetensors`` (AdamW moments and step of every parameter, by name) and
  ``trainer_state.json`` (step, schedule, RNG states, data generator state, counters), written
  last so that a directory with it is complete; ``OUT/final/`` at the end. ``resume`` continues
  from the latest complete checkpoint and reproduces an uninterrupted run exactly (same seed),
  its counters (tokens, seconds) included: a checkpoint holds them as of its own step.
* **Faults**: SIGINT / SIGTERM stop after the step in flight with a checkpoint there
  (``Interrupted``; a second signal stops at once). A loss or gradient norm that is not finite
  stops training (``TrainError``) before its log row or checkpoint: the checkpoints on disk are
  the last good ones. ``ship`` refuses weights with a non-finite value.
* **Log**: ``OUT/train_log.csv`` every ``log_every`` steps, averaged over those steps: ``loss``
  (the optimised total), ``answer_loss`` (per-sample mean over answer tokens), ``lm_loss``,
  ``answer_acc`` (greedy next-token accuracy over all answer tokens), ``needle_acc``,
  ``kv_acc``, ``copy_acc`` (the same over the answer tokens of each task's samples; for needles,
  the evaluated task, ~0.3 is what a model that only knows the format gets: " " and "." right
  and one digit in ten), ``lr``, ``grad_norm``,
  ``tokens``, ``seconds`` (training time, checkpoints excluded), ``tokens_per_s``. Values are
  read back from the GPU only at log steps.

Nothing here prints: ``train`` reports through callbacks (the CLI draws a rich progress bar).
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import json
import math
import queue
import re
import shutil
import signal
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .checkpoint import read_config, save_model
from .state import CheckpointError, load_state, model_from_state, read_state_dict
from .config import PRESETS, ModelConfig, field_from_text, field_problem, get_config
from .errors import first_line
from .kernels import backend
from .kernels.gret import backend_for as gret_backend_for, fla_backward_refusal
from .model import CausalLM, build_model
from .perf.hardware import device_name
from .synthetic import (ANSWER, CONTEXT, DATA_VERSION, DEFAULT_MIX, NEEDLE_FORMATS, NEEDLE_ORDERS, TASKS, Batch,
                        SyntheticData, normalise_mix, normalise_needle_counts, normalise_needle_formats)
from .tokenizer import tokenizer_for

LOG_FIELDS = ("step", "length", "batch", "loss", "answer_loss", "lm_loss", "answer_acc",
              *(f"{t}_acc" for t in TASKS), "lr", "grad_norm", "tokens", "seconds", "tokens_per_s")
STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.safetensors"
LOG_FILE = "train_log.csv"
CONFIG_FILE = "train_config.json"
SUMMARY_FILE = "train_summary.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class TrainError(Exception):
    """A training run that cannot start or resume as asked (one-line message)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (``signum``) stopped training after ``step``, with a checkpoint there:
    ``resume`` continues the same run."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted: checkpoint step_{step} kept, --resume continues")
        self.step, self.signum = step, signum


@dataclass
class TrainConfig:
    model: str = "yoco-tiny"                 # preset name, or a checkpoint directory to continue from
    overrides: dict = field(default_factory=dict)   # ModelConfig fields to change (--set)
    steps: int = 1400
    out: str = "runs/train"
    device: str = "cpu"
    amp: str = "auto"                        # bf16 (autocast) | fp32 | auto (bf16 on cuda)
    seed: int = 0
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = -1                         # -1: 5% of the steps (at least 1)
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    batch_tokens: int = 65536
    curriculum: list = field(default_factory=lambda: [512, 1024, 2048, 4096, 8192, 16384, 32768])
    mix_lengths: float = 0.0                 # share of a later phase's steps at an earlier length
    mix: dict = field(default_factory=lambda: dict(DEFAULT_MIX))
    needle_order: str = "text"               # list answers: the text's order, the question's, or any
    needle_formats: dict = field(default_factory=lambda: dict(NEEDLE_FORMATS))   # the needle task's formats
    needle_counts: dict = field(default_factory=dict)   # a multi-* sample's needle count ("2".."8"); {}: alike
    lm_weight: float = 0.1
    log_every: int = 10
    save_every: int = 250                    # 0: only at the end
    keep: int = 2                            # step_N checkpoints kept (the newest)
    command: str = ""                        # the command line, for the record

    # what must match for a resume to reproduce the run exactly
    RESUME_KEYS = ("model", "overrides", "steps", "seed", "lr", "min_lr_ratio", "warmup",
                   "weight_decay", "betas", "grad_clip", "batch_tokens", "curriculum", "mix_lengths", "mix",
                   "needle_order", "needle_formats", "needle_counts", "lm_weight", "amp")

    def __post_init__(self):
        try:
            self.mix = normalise_mix(self.mix)
            self.needle_formats = normalise_needle_formats(self.needle_formats)
            self.needle_counts = normalise_needle_counts(self.needle_counts)
        except ValueError as e:
            raise TrainError(str(e)) from None
        self.curriculum = [int(x) for x in self.curriculum]
        self.betas = tuple(float(b) for b in self.betas)
        floats = [(k, getattr(self, k)) for k, hint in typing.get_type_hints(TrainConfig).items() if hint is float]
        problems = [f"{k} must be a finite number, not {v}" for k, v in floats + [("betas", b) for b in self.betas]
                    if not math.isfinite(v)]
        if problems:                          # NaN passes every comparison below
            raise TrainError("; ".join(problems))
        if self.steps < 1:
            problems.append("steps must be >= 1")
        if not self.curriculum or min(self.curriculum) < 8:
            problems.append("curriculum lengths must be >= 8 tokens")
        if self.batch_tokens < 1:
            problems.append("batch_tokens must be >= 1")
        if not self.lr > 0:
            problems.append("lr must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append("min_lr_ratio must be between 0 and 1")
        if not 0 <= self.mix_lengths < 1:
            problems.append("mix_lengths must be in [0, 1)")
        if self.needle_order not in NEEDLE_ORDERS:
            problems.append(f"needle_order must be {' or '.join(NEEDLE_ORDERS)}, not {self.needle_order!r}")
        problems += [f"{k} must be >= 0" for k in ("lm_weight", "weight_decay") if getattr(self, k) < 0]
        if not self.grad_clip > 0:
            problems.append("grad_clip must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), not {self.betas}")
        if self.warmup < -1:
            problems.append(f"warmup must be -1 (5% of the steps) or >= 0, not {self.warmup}")
        if self.log_every < 1:
            problems.append("log_every must be >= 1")
        if self.save_every < 0 or self.keep < 1:
            problems.append("save_every must be >= 0 and keep >= 1")
        if self.amp not in ("auto", "bf16", "fp32"):
            problems.append(f"amp must be auto, bf16 or fp32, not {self.amp!r}")
        if problems:
            raise TrainError("; ".join(problems))

    @property
    def warmup_steps(self) -> int:
        return max(1, self.steps // 20) if self.warmup < 0 else self.warmup

    def use_amp(self) -> bool:
        cuda = torch.device(self.device).type == "cuda"
        return self.amp == "bf16" or (self.amp == "auto" and cuda)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


# -- schedule ------------------------------------------------------------------------------------
def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up, then cosine to ``min_lr_ratio * lr``."""
    w = cfg.warmup_steps
    if step < w:
        return cfg.lr * (step + 1) / w
    span = max(1, cfg.steps - w)
    t = min(1.0, (step - w) / span)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * t))


def length_at(cfg: TrainConfig, step: int) -> int:
    """The curriculum length of ``step``: the steps split evenly over the lengths; after the first
    phase a share ``mix_lengths`` of the steps (a pure function of seed and step) takes one of
    the phase's earlier lengths."""
    n = len(cfg.curriculum)
    phase = min(n - 1, step * n // cfg.steps)
    earlier = sorted({x for x in cfg.curriculum[:phase] if x < cfg.curriculum[phase]})
    if cfg.mix_lengths and earlier:
        u, pick = np.random.default_rng([cfg.seed, int(step), 0x1E46]).random(2)
        if u < cfg.mix_lengths:
            return earlier[int(pick * len(earlier))]
    return cfg.curriculum[phase]


def batch_size_at(cfg: TrainConfig, step: int) -> int:
    return max(1, cfg.batch_tokens // length_at(cfg, step))


def parse_overrides(pairs: list[str]) -> dict:
    """``["cross_rope=false", "dim=64"]`` -> ModelConfig overrides, each read and checked by its
    field's annotation (``config.field_from_text``, ``field_problem``); TrainError if bad."""
    known = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "name"]
    out: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TrainError(f"bad --set {pair!r}: use KEY=VALUE, e.g. cross_rope=false")
        if key not in known:
            raise TrainError(f"unknown model setting {key!r} (known: {', '.join(known)})")
        value = field_from_text(key, text.strip())
        if why := field_problem(key, value):
            raise TrainError(f"bad --set {pair!r}: {why}")
        out[key] = value
    return out


# -- model, optimiser ----------------------------------------------------------------------------
def make_model(cfg: TrainConfig) -> CausalLM:
    """A float32 model on ``cfg.device`` in training mode, with its tokenizer: a preset with seeded
    random weights, or a checkpoint's weights (``load_model``; with ``cfg.overrides``, read straight
    into a model of the changed config, whose tokenizer is the changed config's)."""
    device = torch.device(cfg.device)
    try:
        if cfg.model.lower() in PRESETS:
            mcfg = get_config(cfg.model).replace(**cfg.overrides)
            model = build_model(mcfg, device=device, seed=cfg.seed)
            model.tokenizer = tokenizer_for(mcfg)
            return model.train()
        path = Path(cfg.model).expanduser()
        if cfg.overrides and path.exists():
            return _changed_checkpoint(path, cfg.overrides, device).train()
        model = ckpt.load_model(cfg.model, device=device, dtype=torch.float32)
        if cfg.overrides:       # a foreign PREFIX:PATH: converted first, then moved into the changed config
            mcfg = model.config.replace(**cfg.overrides)
            folder = getattr(model.tokenizer, "path", None)
            model = model_from_state(mcfg, model.state_dict(), cfg.model, device, torch.float32)
            model.tokenizer = tokenizer_for(mcfg, folder)
        return model.train()
    except (ValueError, CheckpointError) as e:
        raise TrainError(str(e).splitlines()[0]) from None


def _changed_checkpoint(path: Path, overrides: dict, device) -> CausalLM:
    """The checkpoint at ``path`` (a folder or its weights file) in its config changed by
    ``overrides``: built once, with the tokenizer that config names."""
    mcfg = read_config(path).replace(**overrides)
    file = ckpt.weights_file(path)
    model = model_from_state(mcfg, read_state_dict(file), str(file), device, torch.float32)
    model.tokenizer = tokenizer_for(mcfg, path if path.is_dir() else path.parent)
    return model


def param_groups(model: CausalLM, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith("embed.") else no_decay).append((name, p))
    return [{"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
            {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0}]


def make_optimizer(model: CausalLM, cfg: TrainConfig) -> torch.optim.AdamW:
    cuda = torch.device(cfg.device).type == "cuda"
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                             eps=1e-8, fused=True if cuda else None)


def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for group in opt.param_groups:
        for name, p in zip(group["names"], group["params"]):
            for key, value in opt.state.get(p, {}).items():
                t = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
                tensors[f"{name}.{key}"] = t.detach().contiguous().cpu()
    save_file(tensors, str(path))


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as e:      # truncated or not safetensors: safetensors' errors, OSError
        raise TrainError(f"{path}: damaged optimizer state ({first_line(e)})") from None
    sd = opt.state_dict()
    by_param: dict[str, dict] = {}
    for key, value in tensors.items():
        name, _, field_ = key.rpartition(".")
        by_param.setdefault(name, {})[field_] = value
    state = {}
    for group, sd_group in zip(opt.param_groups, sd["param_groups"]):
        for name, p, i in zip(group["names"], group["params"], sd_group["params"]):
            if name in by_param:
                state[i] = by_param.pop(name)
                _check_moments(state[i], p, name, path)
    if by_param:
        raise TrainError(f"{path} holds optimizer state of unknown parameters (e.g. {next(iter(by_param))})")
    sd["state"] = state
    opt.load_state_dict(sd)


def _check_moments(state: dict, p: torch.Tensor, name: str, path: Path) -> None:
    for key, t in state.items():
        if t.dim() and t.shape != p.shape:
            raise TrainError(f"{path}: optimizer state {name}.{key} has shape {tuple(t.shape)}, "
                             f"the parameter {tuple(p.shape)}")


# -- RNG states (JSON, base64) --------------------------------------------------------------------
def _rng_state(device: torch.device) -> dict:
    out = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if device.type == "cuda":
        out["cuda"] = base64.b64encode(torch.cuda.get_rng_state(device).numpy().tobytes()).decode()
    return out


def _set_rng_state(state: dict, device: torch.device) -> None:
    def tensor(s):
        return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())

    torch.set_rng_state(tensor(state["torch"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(tensor(state["cuda"]), device)


# -- checkpoints -----------------------------------------------------------------------------------
def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete ``step_N`` checkpoints in ``out``, oldest first."""
    found = []
    if out.is_dir():
        for p in out.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and (p / STATE_FILE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(out: Path, model: CausalLM, opt, cfg: TrainConfig, data: SyntheticData, step: int,
                    counters: dict) -> Path:
    final = out / f"step_{step}"
    tmp = out / f".step_{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tmp)
    save_optimizer(opt, tmp / OPTIM_FILE)
    state = {
        "step": step,
        "lr": lr_at(cfg, min(step, cfg.steps - 1)),
        "schedule": {"warmup": cfg.warmup_steps, "steps": cfg.steps, "lr": cfg.lr,
                     "min_lr_ratio": cfg.min_lr_ratio, "curriculum": cfg.curriculum,
                     "mix_lengths": cfg.mix_lengths,
                     "batch_tokens": cfg.batch_tokens},
        "rng": _rng_state(torch.device(cfg.device)),
        "data": data.state(step),
        "counters": counters,
        "train_config": cfg.to_dict(),
    }
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for _, old in checkpoints(out)[:-cfg.keep]:
        shutil.rmtree(old)
    return final


def _check_resumable(saved: dict, cfg: TrainConfig, where: Path, data: dict | None = None) -> None:
    """Refuse (one line) a resume that would not continue the same run: another synthetic data
    version (``data``: the checkpoint's data state), or a setting of ``RESUME_KEYS`` changed (one
    a checkpoint predates counts as its default)."""
    version = (data or {}).get("version", 1)
    if version != DATA_VERSION:
        raise TrainError(f"cannot resume {where}: it was trained on synthetic data v{version}, this yoco makes "
                         f"v{DATA_VERSION}; start a new run (another --out)")
    now = cfg.to_dict()
    defaults = TrainConfig().to_dict()
    for key in TrainConfig.RESUME_KEYS:
        a, b = saved.get(key, defaults.get(key)), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            same = a.keys() == b.keys() and all(
                abs(a[k] - b[k]) < 1e-12 if isinstance(a[k], float) else a[k] == b[k] for k in a)
        else:
            same = a == b
        if not same:
            raise TrainError(f"cannot resume {where}: it was trained with {key}={a!r}, now {key}={b!r}")


# -- the log ---------------------------------------------------------------------------------------
def _open_log(out: Path, resume_step: int):
    path = out / LOG_FILE
    rows = []
    if resume_step > 0 and path.is_file():
        try:
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        except (KeyError, ValueError, TypeError, csv.Error) as e:
            raise TrainError(f"{path}: damaged training log ({type(e).__name__}); move it away to resume") from None
    f = path.open("w", newline="")
    w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
    w.writeheader()
    w.writerows(rows)
    f.flush()
    return f, w


# -- batches on a thread ---------------------------------------------------------------------------
class _Prefetch:
    """Builds the batches of steps ``start ..`` ahead on a thread (the data is a pure function of
    the step, so this cannot change what is trained on)."""

    def __init__(self, data: SyntheticData, cfg: TrainConfig, start: int, depth: int = 3):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        pin = torch.device(cfg.device).type == "cuda"

        def work():
            try:
                for step in range(start, cfg.steps):
                    item = (step, *loss_inputs(data.batch(step, batch_size_at(cfg, step), length_at(cfg, step)), pin))
                    while not self.stop.is_set():
                        try:
                            self.q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self.stop.is_set():
                        return
            except BaseException as e:  # surfaced in the training loop
                self.q.put(e)

        self.thread = threading.Thread(target=work, daemon=True, name="yoco-train-data")
        self.thread.start()

    def get(self):
        item = self.q.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


# -- loss ------------------------------------------------------------------------------------------
def loss_inputs(batch: Batch, pin: bool = False) -> tuple:
    """Host-side inputs of a batch: (ids, answer weights, context weights, answer mask, task of each
    row one-hot ``[B, len(TASKS)]``, answer tokens per task). The weights are over the label
    positions ``[B, T]``.

    Answer weights average each sample's answer tokens, then the samples (a copy sample with
    hundreds of answer tokens weighs as much as a needle sample with nine); context weights
    average all context tokens."""
    k = batch.kind[:, 1:]
    ans = k == ANSWER
    per_row = ans.sum(1, keepdims=True)
    rows = max(1, int((per_row > 0).sum()))
    ans_w = (ans / np.maximum(per_row, 1) / rows).astype(np.float32)
    ctx = k == CONTEXT
    ctx_w = (ctx / max(1, int(ctx.sum()))).astype(np.float32)
    onehot = np.array([[t == name for name in TASKS] for t in batch.tasks], dtype=np.float32)
    per_task = [int(per_row[onehot[:, i] > 0].sum()) for i in range(len(TASKS))]
    tensors = [torch.from_numpy(batch.ids), torch.from_numpy(ans_w), torch.from_numpy(ctx_w),
               torch.from_numpy(ans), torch.from_numpy(onehot)]
    if pin:
        tensors = [t.pin_memory() for t in tensors]
    return (*tensors, per_task)


def batch_loss(model: CausalLM, ids, ans_w, ctx_w, ans, onehot, lm_weight: float):
    """(loss, answer loss, lm loss, answer tokens right per task ``[len(TASKS)]``) of a batch (all on
    the device; see ``loss_inputs`` and the module docstring)."""
    logits = model(ids[:, :-1])
    labels = ids[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    ce = ce.view_as(labels)
    answer_loss = (ce * ans_w).sum()
    lm_loss = (ce * ctx_w).sum()
    loss = answer_loss + lm_weight * lm_loss
    right_rows = ((logits.argmax(-1) == labels) & ans).sum(1).float()
    # not a matmul: under autocast that would count in bf16 (8 bits), and accuracies pass 1
    return loss, answer_loss.detach(), lm_loss.detach(), (right_rows[:, None] * onehot).sum(0)


# -- the gRet backend on CUDA ------------------------------------------------------------------------
def check_gret_backend(model: CausalLM, cfg: TrainConfig) -> tuple[str, str | None]:
    """On CUDA with fla-core, check that its gRet kernels run forward and backward under this
    autocast and agree with the PyTorch form. Returns a line saying which backend trains, and the
    gRet choice training must run under (``backend.override(gret=...)``): ``"torch"`` when
    fla-core failed its check, else None (the selector's own choice)."""
    dev = torch.device(cfg.device)
    if model.config.arch != "yoco" or model.config.self_decoder != "gret":
        return "no gated retention in this model", None
    if gret_backend_for(torch.zeros(1, device=dev)) != "fla":
        return "gRet backend: PyTorch chunkwise form", None
    refused = fla_backward_refusal()          # known before a minute of compiling and autotuning
    if refused:
        return f"gRet backend: PyTorch chunkwise form ({refused})", "torch"
    gen = torch.Generator(device="cpu").manual_seed(1234)
    ids = torch.randint(0, 256, (2, 256), generator=gen).to(dev)
    amp = cfg.use_amp()
    try:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out_fla = model(ids)
        out_fla.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        with backend.override(gret="torch"), torch.no_grad(), \
                torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out_ref = model(ids)
        err = float((out_fla.detach().float() - out_ref.float()).norm() / out_ref.float().norm())
        if not math.isfinite(err) or err > 0.1:
            raise RuntimeError(f"fla and PyTorch gRet disagree (relative error {err:.3g})")
        return f"gRet backend: fla-core (checked against the PyTorch form, rel. err {err:.1e})", None
    except Exception as e:  # any failure of the fast path: train on the PyTorch form instead
        model.zero_grad(set_to_none=True)
        return f"gRet backend: PyTorch chunkwise form (fla-core failed its check: {first_line(e)[:160]})", "torch"


# -- the loop --------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    out: Path
    final: Path
    step: int
    tokens: int
    seconds: float
    last: dict                   # the last log row
    resumed_from: int = 0


@dataclass
class _Run:
    """What one ``train`` call works on."""
    cfg: TrainConfig
    out: Path
    device: torch.device
    model: CausalLM
    opt: torch.optim.AdamW
    data: SyntheticData
    amp: bool
    start: int = 0
    counters: dict = field(default_factory=lambda: {"tokens": 0, "seconds": 0.0})


def train(cfg: TrainConfig, resume: bool = False, stop_at: int | None = None,
          on_start: Callable[[dict], None] | None = None,
          on_step: Callable[[int], None] | None = None,
          on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``cfg.model`` for ``cfg.steps`` steps into ``cfg.out`` (see the module docstring).

    ``on_start(info)`` once (model, parameters, resumed step, backend), ``on_step(step)`` after
    every step (no GPU sync), ``on_log(row)`` at every log row. ``stop_at``: end this session after
    that step with a checkpoint (a later ``resume`` continues the same run)."""
    run = _set_up(cfg, resume)
    line, gret = check_gret_backend(run.model, cfg) if run.device.type == "cuda" else ("CPU", None)
    if on_start:
        m = run.model
        on_start({"model": m.config.name, "arch": m.config.arch, "params": sum(p.numel() for p in m.parameters()),
                  "device": str(run.device), "amp": "bf16" if run.amp else "fp32", "start": run.start,
                  "steps": cfg.steps, "backend": line, "out": str(run.out)})
    end = cfg.steps if stop_at is None else max(run.start, min(cfg.steps, int(stop_at)))
    with backend.override(gret=gret):        # the PyTorch gRet form if fla-core failed its check
        step, last_row = _loop(run, end, on_step, on_log)
    return _finish(run, step, last_row, line)


def _set_up(cfg: TrainConfig, resume: bool) -> _Run:
    """The model, optimiser and data of a run, at step 0 (seeded) or at its newest checkpoint."""
    out, device = Path(cfg.out), torch.device(cfg.device)
    found = checkpoints(out)
    if found and not resume:
        raise TrainError(f"{out} already holds checkpoints (step_{found[-1][0]}): use --resume, or another --out")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")        # TF32 matmuls outside autocast
        if device.index is not None:
            torch.cuda.set_device(device)
    model = make_model(cfg)
    tok = model.tokenizer
    if model.config.vocab_size < 259 or not hasattr(tok, "pad_id"):
        raise TrainError("the synthetic data needs the byte tokenizer and a vocabulary of >= 259")
    data = SyntheticData(tok, cfg.seed, cfg.mix, cfg.needle_order, cfg.needle_formats, cfg.needle_counts)
    run = _Run(cfg, out, device, model, make_optimizer(model, cfg), data, cfg.use_amp())
    if resume and found:
        _resume(run, found[-1][1])
    else:
        torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    return run


def _resume(run: _Run, where: Path) -> None:
    """Weights, optimiser, RNG states and counters from the checkpoint ``where``."""
    try:
        state = json.loads((where / STATE_FILE).read_text())
        _check_resumable(state["train_config"], run.cfg, where, state.get("data"))
        load_state(run.model, read_state_dict(where / "model.safetensors"), str(where))
        load_optimizer(run.opt, where / OPTIM_FILE)
        _set_rng_state(state["rng"], run.device)
        run.start, run.counters = int(state["step"]), dict(state["counters"])
    except CheckpointError as e:
        raise TrainError(str(e)) from None
    except (OSError, ValueError, KeyError, TypeError) as e:   # JSON, safetensors, missing fields
        raise TrainError(f"{where}: damaged checkpoint ({first_line(e)})") from None


def _loop(run: _Run, end: int, on_step, on_log) -> tuple[int, dict]:
    """Steps ``run.start`` .. ``end`` with their log rows and checkpoints. SIGINT / SIGTERM stop
    after a step with a checkpoint (``_Signals``, ``Interrupted``); a non-finite loss stops before
    its log row or checkpoint (``_check_finite``). Returns the step reached and the last log row."""
    cfg = run.cfg
    log_f, log_w = _open_log(run.out, run.start)
    prefetch = _Prefetch(run.data, cfg, run.start) if run.start < cfg.steps else None
    window = _Window(run.device)
    step, last_row = run.start, {}
    try:
        with _Signals() as signals:
            while step < end:
                s, *tensors, per_task = prefetch.get()
                assert s == step
                ids, lr, gnorm = _step(run, step, tensors, per_task, window)
                step += 1
                if on_step:
                    on_step(step)
                if step % cfg.log_every == 0 or step == end:
                    _check_finite(run, window, step, weights=False)
                    last_row = window.row(step, ids, lr, gnorm, run.counters)
                    log_w.writerow(last_row)
                    log_f.flush()
                    if on_log:
                        on_log(last_row)
                stop = signals.signum is not None and step < cfg.steps
                if (cfg.save_every and step % cfg.save_every == 0) or step == end or stop:
                    _save(run, step, window)
                if stop:
                    raise Interrupted(step, signals.signum)
    finally:
        if prefetch:
            prefetch.close()
        log_f.close()
    return step, last_row


def _step(run: _Run, step: int, tensors: list, per_task: list[int], window: "_Window") -> tuple:
    """One optimiser step on a batch (no host sync); its sums go into ``window``, its tokens into
    ``run.counters``. Returns (the batch's ids on the device, the step's lr, the gradient norm tensor)."""
    lr = lr_at(run.cfg, step)
    for g in run.opt.param_groups:
        g["lr"] = lr
    ids, ans_w, ctx_w, ans, onehot = (t.to(run.device, non_blocking=True) for t in tensors)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
        loss, a_loss, l_loss, right = batch_loss(run.model, ids, ans_w, ctx_w, ans, onehot, run.cfg.lm_weight)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    n_tok = ids.shape[0] * (ids.shape[1] - 1)
    run.counters["tokens"] += n_tok           # exact at any step, so a checkpoint's counters are too
    window.add(torch.cat([torch.stack([loss.detach(), a_loss, l_loss]), right]), gnorm, per_task, n_tok, step + 1)
    return ids, lr, gnorm


class _Window:
    """The steps since the last log row: their sums stay on the device until a log step, with the
    first step whose loss or gradient norm was not finite (0: none). ``mark``: the time up to
    which training seconds are in the counters."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3 + len(TASKS), device=device)   # loss, answer loss, lm loss, right per task
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)
        self.mark = time.perf_counter()
        self._reset(self.mark)

    def _reset(self, now: float) -> None:
        self.sums.zero_()
        self.n_task = [0] * len(TASKS)           # answer tokens per task
        self.steps, self.tokens, self.t0 = 0, 0, now

    def add(self, sums: torch.Tensor, gnorm: torch.Tensor, per_task: list[int], n_tok: int, step: int) -> None:
        self.sums += sums
        finite = torch.isfinite(sums[0]) & torch.isfinite(gnorm)
        self.first_bad = torch.where(finite | (self.first_bad > 0), self.first_bad, step)
        self.n_task = [a + b for a, b in zip(self.n_task, per_task)]
        self.steps += 1
        self.tokens += n_tok

    def fold(self, counters: dict, now: float) -> None:
        """Add the training seconds since ``mark`` to ``counters``."""
        counters["seconds"] += now - self.mark
        self.mark = now

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (a checkpoint being written) out of the training time."""
        self.t0 += seconds
        self.mark += seconds

    def row(self, step: int, ids, lr: float, gnorm, counters: dict) -> dict:
        """The log row of the window ending at ``step`` (the one host sync per window); folds the
        window's seconds into ``counters`` and starts the next one."""
        vals = self.sums.tolist()
        now = time.perf_counter()
        dt = now - self.t0
        self.fold(counters, now)
        n, nt = self.steps, self.n_task
        row = {
            "step": step, "length": ids.shape[1] - 1, "batch": ids.shape[0],
            "loss": round(vals[0] / n, 5), "answer_loss": round(vals[1] / n, 5), "lm_loss": round(vals[2] / n, 5),
            "answer_acc": round(sum(vals[3:]) / max(1, sum(nt)), 5),
            **{f"{t}_acc": round(vals[3 + i] / nt[i], 5) if nt[i] else "" for i, t in enumerate(TASKS)},
            "lr": f"{lr:.4e}", "grad_norm": round(float(gnorm), 4), "tokens": counters["tokens"],
            "seconds": round(counters["seconds"], 3), "tokens_per_s": round(self.tokens / max(dt, 1e-9)),
        }
        self._reset(now)
        return row


def _check_finite(run: _Run, window: _Window, step: int, weights: bool) -> None:
    """TrainError (one line; the run's checkpoints untouched) if a loss or gradient norm since the
    last check was not finite, or (``weights``) a weight is not: nothing of such a step is kept."""
    bad, what = int(window.first_bad), "the loss or gradient norm"
    if not bad and weights and not bool(torch.stack([torch.isfinite(p).all() for p in run.model.parameters()]).all()):
        bad, what = step, "a weight"
    if bad:
        kept = checkpoints(run.out)
        last = f"last good checkpoint step_{kept[-1][0]} kept" if kept else "no checkpoint was written before it"
        raise TrainError(f"training stopped: {what} is not finite at step {bad} (a lower --lr may help); {last}")


def _save(run: _Run, step: int, window: _Window) -> None:
    """A checkpoint at ``step`` of finite weights, with the counters as of that step (tokens are
    counted every step; the seconds are folded in here). Saving is not training time."""
    _check_finite(run, window, step, weights=True)
    t0 = time.perf_counter()
    window.fold(run.counters, t0)
    save_checkpoint(run.out, run.model, run.opt, run.cfg, run.data, step, run.counters)
    window.pause(time.perf_counter() - t0)


def _finish(run: _Run, step: int, last_row: dict, backend_line: str) -> TrainResult:
    """The result of a session; a finished run also gets ``final/`` and its summary."""
    cfg, out, counters = run.cfg, run.out, run.counters
    last_row = last_row or _last_logged(out)
    if step < cfg.steps:                      # stopped early (stop_at): the checkpoint is the result
        return TrainResult(out, out / f"step_{step}", step, counters["tokens"], counters["seconds"], last_row,
                           run.start)
    final = out / "final"
    if final.exists():
        shutil.rmtree(final)
    save_model(run.model, final)
    summary = {"model": run.model.config.name, "steps": cfg.steps, "tokens": counters["tokens"],
               "train_seconds": round(counters["seconds"], 1), "last": last_row,
               "device": device_name(run.device), "amp": "bf16" if run.amp else "fp32", "backend": backend_line,
               "command": cfg.command, "config": run.model.config.to_dict(), "train_config": cfg.to_dict()}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return TrainResult(out, final, step, counters["tokens"], counters["seconds"], last_row, run.start)


class _Signals:
    """SIGINT (Ctrl-C) and SIGTERM during training: the first sets ``signum``, and the loop saves a
    checkpoint at the end of the step (never half-way through an optimiser update), then raises
    ``Interrupted``; a second signal stops at once (KeyboardInterrupt). Off the main thread
    (where no handler can be installed) nothing changes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _last_logged(out: Path) -> dict:
    path = out / LOG_FILE
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


# -- shipping ------------------------------------------------------------------------------------
def bf16_state(weights_dir) -> dict:
    """``weights_dir/model.safetensors`` in bf16, each floating tensor checked finite (TrainError
    names the first bad one): what ``ship`` ships and what a sweep exports of each run."""
    weights_dir = Path(weights_dir)
    try:
        state = {k: v.to(torch.bfloat16).contiguous() if v.is_floating_point() else v
                 for k, v in read_state_dict(weights_dir / "model.safetensors").items()}
    except CheckpointError as e:
        raise TrainError(str(e)) from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainError(f"{weights_dir}: {len(bad)} tensors hold non-finite values (e.g. {bad[0]}); not shipped")
    return state


def save_bf16(state: dict, path) -> None:
    """A ``bf16_state`` written as our safetensors file, marked bf16."""
    ckpt.write_weights(state, path, dtype="bfloat16")


def ship(out, name: str | None = None, weights_dir: Path | None = None) -> Path:
    """Copy ``OUT/final`` into the package as ``yoco_core/weights/<name>/`` (bf16 safetensors +
    config.json + train_summary.json), where ``load_model(name)`` finds it; never weights with a
    non-finite value (TrainError, nothing written)."""
    out = Path(out)
    final = out / "final"
    if not (final / "model.safetensors").is_file():
        raise TrainError(f"no finished run in {out} (no final/model.safetensors)")
    try:
        mcfg = read_config(final)
    except CheckpointError as e:
        raise TrainError(str(e)) from None
    name = (name or mcfg.name).lower()
    if name not in PRESETS:
        raise TrainError(f"{name!r} is not a preset name; shipped weights are found by preset name")
    state = bf16_state(final)
    dest = Path(weights_dir or ckpt.WEIGHTS_DIR) / name
    dest.mkdir(parents=True, exist_ok=True)
    save_bf16(state, dest / "model.safetensors")
    (dest / "config.json").write_text(mcfg.replace(name=name).to_json() + "\n")
    if (out / SUMMARY_FILE).is_file():
        shutil.copyfile(out / SUMMARY_FILE, dest / SUMMARY_FILE)
    else:                                     # never an earlier model's summary beside these weights
        (dest / SUMMARY_FILE).unlink(missing_ok=True)
    for f in dest.iterdir():
        f.chmod(0o644)                        # package data: readable by everyone
    return dest
