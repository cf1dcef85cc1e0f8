"""The dependency direction of the code, checked on the source: ``yoco_core`` never imports
``yoco_cli``, and the imports among ``yoco_core``'s modules form no circle, counting every import
statement (module-level and deferred inside functions alike: a deferred import that breaks a circle
at run time still leaves the circle in the design)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ``known`` (or outside, as its dotted name) that ``path`` imports anywhere."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:                   # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                found.add(sub if sub in known else target)
    return found


def _graph(package: str) -> dict[str, set[str]]:
    mods = _modules(package)
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle among the graph's own nodes, as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if n not in graph or n == m:
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_yoco_core_never_imports_yoco_cli():
    bad = sorted(f"{m} imports {i}" for m, deps in _graph("yoco_core").items()
                 for i in deps if i == "yoco_cli" or i.startswith("yoco_cli."))
    assert not bad, bad


def test_no_import_circle_inside_yoco_core():
    circle = _cycle(_graph("yoco_core"))
    assert circle is None, " -> ".join(circle)


def test_the_cycle_finder_finds_a_circle():
    """The check above can fail: a deferred import back into a module that imports it is a circle."""
    graph = {"a": {"b"}, "b": {"c", "os"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["yoco_core.needle", "yoco_core.train"])
def test_evaluation_does_not_load_the_profiler(module):
    """needle evaluation and training take a device name from perf.hardware, not the profiler."""
    graph = _graph("yoco_core")

    def reach(m, seen):
        for n in graph.get(m, ()):
            if n in graph and n not in seen:
                seen.add(n)
                reach(n, seen)
        return seen

    loaded = reach(module, set())
    assert not {"yoco_core.perf.runners", "yoco_core.perf.sweep", "yoco_core.perf.analytic"} & loaded, loaded


def test_reading_results_loads_no_torch():
    """``yoco report`` reads CSVs (schemas, the dtype spelling table) without torch or the model:
    importing yoco_core loads nothing until a name is used."""
    import subprocess
    import sys

    code = ("import sys, yoco_cli.main, yoco_cli.schemas, yoco_cli.reporting, yoco_cli.plots, yoco_core.dtypes; "
            "from yoco_cli.schemas import NEEDLE; NEEDLE.key_of({'dtype': 'bfloat16'}); "
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'yoco_core.model'))); "
            "print(loaded); sys.exit(1 if loaded else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_package_names_resolve():
    import yoco_core

    for name in yoco_core.__all__:
        assert getattr(yoco_core, name) is not None, name


def test_the_cli_starts_without_pandas_matplotlib_or_torch():
    """``yoco``'s start (every command's) imports none of pandas, matplotlib or torch: they load when
    a command needs them (a CSV read, a figure, a model). They were 0.9 s of the 1.1 s it took to
    import the CLI on the 2-core CPU (pandas through schemas, matplotlib through report), paid before
    a first prompt."""
    import subprocess
    import sys

    code = ("import sys, yoco_cli.main; "
            "print(','.join(m for m in ('pandas', 'matplotlib', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_loading_a_shipped_model_does_not_import_torch_dynamo():
    """Building on the meta device and loading a checkpoint imports no ``torch._dynamo`` (1 s on the
    2-core CPU, more on a first GPU run): nn.Embedding's own normal_ init on meta ran through
    ``torch._refs`` and imported it, and so did ``torch.nn.attention.bias`` at our attention's import."""
    import subprocess
    import sys

    code = ("import sys; from yoco_core import load_model; m = load_model('yoco-tiny'); "
            "import yoco_core.kernels.attention; print('torch._dynamo' in sys.modules, 'sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"        # nor sympy (meta tensors' empty_like: torch._refs)
