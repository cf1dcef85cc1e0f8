"""yoco_core.warmup and the CLI's status line: Triton's autotune cache setting, and compile /
autotune events from Triton's own hooks to a subscriber.

Triton compiles nothing on this CPU machine when a kernel is launched (there is no GPU driver, and
its interpreter, TRITON_INTERPRET=1, runs kernels without compiling them: test
``test_the_interpreter_compiles_nothing_and_reports_nothing``). So the tests drive Triton's hooks
the way Triton calls them: ``triton.compile`` for a real CUDA target (it needs no GPU: ptxas
ships with Triton), which fires the real compilation listener and fills a real disk cache; the
installed ``knobs.runtime.jit_cache_hook`` called with the arguments ``JITFunction`` passes it;
and Triton's real ``Autotuner`` over a stand-in kernel whose launch calls that hook, as a
compile would.
"""
import os
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import triton
import triton.language as tl
from triton.compiler.compiler import LazyDict
from triton.runtime.jit import JitFunctionInfo

from yoco_cli import options
from yoco_core import warmup
from yoco_core.warmup import KernelEvent

ROOT = Path(__file__).resolve().parents[1]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(INTERPRETED, reason="the interpreted run: see the interpreter test")


def _slots():
    """Triton's hook slots that the module fills."""
    k = triton.knobs
    return k.runtime.jit_cache_hook, k.compilation.listener, getattr(k.autotuning, "listener", None)


@triton.jit
def _warmup_test_copy(x, y, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + i, tl.load(x + i, mask=i < n), mask=i < n)


def _compile_for_cuda():
    """A real compile of ``_warmup_test_copy`` for an H100-class target (no GPU needed)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(_warmup_test_copy, {"x": "*fp32", "y": "*fp32", "n": "i32", "BLOCK": "constexpr"},
                    {"BLOCK": 128})
    try:
        return triton.compile(src, target=GPUTarget("cuda", 90, 32))
    except Exception as e:           # no CUDA backend or ptxas in this Triton build
        pytest.skip(f"Triton cannot compile for CUDA here: {type(e).__name__}: {e}")


def _jit_compile_starts(name="_warmup_test_copy"):
    """Triton's installed pre-compile hook, called as ``JITFunction._do_compile`` calls it."""
    hook = triton.knobs.runtime.jit_cache_hook
    return hook(key=("sig",), repr=f"{name}[num_warps=4](x: *fp32)",
                fn=JitFunctionInfo(__name__, name, _warmup_test_copy),
                compile={"key": ("sig",)}, is_manual_warmup=False, already_compiled=False)


@pytest.fixture
def events():
    got = []
    stop = warmup.subscribe(got.append)
    yield got
    stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))
    return tmp_path / "triton-cache"


def test_a_compile_event_reaches_the_subscriber_and_unsubscribing_restores_triton():
    before, events = _slots(), []
    warmup.subscribe(events.append)
    assert _jit_compile_starts() is None                 # None: Triton goes on and compiles
    assert events == [KernelEvent("compile", "_warmup_test_copy")]
    ours = triton.knobs.runtime.jit_cache_hook
    warmup.unsubscribe(events.append)
    assert _slots() == before
    ours(key=("sig",), repr="x", fn=JitFunctionInfo(__name__, "late", _warmup_test_copy), compile={},
         is_manual_warmup=False, already_compiled=False)
    assert len(events) == 1                              # nothing reaches a callback that left


def test_hooks_set_before_are_called_first_kept_and_put_back(monkeypatch):
    seen = []

    def users_hook(**kw):
        seen.append(kw["fn"].name)
        return True                                      # the user's hook skips this compile

    monkeypatch.setattr(triton.knobs.runtime, "jit_cache_hook", users_hook)
    got = []
    stop = warmup.subscribe(got.append)
    try:
        assert _jit_compile_starts() is True and seen == ["_warmup_test_copy"]
        assert got == []                                 # skipped: nothing compiles, nothing to report
    finally:
        stop()
    assert triton.knobs.runtime.jit_cache_hook is users_hook


def test_a_failing_subscriber_is_removed_with_a_warning_and_the_compile_goes_on(events):
    def broken(event):
        raise KeyError("display gone")

    warmup.subscribe(broken)
    with pytest.warns(RuntimeWarning, match="display gone"):
        assert _jit_compile_starts() is None
    assert _jit_compile_starts() is None                 # removed: no second warning
    assert len(events) == 2


def test_a_real_compile_is_reported_then_found_in_the_disk_cache(events, cache):
    kernel = _compile_for_cuda()
    assert kernel.metadata.name == "_warmup_test_copy"
    first = [e for e in events if e.kind == "compiled"]
    assert [(e.name, e.cache_hit) for e in first] == [("_warmup_test_copy", False)] and first[0].seconds > 0
    assert any(cache.rglob("_warmup_test_copy.json"))
    _compile_for_cuda()                                  # what a second process does: read the cache
    assert [(e.name, e.cache_hit) for e in events if e.kind == "compiled"][1:] == [("_warmup_test_copy", True)]


class _StandIn:
    """What Triton's autotuner wraps (a kernel with ``run``): a launch with a configuration not met
    before reports the compile a JITFunction would start, and every launch calls
    ``runtime.launch_enter_hook`` as Triton's launcher does."""

    def __init__(self):
        self.fn = _warmup_test_copy
        self.arg_names = _warmup_test_copy.arg_names
        self.compiled = set()

    def run(self, *args, **kwargs):
        config = repr(sorted(kwargs.items()))
        if config not in self.compiled:
            self.compiled.add(config)
            _jit_compile_starts()
        triton.knobs.runtime.launch_enter_hook(LazyDict({"name": "_warmup_test_copy", "function": 0, "stream": 0}))


def test_compiles_inside_triton_autotuner_are_marked_autotuning(events):
    configs = [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32}, num_warps=2)]
    tuned = triton.autotune(configs=configs, key=["n"],
                            do_bench=lambda call, quantiles: (call(), [1.0, 1.0, 1.0])[1])(_StandIn())
    tuned.run(None, None, 100, grid=(1,))
    tuning = [e for e in events if e.autotuning]
    assert [e.name for e in tuning] == ["_warmup_test_copy"] * 2
    assert "BLOCK: 16" in tuning[0].config and "BLOCK: 32" in tuning[1].config and "num_warps: 2" in tuning[1].config
    done = [e for e in events if e.kind == "autotuned"]
    # the end, once: Triton 3.9's listener, or on 3.6 the tuned kernel's first launch after its benchmark
    assert [(e.name, e.cache_hit) for e in done] == [("_warmup_test_copy", False)] and events[-1] == done[0]
    n = len(events)
    tuned.run(None, None, 100, grid=(1,))                # the same key: tuned already, nothing compiles
    assert [e for e in events[n:] if e.autotuning] == []


def _benchmarking_three_times(call, quantiles):
    for _ in range(3):                                   # launches inside _bench: still tuning
        call()
    return [1.0, 1.0, 1.0]


def test_on_triton_3_6_the_tuned_kernels_first_launch_ends_the_autotuning(monkeypatch):
    """Triton 3.6 has no ``autotuning.listener``: the tuning ends, and the status line clears, at the
    tuned kernel's first launch from ``Autotuner.run`` after its benchmark, not at the benchmark's own
    launches. Here Triton's autotuner runs with only the hooks 3.6 has."""
    monkeypatch.delenv(warmup.AUTOTUNE_CACHE_ENV, raising=False)
    launch_hooks = list(triton.knobs.runtime.launch_enter_hook.calls)
    events, shown = [], []
    status = options.KernelStatus(shown.append, delay=0)
    with monkeypatch.context() as m:                     # subscribing where the group has no listener
        m.setattr(triton.knobs, "autotuning", types.SimpleNamespace(cache=False, print=False))
        stop = warmup.subscribe(events.append)
        warmup.subscribe(status)
    try:
        assert getattr(triton.knobs.autotuning, "listener", None) is None      # nothing of ours there
        configs = [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})]
        tuner = triton.autotune(configs=configs, key=["n"], do_bench=_benchmarking_three_times)(_StandIn())
        tuner.run(None, None, 100, grid=(1,))
        assert [(e.kind, e.autotuning) for e in events] == [("compile", True), ("compile", True), ("autotuned", False)]
        done = events[-1]
        assert (done.name, done.cache_hit, done.seconds) == ("_warmup_test_copy", False, tuner.bench_time)
        assert shown[-2] == "autotuning _warmup_test_copy: compiling config 2 (first run; cached for the next)"
        assert shown[-1] is None and status.tuned == {"_warmup_test_copy": 2}
        tuner.run(None, None, 100, grid=(1,))            # tuned: launches end nothing more
        tuner.run(None, None, 200, grid=(1,))            # a new key, its candidates compiled already
        assert len(events) == 3
    finally:
        warmup.unsubscribe(status)
        stop()
    assert triton.knobs.runtime.launch_enter_hook.calls == launch_hooks      # the launch chain as it was


def _stand_in_tuner():
    return triton.autotune(configs=[triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})],
                           key=["n"])(_StandIn())


@pytest.fixture
def no_setting(monkeypatch):
    """Neither the variable nor the knob set (and both as they were afterwards)."""
    monkeypatch.delenv(warmup.AUTOTUNE_CACHE_ENV, raising=False)
    with triton.knobs.autotuning.scope():
        triton.knobs.autotuning.__dict__.pop("cache", None)
        yield


def test_the_autotune_cache_is_turned_on_when_nobody_chose(no_setting):
    assert not warmup.autotune_cache_enabled() and not _stand_in_tuner().cache_results
    assert warmup.enable_autotune_cache() is True
    assert os.environ[warmup.AUTOTUNE_CACHE_ENV] == "1"
    assert _stand_in_tuner().cache_results               # Triton's own reading of it


@pytest.mark.parametrize("value", ["0", "off", "1"])
def test_a_users_variable_is_kept(no_setting, monkeypatch, value):
    monkeypatch.setenv(warmup.AUTOTUNE_CACHE_ENV, value)
    assert warmup.enable_autotune_cache() is (value == "1")
    assert os.environ[warmup.AUTOTUNE_CACHE_ENV] == value
    assert _stand_in_tuner().cache_results is (value == "1")


def test_a_users_knob_set_in_code_is_kept(no_setting, monkeypatch):
    monkeypatch.setattr(triton.knobs, "propagate_env", False, raising=False)   # the knob alone, no variable
    triton.knobs.autotuning.cache = False
    assert warmup.enable_autotune_cache() is False
    assert os.environ.get(warmup.AUTOTUNE_CACHE_ENV) in (None, "0")
    assert not _stand_in_tuner().cache_results


def test_the_autotune_cache_is_turned_on_where_triton_has_no_autotuning_knobs(no_setting, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton.knobs", types.ModuleType("triton.knobs"))
    assert warmup.enable_autotune_cache() is True
    assert os.environ[warmup.AUTOTUNE_CACHE_ENV] == "1"


def test_a_hook_chained_after_ours_gets_each_event_once_after_subscribing_again(monkeypatch, cache):
    """Someone chains a hook after ours; we let go (ours stays in their chain) and subscribe again:
    one event per compile, also once they put our old hook back."""
    runtime, compilation = triton.knobs.runtime, triton.knobs.compilation
    got, theirs = [], []
    warmup.subscribe(got.append)
    old_jit, old_listener = runtime.jit_cache_hook, compilation.listener

    def their_jit_hook(**kw):
        theirs.append("compile")
        return old_jit(**kw)

    def their_listener(**kw):
        theirs.append("compiled")
        old_listener(**kw)

    monkeypatch.setattr(runtime, "jit_cache_hook", their_jit_hook)
    monkeypatch.setattr(compilation, "listener", their_listener)
    warmup.unsubscribe(got.append)
    assert runtime.jit_cache_hook is their_jit_hook and compilation.listener is their_listener
    warmup.subscribe(got.append)
    try:
        _jit_compile_starts()
        _compile_for_cuda()
        assert [e.kind for e in got] == ["compile", "compiled"] and theirs == ["compile", "compiled"]
        runtime.jit_cache_hook, compilation.listener = old_jit, old_listener     # they let go of theirs
        _jit_compile_starts()
        _compile_for_cuda()
        assert [e.kind for e in got] == ["compile", "compiled"] * 2
    finally:
        warmup.unsubscribe(got.append)


def test_the_interpreter_compiles_nothing_and_reports_nothing():
    """Under TRITON_INTERPRET=1 a kernel launch on the CPU works and emits no event: there is no
    compile to report (what the CPU test suite runs)."""
    code = textwrap.dedent("""
        import torch, triton, triton.language as tl
        from yoco_core import warmup
        got = []
        warmup.subscribe(got.append)

        @triton.jit
        def twice(x, y, n, BLOCK: tl.constexpr):
            i = tl.arange(0, BLOCK)
            tl.store(y + i, 2 * tl.load(x + i, mask=i < n), mask=i < n)

        x = torch.arange(5.0)
        y = torch.empty(5)
        twice[(1,)](x, y, 5, BLOCK=8)
        assert torch.equal(y, 2 * x), y
        print("events", len(got))
    """)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "events 0" in r.stdout


# -- the CLI's status line ---------------------------------------------------------------------
def test_status_line_says_what_compiles_and_autotunes_then_clears():
    shown = []
    status = options.KernelStatus(shown.append, delay=0)
    status(KernelEvent("compile", "_rope_kernel"))
    status(KernelEvent("compiled", "_rope_kernel", seconds=1.5, cache_hit=False))
    status(KernelEvent("compile", "chunk_fwd_kernel_h", autotuning=True, config="BK: 64"))
    status(KernelEvent("compiled", "chunk_fwd_kernel_h", seconds=0.5, cache_hit=False))
    status(KernelEvent("compile", "chunk_fwd_kernel_h", autotuning=True, config="BK: 32"))
    status(KernelEvent("compiled", "chunk_fwd_kernel_h", seconds=0.5, cache_hit=False))
    status(KernelEvent("autotuned", "chunk_fwd_kernel_h", seconds=4.0, cache_hit=False))
    status(KernelEvent("compile", "_split_kernel"))
    status(KernelEvent("compiled", "_split_kernel", seconds=0.01, cache_hit=True))
    assert shown == [
        "compiling Triton kernel _rope_kernel (first run; cached for the next)", None,
        "autotuning chunk_fwd_kernel_h: compiling config 1 (first run; cached for the next)",
        "autotuning chunk_fwd_kernel_h: benchmarking config 1 (first run; cached for the next)",
        "autotuning chunk_fwd_kernel_h: compiling config 2 (first run; cached for the next)",
        "autotuning chunk_fwd_kernel_h: benchmarking config 2 (first run; cached for the next)", None,
        "compiling Triton kernel _split_kernel (first run; cached for the next)", None]
    line = status.summary()
    assert line.startswith("first run: compiled 3 Triton kernel(s) in 2.5 s, autotuned 1 (4.0 s benchmarking): "
                           "chunk_fwd_kernel_h; 1 loaded from the cache; cached in ")
    warm = options.KernelStatus(shown.append, delay=0)
    warm(KernelEvent("compile", "_split_kernel"))
    warm(KernelEvent("compiled", "_split_kernel", seconds=0.01, cache_hit=True))
    assert warm.summary() is None                        # a warm run: no line


def test_a_kernel_loaded_from_the_cache_never_reaches_the_status_line():
    """A compile is shown once it has lasted the delay: a load from the disk cache (milliseconds)
    is done before, a real compile is shown until it ends."""
    shown = []
    status = options.KernelStatus(shown.append, delay=0.2)
    status(KernelEvent("compile", "_split_kernel"))
    status(KernelEvent("compiled", "_split_kernel", seconds=0.002, cache_hit=True))
    time.sleep(0.4)
    assert shown == [None]
    status(KernelEvent("compile", "_rope_kernel"))
    time.sleep(0.4)
    assert shown[-1] == "compiling Triton kernel _rope_kernel (first run; cached for the next)"
    status(KernelEvent("compiled", "_rope_kernel", seconds=0.5, cache_hit=False))
    assert shown[-1] is None


def test_without_a_status_line_one_notice_is_printed(capsys):
    """``yoco eval`` (lm-eval draws its own bars): one line at the first real compile, none for
    loads from the cache."""
    status = options.KernelStatus()
    status(KernelEvent("compiled", "_split_kernel", seconds=0.002, cache_hit=True))
    assert capsys.readouterr().err == ""
    for name in ("_rope_kernel", "_rms_norm_kernel"):
        status(KernelEvent("compile", name))
        status(KernelEvent("compiled", name, seconds=1.0, cache_hit=False))
    err = capsys.readouterr().err
    assert err.count("compiling Triton kernels") == 1 and len(err.strip().splitlines()) == 1


def test_yoco_needle_shows_the_compile_in_its_progress_line_and_sums_it_up(tmp_path, cache, monkeypatch, capsys):
    """A first prompt that compiles a kernel (here: a real compile in the middle of generation)
    puts its name in the progress line while it runs, the cell's result back afterwards, and one
    line at the end."""
    import rich.progress

    from yoco_cli.main import main
    from yoco_core import build_model, get_config, save_model
    from yoco_core import needle as nd

    cfg = get_config("yoco-tiny").replace(name="warmup-test", dim=32, n_heads=2, n_kv_heads=1, ffn_dim=64,
                                          n_layers=2, max_seq_len=4096)
    ckpt = str(save_model(build_model(cfg), tmp_path / "m"))
    real_generate, real_update, lasts, before = nd.generate, rich.progress.Progress.update, [], _slots()

    def compiling_generate(*a, **k):
        _jit_compile_starts()
        _compile_for_cuda()
        return real_generate(*a, **k)

    def update(self, task_id, **kw):
        if "last" in kw:
            lasts.append(kw["last"])
        return real_update(self, task_id, **kw)

    monkeypatch.setattr(nd, "generate", compiling_generate)
    monkeypatch.setattr(options, "STATUS_DELAY_S", 0)              # every compile shown (no timing here)
    monkeypatch.setattr(rich.progress.Progress, "update", update)
    argv = ["needle", "--model", ckpt, "--device", "cpu", "--out", str(tmp_path / "run"), "--ctx", "512",
            "--depths", "0,1"]
    assert main(argv) == 0
    compiling = "compiling Triton kernel _warmup_test_copy (first run; cached for the next)"
    assert lasts[0] == compiling and lasts[1] == ""                  # before the first cell's result
    assert lasts[2].startswith("score ") and lasts[3] == compiling and lasts[4] == lasts[2]
    err = capsys.readouterr().err
    assert "first run: compiled 1 Triton kernel(s)" in err and "1 loaded from the cache" in err
    assert str(cache) in err
    assert _slots() == before                                         # the command let go of Triton
