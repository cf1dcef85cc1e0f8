"""First-use costs on the GPU: Triton's autotune cache, and events while Triton compiles or autotunes.

A process's first prompt on a GPU pays for compiling every Triton kernel it launches (ours in
``kernels/fused`` and ``kernels/decode_attention``, fla-core's when it runs gated retention) and,
for fla-core's autotuned kernels, for benchmarking each candidate configuration. Triton keeps
compiled kernels on disk (``~/.triton/cache``, ``TRITON_CACHE_DIR``) by itself; it keeps autotuning
results there only for a kernel declared with ``cache_results=True`` (fla-core 0.6.0 declares
nearly all of its kernels so, unless ``FLA_CACHE_RESULTS=0``) or when ``TRITON_CACHE_AUTOTUNING``
is on (``enable_autotune_cache``; the same knob in Triton 3.6 and 3.9). Triton reads that setting
when ``@triton.autotune`` runs, i.e. when the module defining the kernel is imported: it must be
set before fla-core is.

``subscribe(callback)`` calls ``callback(KernelEvent)`` for every kernel Triton starts compiling in
this process (its ``runtime.jit_cache_hook``; the kernel may then come from the disk cache),
finishes compiling or loading (``compilation.listener``: seconds, cache hit) and finishes
autotuning: Triton 3.9 says so (``autotuning.listener``); Triton 3.6 has no such listener, so there
the end is the tuned kernel's first launch from ``Autotuner.run`` itself after it benchmarked
(``runtime.launch_enter_hook``, watched once a candidate has compiled; a result read from the disk
cache goes unreported there). A compile that starts inside Triton's autotuner (``Autotuner._bench``
on the stack) is marked ``autotuning``, with the configuration it tries. Hooks a user installed
before are called first and kept. Nothing fires in Triton's interpreter (``TRITON_INTERPRET=1``:
nothing is compiled) or without Triton.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Callable

AUTOTUNE_CACHE_ENV = "TRITON_CACHE_AUTOTUNING"
_TRUE = ("1", "true", "on", "yes")          # what Triton's getenv_bool reads as on


def enable_autotune_cache() -> bool:
    """Turn on Triton's cross-process autotune cache (``TRITON_CACHE_AUTOTUNING=1``) unless the
    user chose: the variable set to anything, or ``triton.knobs.autotuning.cache`` assigned in code.
    Applies to kernels whose ``@triton.autotune`` runs afterwards. Returns whether it is on."""
    knobs = _knobs()
    chosen = AUTOTUNE_CACHE_ENV in os.environ or "cache" in getattr(getattr(knobs, "autotuning", None), "__dict__", {})
    if not chosen:
        os.environ[AUTOTUNE_CACHE_ENV] = "1"
    return autotune_cache_enabled()


def autotune_cache_enabled() -> bool:
    """Whether Triton's autotuner will keep its results on disk (Triton's own reading of the
    setting when Triton is loaded)."""
    knobs = _knobs()
    if knobs is not None and hasattr(knobs, "autotuning"):
        return bool(knobs.autotuning.cache)
    return os.environ.get(AUTOTUNE_CACHE_ENV, "").strip().lower() in _TRUE


def cache_dir() -> str:
    """Where Triton keeps compiled kernels and autotuning results."""
    knobs = _knobs()
    if knobs is not None and hasattr(knobs, "cache"):
        return str(knobs.cache.dir)
    return os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")


def _knobs():
    """``triton.knobs`` where Triton is already imported (this module never imports it to read)."""
    return sys.modules.get("triton.knobs")


@dataclass(frozen=True)
class KernelEvent:
    """One thing Triton did. ``kind``: ``compile`` (a kernel starts compiling, or loading from the
    disk cache), ``compiled`` (done: ``seconds`` Triton spent, ``cache_hit``) or ``autotuned``
    (an autotuner picked its configuration: ``seconds`` benchmarking, None when it came from the
    cache; ``cache_hit``). ``autotuning``: the compile is one of the autotuner's candidates,
    ``config`` the one it tries."""
    kind: str
    name: str
    autotuning: bool = False
    config: str = ""
    seconds: float | None = None
    cache_hit: bool | None = None


Callback = Callable[[KernelEvent], None]

_lock = threading.Lock()
_subscribers: list[Callback] = []
_installed: list[tuple[object, str, object, object]] = []     # (knobs group, attribute, previous, ours)
_inside = threading.local()     # the slots whose hook of ours this thread is in (see ``_calling``)
_launch_chain = None     # Triton 3.6: runtime.launch_enter_hook, once it holds ``_launch_hook``
_armed: dict[int, str] = {}     # Triton 3.6: thread -> the kernel whose candidates it compiles


def subscribe(callback: Callback) -> Callable[[], None]:
    """Call ``callback(event)`` for Triton's compiles and autotunes in this process from now on
    (from whichever thread compiles); returns the function that unsubscribes it. A callback that
    raises is removed with a warning: a display must not stop a kernel from compiling."""
    with _lock:
        if callback not in _subscribers:
            _subscribers.append(callback)
        if not _installed:
            _install()
    return lambda: unsubscribe(callback)


def unsubscribe(callback: Callback) -> None:
    """Stop calling ``callback``; the last one out puts Triton's hooks back as they were."""
    with _lock:
        if callback in _subscribers:
            _subscribers.remove(callback)
        if not _subscribers:
            _uninstall()


def _emit(event: KernelEvent) -> None:
    with _lock:
        callbacks = list(_subscribers)
    for cb in callbacks:
        try:
            cb(event)
        except Exception as e:          # noqa: BLE001 - reported, never raised into Triton
            warnings.warn(f"kernel event subscriber {cb!r} failed ({type(e).__name__}: {e}); removed",
                          RuntimeWarning, stacklevel=2)
            unsubscribe(cb)


# -- Triton's hooks -------------------------------------------------------------------------------
def _install() -> None:
    try:
        import triton  # noqa: F401  (torch imports it where it is installed)
    except Exception:   # not installed, or broken: nothing compiles, nothing to watch
        return
    knobs = _knobs()
    if knobs is None:   # an old Triton without ``triton.knobs``: no hooks to chain
        return
    tuned = getattr(knobs, "autotuning", None)
    slots = ((getattr(knobs, "runtime", None), "jit_cache_hook", _jit_hook),
             (getattr(knobs, "compilation", None), "listener", _compiled_hook),
             (tuned, "listener", _autotuned_hook))
    for group, attr, make in slots:
        if group is None or not hasattr(group, attr):      # e.g. no autotuning.listener in Triton 3.6
            continue
        previous = getattr(group, attr)
        ours = make(previous, watch_launches=make is _jit_hook and (tuned is None or not hasattr(tuned, "listener")))
        setattr(group, attr, ours)
        _installed.append((group, attr, previous, ours))


def _uninstall() -> None:
    global _launch_chain
    for group, attr, previous, ours in reversed(_installed):
        if getattr(group, attr) is ours:     # a hook chained after ours keeps it (see ``_calling``)
            setattr(group, attr, previous)
    _installed.clear()
    if _launch_chain is not None:
        _launch_chain.remove(_launch_hook)
        _launch_chain = None
    _armed.clear()


@contextlib.contextmanager
def _calling(slot: str):
    """Mark this thread as inside our hook for ``slot`` while it calls the one before; yields whether
    it already was. A hook of ours that a foreign hook chained after stays in the chain when we let go;
    subscribing again puts a new one on top, so the old one is then called inside it and stays silent:
    each event arrives once, and still does if the foreign hook's owner puts the old one back."""
    depth = getattr(_inside, slot, 0)
    setattr(_inside, slot, depth + 1)
    try:
        yield depth > 0
    finally:
        setattr(_inside, slot, depth)


def _jit_hook(previous, watch_launches=False):
    def jit_cache_hook(**kwargs):
        with _calling("jit_cache_hook") as inner:
            result = previous(**kwargs) if previous is not None else None
        if not result and not inner:         # a truthy answer tells Triton to skip the compile
            fn = kwargs.get("fn")
            name = (getattr(fn, "name", None) or str(kwargs.get("repr", "?")).split("[")[0]).rsplit(".", 1)[-1]
            config = _tuning_config()
            if config is not None and watch_launches:
                _watch_launches(name)
            _emit(KernelEvent("compile", name, autotuning=config is not None, config=config or ""))
        return result
    return jit_cache_hook


def _compiled_hook(previous, watch_launches=False):
    def listener(**kwargs):
        with _calling("compilation") as inner:
            if previous is not None:
                previous(**kwargs)
        if inner:
            return
        times = kwargs.get("times")
        total = getattr(times, "total", None)
        _emit(KernelEvent("compiled", str(getattr(kwargs.get("src"), "name", "?")),
                          seconds=None if total is None else total / 1e6, cache_hit=kwargs.get("cache_hit")))
    return listener


def _autotuned_hook(previous, watch_launches=False):
    def listener(**kwargs):
        with _calling("autotuning") as inner:
            if previous is not None:
                previous(**kwargs)
        if inner:
            return
        fn = kwargs.get("fn")
        name = getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", "?")
        _emit(KernelEvent("autotuned", str(name), seconds=kwargs.get("duration"),
                          cache_hit=kwargs.get("cache_hit")))
    return listener


def _watch_launches(name: str) -> None:
    """Triton 3.6: this thread's autotuner compiles a candidate of ``name``; watch its launches
    (``runtime.launch_enter_hook``, a chain there) for the one that ends the tuning."""
    global _launch_chain
    with _lock:
        if not _subscribers:
            return
        if _launch_chain is None:
            chain = getattr(getattr(_knobs(), "runtime", None), "launch_enter_hook", None)
            if not callable(getattr(chain, "add", None)):    # no chain to join: the end goes unreported
                return
            chain.add(_launch_hook)
            _launch_chain = chain
        _armed[threading.get_ident()] = name


def _launch_hook(metadata) -> None:
    """A kernel launch (Triton 3.6): on a thread whose autotuner compiled candidates, the first
    launch from ``Autotuner.run`` itself, not from ``_bench``, is the tuned kernel's: tuning is done."""
    ident = threading.get_ident()
    if ident not in _armed:
        return
    frame = _autotuner_frame(sys._getframe(1))
    if frame is None or frame.f_code is not _autotuner_code("run"):      # benchmarking still
        return
    name = _armed.pop(ident, None)
    if name is None:
        return
    tuner, cached = frame.f_locals.get("self"), frame.f_locals.get("used_cached_result")
    name = getattr(getattr(tuner, "base_fn", None), "__name__", None) or name
    benchmarked = cached is not None and not cached
    _emit(KernelEvent("autotuned", str(name), seconds=getattr(tuner, "bench_time", None) if benchmarked else None,
                      cache_hit=None if cached is None else bool(cached)))


def _tuning_config() -> str | None:
    """The configuration Triton's autotuner is benchmarking when a compile starts inside it
    (``Autotuner._bench`` the nearest autotuner frame on this thread's stack), else None."""
    frame = _autotuner_frame(sys._getframe(1))
    if frame is None or frame.f_code is not _autotuner_code("_bench"):
        return None
    config = frame.f_locals.get("config")
    return "" if config is None else str(config)


def _autotuner_frame(frame, depth: int = 64):
    """The nearest frame of ``Autotuner._bench`` or ``Autotuner.run`` from ``frame`` outwards."""
    codes = (_autotuner_code("_bench"), _autotuner_code("run"))
    if codes[0] is None:
        return None
    for _ in range(depth):
        if frame is None:
            return None
        if frame.f_code in codes:
            return frame
        frame = frame.f_back
    return None


def _autotuner_code(method: str):
    autotuner = sys.modules.get("triton.runtime.autotuner")
    return getattr(getattr(getattr(autotuner, "Autotuner", None), method, None), "__code__", None)


__all__ = ["AUTOTUNE_CACHE_ENV", "enable_autotune_cache", "autotune_cache_enabled", "cache_dir", "KernelEvent",
           "subscribe", "unsubscribe"]
