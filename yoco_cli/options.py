"""What every subcommand shares: option aliases, size parsing, devices, and one-line errors."""
from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Callable, NoReturn, Optional

import typer
from rich.console import Console

console = Console(stderr=True)


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def fail(message: str) -> NoReturn:
    raise UserError(message)


# -- shared options (Annotated aliases, huggingface_hub-CLI style) ----------------------------
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Preset name (e.g. yoco-tiny) or checkpoint path.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (cuda if present).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="fp32, bf16 or fp16 (auto: bf16 on cuda, fp32 on cpu).")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Results folder.")]
ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume", help="Skip cells already in the CSV.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
TokenizerOpt = Annotated[Optional[str], typer.Option(
    "--tokenizer", help="Tokenizer instead of the model's own: bytes, a folder, a tokenizer.json or a .tiktoken "
                        "rank file (e.g. cl100k_base.tiktoken for unilm: YOCO checkpoints).")]
ChatTemplateOpt = Annotated[str, typer.Option(
    "--chat-template", help="auto (the model folder's chat template, if it has one), none (base models), "
                            "or a jinja file.")]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*$")
_MULT = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def parse_size(text: str) -> int:
    """``512`` -> 512, ``4k`` -> 4096, ``128K`` -> 131072, ``1m``/``1M`` -> 1048576."""
    m = _SIZE.match(str(text))
    if not m:
        fail(f"bad size {text!r}: use a number with an optional k or m suffix, e.g. 512, 4k, 1m")
    value = float(m.group(1)) * _MULT[m.group(2).lower()]
    if value < 1 or value != int(value):
        fail(f"bad size {text!r}: must be a positive whole number of tokens")
    return int(value)


def parse_size_list(text: str, doubling_from: int | None = None) -> list[int]:
    """A comma list of sizes; with ``doubling_from``, a single size means a doubling sweep up to it
    (``1m``), and a single size with a trailing comma means just that size (``256k,``)."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        fail("empty size list")
    sizes = [parse_size(p) for p in parts]
    literal = str(text).strip().endswith(",")
    if len(sizes) == 1 and doubling_from is not None and sizes[0] > doubling_from and not literal:
        top, s, sizes = sizes[0], doubling_from, []
        while s < top:
            sizes.append(s)
            s *= 2
        sizes.append(top)
    return sorted(set(sizes))


def parse_chunk(text: str, auto: int | None) -> int | None:
    """``--chunk-size``: ``auto`` gives ``auto`` (the command's default); ``0``, ``none`` or
    ``off`` give None (the whole prompt in one piece); a size gives that many tokens."""
    key = str(text).strip().lower()
    if key == "auto":
        return auto
    if key in ("0", "none", "off"):
        return None
    return parse_size(key)


def format_size(n: int) -> str:
    for unit, mult in (("m", 1024 ** 2), ("k", 1024)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


def slug(text) -> str:
    """A file-name-safe spelling: ``meta-llama/Llama 3`` -> ``meta-llama-llama-3``."""
    s = re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-.").lower()
    return s or "model"


def parse_float_list(text: str, name: str, lo: float | None = None, hi: float | None = None) -> list[float]:
    """A comma list of finite numbers (nan and inf refused), each within ``[lo, hi]`` where given."""
    out = []
    for p in str(text).split(","):
        if not p.strip():
            continue
        try:
            x = float(p)
        except ValueError:
            fail(f"bad {name} {p.strip()!r}: not a number")
        if not math.isfinite(x):
            fail(f"bad {name} {p.strip()!r}: must be a finite number")
        if (lo is not None and x < lo) or (hi is not None and x > hi):
            bounds = (f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
                      else f"at least {lo:g}" if lo is not None else f"at most {hi:g}")
            fail(f"bad {name} {x:g}: must be {bounds}")
        out.append(x)
    if not out:
        fail(f"empty {name} list")
    return out


def ensure_out_dir(path, option: str = "--out") -> Path:
    """The results folder ``path``, created; refused (one line) before any work where it is a file
    or cannot be created or written (probed with a temporary file, which root's read-only
    file systems fail too)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        fail(f"{option} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".yoco-write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        fail(f"{option} {path}: cannot write there ({e.strerror or type(e).__name__})")
    return path


def resolve_device(name: str) -> str:
    """``--device`` as a torch device name. A CUDA device also turns on Triton's cross-process
    autotune cache (``warmup.enable_autotune_cache``, unless the user set it), before any kernel
    module (fla-core's) is imported."""
    import torch

    name = name.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            fail(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        idx = name.partition(":")[2]
        if idx and (not idx.isdigit() or int(idx) >= torch.cuda.device_count()):
            fail(f"--device {name}: no such GPU (this machine has {torch.cuda.device_count()})")
        from yoco_core.warmup import enable_autotune_cache

        enable_autotune_cache()
        return name
    fail(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)")


def resolve_dtype(name: str, device: str):
    from yoco_core.dtypes import from_name as dtype_from_name

    try:
        return dtype_from_name(name, device)
    except ValueError as e:
        fail(str(e))


def model_config(name: str):
    """The ``ModelConfig`` that ``load_model(name)`` would build, read without the weights (a
    preset's, or a checkpoint's ``config.json``; a bad one is one line); None for ``PREFIX:PATH``
    foreign checkpoints (their config is derived while converting) and for names that are neither
    (``load_model_or_fail`` then says so)."""
    from yoco_core import CheckpointError, PRESETS
    from yoco_core.checkpoint import WEIGHTS_DIR, read_config
    from yoco_core.config import get_config

    prefix, sep, _ = name.partition(":")
    path = Path(name).expanduser()
    if sep and len(prefix) > 1 and not path.exists():
        return None
    try:
        if name.lower() in PRESETS:
            shipped = WEIGHTS_DIR / name.lower()
            return read_config(shipped) if (shipped / "config.json").is_file() else get_config(name)
        return read_config(path) if path.exists() else None
    except CheckpointError as e:
        fail(str(e))


def ensure_fits(config, ctx: int, batch: int, device: str, dtype, *, chunk: int | None = None,
                reserve: int = 0) -> None:
    """Refuse (one line) a model whose analytic memory (``analytic.estimate_memory``: weights, the
    cache for ``ctx + reserve`` tokens, the activations of one ``chunk``-token prefill piece; the
    whole prompt when None) exceeds what ``device`` has (``hardware.available_memory``)."""
    from yoco_core.dtypes import element_size, name_of
    from yoco_core.perf.analytic import estimate_memory
    from yoco_core.perf.hardware import available_memory

    have = None if config is None else available_memory(device)
    if have is None:
        return
    need = estimate_memory(config, ctx, batch, element_size(dtype), chunk, reserve)["total"]
    if need > have:
        where = "the GPU has" if str(device).startswith("cuda") else "this machine has"
        fail(f"{config.name} needs about {need / 1e9:.1f} GB ({name_of(dtype)} weights, and the cache and "
             f"activations of {format_size(ctx)} tokens x batch {batch}); {device}: {where} {have / 1e9:.1f} GB "
             f"available (try a smaller model, --ctx or --dtype bf16)")


def memory_error_line(e: BaseException) -> str | None:
    """The one line for an allocation failure (``hardware.is_out_of_memory``), else None."""
    from yoco_core.perf.hardware import is_out_of_memory

    if not is_out_of_memory(e):
        return None
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return f"out of memory ({first[:200]}); try a smaller model, --ctx or --batch-size, or --dtype bf16"


def chat_template_or_fail(tokenizer, spec: str) -> tuple[str | None, str]:
    """``--chat-template`` for ``tokenizer`` (None: before the model is loaded, where only a file
    can be checked): (the template or None, what the CSV records); one line when unreadable."""
    from yoco_core.tokenizer import chat_template_for

    if tokenizer is None and spec == "auto":
        return None, "auto"
    try:
        return chat_template_for(tokenizer, spec)
    except ValueError as e:
        fail(str(e))


def load_model_or_fail(name: str, device: str, dtype, tokenizer: str | None = None):
    from yoco_core import CheckpointError, load_model

    try:
        return load_model(name, device=device, dtype=dtype, tokenizer=tokenizer)
    except CheckpointError as e:
        fail(str(e))
    except (MemoryError, RuntimeError) as e:       # ulimit -v, a full RAM: one line
        if (line := memory_error_line(e)) is None:
            raise
        fail(f"loading {name}: {line}")


STATUS_DELAY_S = 0.3     # a kernel loaded from Triton's disk cache takes milliseconds: never shown


class KernelStatus:
    """What Triton compiles and autotunes while a command runs (``yoco_core.warmup`` events), as
    the line ``show`` displays (``show(None)``: nothing is compiling now), and the tally behind
    ``summary``. A plain compile is shown once it has lasted ``delay`` seconds (a kernel loaded
    from the disk cache is done before); autotuning at once. Without ``show``, ``notice`` prints
    one line at the first real compile."""

    def __init__(self, show: Callable[[str | None], None] | None = None, delay: float | None = None):
        import threading

        self.show = show
        self.delay = STATUS_DELAY_S if delay is None else delay
        self.compiled = 0              # kernels compiled (not loaded from the disk cache)
        self.loaded = 0                # kernels loaded from the disk cache
        self.seconds = 0.0             # Triton's compile time of the ones compiled
        self.tuned: dict[str, int] = {}     # autotuned kernel -> candidate configurations compiled
        self.tune_seconds = 0.0        # benchmarking time Triton measured (none for results from its cache)
        self._tuning: str | None = None
        self._noticed = False
        self._lock = threading.Lock()
        self._pending: object | None = None      # the compile whose line waits for its delay

    def __call__(self, event) -> None:
        if event.kind == "compile":
            if event.autotuning:
                self._tuning = event.name
                n = self.tuned[event.name] = self.tuned.get(event.name, 0) + 1
                self._say(f"autotuning {event.name}: compiling config {n} (first run; cached for the next)")
            else:
                self._tuning = None
                self._say_later(f"compiling Triton kernel {event.name} (first run; cached for the next)")
        elif event.kind == "compiled":
            if event.cache_hit:
                self.loaded += 1
            else:
                self.compiled += 1
                self.seconds += event.seconds or 0.0
                self.notice()
            if self._tuning is not None:
                self._say(f"autotuning {self._tuning}: benchmarking config {self.tuned[self._tuning]} "
                          f"(first run; cached for the next)")
            else:
                self._say(None)
        elif event.kind == "autotuned":
            if not event.cache_hit:
                self.tuned.setdefault(event.name, 0)
                self.tune_seconds += event.seconds or 0.0
            self._tuning = None
            self._say(None)

    def _say(self, line: str | None, pending: object | None = None) -> None:
        with self._lock:
            if pending is not None and self._pending is not pending:    # done before its delay
                return
            self._pending = None
            if self.show is not None:
                self.show(line)

    def _say_later(self, line: str) -> None:
        if self.delay <= 0 or self.show is None:
            return self._say(line)
        import threading

        token = self._pending = object()
        timer = threading.Timer(self.delay, self._say, (line, token))
        timer.daemon = True
        timer.start()

    def notice(self) -> None:
        if self.show is None and not self._noticed:
            self._noticed = True
            console.print("compiling Triton kernels (first run on this machine; cached for the next) ...",
                          highlight=False, markup=False, soft_wrap=True)

    def summary(self) -> str | None:
        """One line for what the first run cost, or None when nothing was compiled."""
        if not self.compiled:
            return None
        from yoco_core.warmup import cache_dir

        line = f"first run: compiled {self.compiled} Triton kernel(s) in {self.seconds:.1f} s"
        if self.tuned:
            names = ", ".join(sorted(self.tuned))
            took = f" ({self.tune_seconds:.1f} s benchmarking)" if self.tune_seconds else ""
            line += f", autotuned {len(self.tuned)}{took}: {names}"
        if self.loaded:
            line += f"; {self.loaded} loaded from the cache"
        return line + f"; cached in {cache_dir()} for the next run"


@contextlib.contextmanager
def kernel_status(show: Callable[[str | None], None] | None = None):
    """Watch Triton's compiles and autotunes while the block runs (``KernelStatus``): ``show``
    gets the status line, and when the block ends normally one line on stderr says what was
    compiled, if anything was. Nothing happens where nothing compiles (the CPU)."""
    from yoco_core import warmup

    status = KernelStatus(show)
    stop = warmup.subscribe(status)
    try:
        yield status
    finally:
        stop()
        status._say(None)          # a pending line is dropped with it
    if (line := status.summary()) is not None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


_ARGV: list[str] | None = None   # set by main() to the arguments it was given


def set_argv(argv: list[str] | None) -> None:
    global _ARGV
    _ARGV = None if argv is None else list(argv)      # None: command_line reads sys.argv


def command_line() -> str:
    """The command as typed, for the record kept beside results."""
    import shlex

    args = sys.argv[1:] if _ARGV is None else _ARGV
    return "yoco " + " ".join(shlex.quote(a) for a in args)
