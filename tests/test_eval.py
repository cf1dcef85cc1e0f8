"""`yoco eval` and the lm-eval model class: scoring against direct computations, lm-eval's
simple_evaluate on the local tasks, the CLI (ours and lm-eval's through the wrapper)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from conftest import small_model  # noqa: E402
from yoco_cli import schemas  # noqa: E402
from yoco_cli.lm_eval_model import YOCOLM, tasks_dir  # noqa: E402
from yoco_core import generate, save_model, tokenizer_for  # noqa: E402

# yoco eval in this process: lm-eval's own task index built once (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("lm_eval_index_once")

ROOT = Path(__file__).parents[1]
TEXT = ("The river runs past the old mill and on toward the hills. A light wind moves the tall grass "
        "along the edge of the field. The market opens early and closes when the bread runs out.")


def _lm(kind="yoco-gret", **kw):
    """A YOCOLM without a BOS of its own: the direct computations below put lm-eval's prefix token
    (the same BOS) in front themselves."""
    model = small_model(kind, n_layers=2)
    model.tokenizer = tokenizer_for(model.config)       # build_model attaches none
    return YOCOLM(pretrained=kind, model=model, **{"add_bos_token": False, **kw})


def _direct_rolling(model, tokens, prefix, window):
    """Sum of log p(token) where each token sees at most `window` inputs ending just before it,
    the scheme of lm-eval's disjoint rolling windows, computed window by window."""
    seq = [prefix] + tokens
    total = 0.0
    for start in range(0, len(tokens), window):
        end = min(start + window, len(tokens))
        inp = seq[max(0, end - window): end]
        logp = F.log_softmax(model(torch.tensor([inp])), -1)[0]
        n = end - start
        tgt = torch.tensor(tokens[start:end])
        total += logp[len(inp) - n:].gather(-1, tgt[:, None]).sum().item()
    return total


@pytest.mark.parametrize("kind", ["yoco-gret", "yoco-swa", "transformer"])
def test_rolling_loglikelihood_equals_direct_computation(kind):
    lm = _lm(kind, max_length=48, batch_size=3)
    tokens = lm.tok_encode(TEXT)
    assert len(tokens) > 3 * 48
    got = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (TEXT,), 0)], disable_tqdm=True)[0]
    want = _direct_rolling(lm.model, tokens, lm.prefix_token_id, 48)
    assert abs(got - want) < 1e-3 * abs(want)
    # a full-context score differs: the windows really are limited to max_length
    full = _direct_rolling(lm.model, tokens, lm.prefix_token_id, len(tokens))
    assert abs(full - want) > 1e-3


def test_loglikelihood_batched_equals_one_by_one_and_direct():
    lm1, lm4 = _lm(batch_size=1), _lm(batch_size=4)
    reqs = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(
        [("The sky is", " blue"), ("A", " light wind moves"), ("The market opens early and", " closes"), ("", "Hello")])]
    a, b = lm1.loglikelihood(reqs, disable_tqdm=True), lm4.loglikelihood(reqs, disable_tqdm=True)
    for (x, gx), (y, gy) in zip(a, b):
        assert abs(x - y) < 1e-4 and gx == gy
    ctx, cont = lm1.tok_encode("The sky is"), lm1.tok_encode(" blue")
    logp = F.log_softmax(lm1.model(torch.tensor([ctx + cont])), -1)[0]
    want = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
    assert abs(a[0][0] - want) < 1e-4
    assert a[0][1] == all(logp[len(ctx) - 1 + j].argmax().item() == t for j, t in enumerate(cont))


def test_generate_until_is_greedy_with_stops_and_batching():
    lm1, lm3 = _lm(batch_size=1), _lm(batch_size=3)
    gk = {"until": ["e"], "max_gen_toks": 10}
    reqs = [Instance("generate_until", {}, (c, dict(gk)), i) for i, c in enumerate(["abc", "xyz", "abc", "hello world"])]
    a, b = lm1.generate_until(reqs, disable_tqdm=True), lm3.generate_until(reqs, disable_tqdm=True)
    assert a == b and a[0] == a[2]
    g = generate(lm1.model, torch.tensor([lm1.tok_encode("abc")]), 10, stop_strings=("e",))
    assert a[0] == g.texts[0] and "e" not in a[0]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    save_model(small_model("yoco-gret", n_layers=2), d)
    return d


def test_simple_evaluate_on_local_tasks(tiny_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    folder = tasks_dir()
    assert folder is not None and (folder / "yoco_passkey" / "yoco_passkey.yaml").is_file()
    tm = TaskManager(include_path=str(folder), include_defaults=False)
    lm = YOCOLM(pretrained=str(tiny_dir), device="cpu", batch_size=2)
    res = simple_evaluate(model=lm, tasks=["yoco_passkey", "yoco_kv_choice"], limit=2, task_manager=tm,
                          bootstrap_iters=0, log_samples=True)
    r = res["results"]
    assert 0.0 <= r["yoco_passkey"]["exact_match,none"] <= 1.0
    assert 0.0 <= r["yoco_kv_choice"]["acc,none"] <= 1.0
    assert len(res["samples"]["yoco_passkey"]) == 2 and len(res["samples"]["yoco_kv_choice"]) == 2
    s = res["samples"]["yoco_passkey"][0]
    assert s["doc"]["target"].isdigit() and len(s["doc"]["target"]) == 7
    assert s["exact_match"] == float(s["filtered_resps"][0].strip().rstrip(".") == s["doc"]["target"])


def test_passkey_scoring_is_exact_match():
    sys.path.insert(0, str(ROOT / "tasks" / "yoco_passkey"))
    try:
        import utils as passkey_utils
    finally:
        sys.path.pop(0)
    doc = {"target": "1234567"}
    assert passkey_utils.process_results(doc, [" 1234567."])["exact_match"] == 1.0
    assert passkey_utils.process_results(doc, [" 12345678"])["exact_match"] == 0.0
    assert passkey_utils.process_results(doc, [""])["exact_match"] == 0.0


def _agree(out):
    """eval.csv and the per-(model, task) JSON files hold the same numbers, one row per metric."""
    from yoco_cli.eval import result_file

    df = schemas.EVAL.read(schemas.EVAL.path(out))
    assert not df.duplicated(["model", "task", "chat_template", "metric"]).any()
    files = set((out / "results").rglob("*.json"))
    want = set()
    for (model, task, template), rows in df.groupby(["model", "task", "chat_template"]):
        path = result_file(out, model, task, template)
        want.add(path)
        metrics = json.loads(path.read_text())["results"][task]
        assert {m: metrics[f"{m},none"] for m in rows["metric"]} == dict(zip(rows["metric"], rows["value"]))
        assert json.loads(path.read_text())["config"]["limit"] == rows["limit"].iloc[0]
    assert files == want
    return df


def test_yoco_eval_cli_writes_csv_json_and_rejects_unknown_task(tiny_dir, tmp_path, capsys):
    from yoco_cli.eval import result_file
    from yoco_cli.main import main

    out = tmp_path / "ev"
    rc = main(["eval", "--tasks", "yoco_kv_choice,yoco_paskey", "--model", str(tiny_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    # one line, the closest task first (lm-eval's own index may add more after it)
    (line,) = err.strip().splitlines()
    assert re.fullmatch(r"error: unknown task 'yoco_paskey' \(did you mean yoco_passkey(, [\w-]+)*\?\)", line), line
    base = ["eval", "--model", str(tiny_dir), "--num-fewshot", "1", "--batch-size", "2", "--device", "cpu",
            "--out", str(out)]
    assert main([*base, "--tasks", "yoco_kv_choice,yoco_passkey", "--limit", "1", "--log-samples"]) == 0
    df = _agree(out)
    assert set(df["metric"]) == {"acc", "acc_norm", "exact_match"} and (df["num_fewshot"] == 1).all()
    samples = {t: result_file(out, str(tiny_dir), t).with_name(f"samples_{t}.jsonl")
               for t in ("yoco_kv_choice", "yoco_passkey")}
    assert all(len(p.read_text().splitlines()) == 1 for p in samples.values())
    # a re-run of one task into the same --out replaces that task's rows and file, keeps the other's;
    # the samples of the earlier run of that task go (they would not match), the other's stay
    assert main([*base, "--tasks", "yoco_kv_choice", "--limit", "2"]) == 0
    df = _agree(out)
    assert len(df) == 3 and dict(zip(df["task"], df["limit"])) == {"yoco_kv_choice": 2, "yoco_passkey": 1}
    assert not samples["yoco_kv_choice"].exists() and samples["yoco_passkey"].exists()
    commands = (out / "commands.txt").read_text().splitlines()
    assert [ln.split("\t")[1].split()[:2] for ln in commands] == [["yoco", "eval"]] * 2


def _one_line(capsys, argv, start, after_work=False):
    """Exit 2, no traceback, the error one line starting ``error: START`` (the only stderr line,
    or with ``after_work`` the last one, after the progress output of the work done)."""
    from yoco_cli.main import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    lines = err.splitlines() if not after_work else [ln for ln in err.splitlines() if "error:" in ln]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith(f"error: {start}"), err
    return lines[0]


def test_eval_output_refused_before_any_work(tmp_path, capsys):
    """--out a file, a damaged eval.csv in it, a folder another live run holds: one line each, before
    lm-eval indexes the tasks (the unknown task would be the error otherwise), nothing written."""
    argv = ["eval", "--tasks", "no_such_task", "--device", "cpu", "--out"]
    (tmp_path / "file").write_text("x")
    _one_line(capsys, [*argv, str(tmp_path / "file")], f"--out {tmp_path / 'file'}: exists and is not a folder")
    (tmp_path / "dir" / "x").mkdir(parents=True)
    _one_line(capsys, [*argv, str(tmp_path / "dir" / "x" / "..")], "unknown task")   # a usable folder
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "eval.csv").write_text("task,metric\nx\n")
    _one_line(capsys, [*argv, str(bad)], f"{bad / 'eval.csv'}: not a eval.csv")
    busy = tmp_path / "busy"
    with schemas.lock_results(busy, "yoco eval --tasks other"):          # this live process holds it
        err = _one_line(capsys, ["eval", "--tasks", "yoco_passkey", "--device", "cpu", "--out", str(busy)],
                        f"{busy} is being written by pid {os.getpid()}")
    assert "yoco eval --tasks other" in err and not schemas.EVAL.path(busy).exists()


def _register_failing(prefix, tiny_dir, exc):
    """A loader for ``PREFIX:PATH`` whose model fails with ``exc`` (injected: at load time when
    ``exc`` is a MemoryError, else at its first forward)."""
    from yoco_core import load_model, register_loader

    def load(path, device="cpu", dtype=None):
        if isinstance(exc, MemoryError):
            raise exc
        model = load_model(path, device=device, dtype=dtype)

        def fail(*_):
            raise exc
        model.register_forward_pre_hook(fail)
        return model
    register_loader(prefix, load)
    return f"{prefix}:{tiny_dir}"


@pytest.mark.parametrize("exc,where", [
    (MemoryError(), "loading"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 4294967296 bytes."), "evaluating"),
])
def test_allocation_failure_is_one_line(exc, where, tiny_dir, tmp_path, capsys):
    """``ulimit -v`` and a full RAM surface as MemoryError or the allocator's RuntimeError, while
    loading or running: one line naming the model, exit 2, nothing written."""
    name = _register_failing(f"oom{where}", tiny_dir, exc)
    out = tmp_path / "ev"
    _one_line(capsys, ["eval", "--tasks", "yoco_kv_choice", "--limit", "1", "-m", name, "--device", "cpu",
                       "--out", str(out)], f"{where} {name}: out of memory", after_work=True)
    assert not schemas.EVAL.path(out).exists() and not (out / ".yoco.lock").exists()


def test_lm_eval_cli_through_wrapper(tiny_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "yoco_cli.lm_eval_model", "--model", "yoco", "--model_args",
           f"pretrained={tiny_dir}", "--device", "cpu", "--tasks", "yoco_kv_choice", "--limit", "2",
           "--output_path", str(tmp_path / "out")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "yoco_kv_choice" in p.stdout and "acc" in p.stdout
    files = list((tmp_path / "out").rglob("results*.json"))
    assert files and "yoco_kv_choice" in json.loads(files[0].read_text())["results"]


def test_synthetic_tasks_size_prompts_with_the_model_folders_tokenizer(tmp_path):
    """lm-eval's synthetic tasks get the tokenizer of the model's own folder where it has one (a
    saved converted checkpoint carries its tokenizer.json), else the byte tokenizer."""
    from yoco_cli.lm_eval_model import synthetic_tokenizer_for
    from yoco_core.tokenizer import BYTE_TOKENIZER_DIR

    assert synthetic_tokenizer_for("yoco-tiny") == str(BYTE_TOKENIZER_DIR)
    assert synthetic_tokenizer_for(f"hf:{tmp_path}") == str(BYTE_TOKENIZER_DIR)
    (tmp_path / "tokenizer.json").write_text("{}")
    for name in (f"hf:{tmp_path}", f"unilm:{tmp_path}", str(tmp_path)):
        assert synthetic_tokenizer_for(name) == str(tmp_path)


def test_eval_chat_template_is_applied_and_recorded(tiny_dir, tmp_path):
    """--chat-template PATH reaches lm-eval's --apply_chat_template through the wrapper; eval.csv
    records it, one row set per template."""
    from yoco_cli.main import main

    jinja = tmp_path / "chat.jinja"
    jinja.write_text("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
                     "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    out = tmp_path / "ev"
    base = ["eval", "--model", str(tiny_dir), "--tasks", "yoco_kv_choice", "--limit", "2", "--device", "cpu",
            "--out", str(out)]
    assert main(base) == 0
    assert main(base + ["--chat-template", str(jinja)]) == 0
    df = schemas.EVAL.read(schemas.EVAL.path(out))
    assert set(df["chat_template"]) == {"none", str(jinja)}
    assert len(df[df["chat_template"] == "none"]) == len(df[df["chat_template"] == str(jinja)])
    from yoco_cli.eval import result_file            # one result file per (model, task, template)

    plain, chat = (result_file(out, str(tiny_dir), "yoco_kv_choice", t) for t in ("none", str(jinja)))
    assert plain != chat and plain.is_file() and chat.is_file()
    _agree(out)


def test_gpus_2_and_tp_2_on_the_cpu_write_the_one_process_numbers(tiny_dir, tmp_path):
    """yoco eval --gpus 2: lm-eval deals each task's documents over the two ranks (each sample
    once in the gathered samples), rank 0 writes eval.csv with one process's numbers; --tp 2: the
    model's heads split over two ranks that run every document together, the same numbers
    within float32 rounding."""
    import json

    import pandas as pd

    from conftest import finish, start_yoco
    from yoco_cli.eval import result_file
    from yoco_cli.main import main

    base = ["eval", "--tasks", "yoco_kv_choice,yoco_passkey", "--model", str(tiny_dir), "--limit", "5",
            "--device", "cpu", "--log-samples"]
    # the two runs at once, and the one process here meanwhile: each is mostly its processes'
    # start (imports, lm-eval's task index), which leaves a core idle at times when run alone
    two = start_yoco(*base, "--out", str(tmp_path / "two"), "--gpus", "2")
    tp = start_yoco(*base, "--out", str(tmp_path / "tp"), "--tp", "2")
    try:
        assert main([*base, "--out", str(tmp_path / "one")]) == 0
    finally:
        r, r_tp = finish(two, tp)
    assert r.returncode == 0, r.stderr[-3000:]
    cols = ["task", "metric", "value", "stderr", "model", "num_fewshot", "limit"]
    one, two = (pd.read_csv(tmp_path / d / "eval.csv")[cols] for d in ("one", "two"))
    pd.testing.assert_frame_equal(one, two, check_exact=False, rtol=1e-12)
    for task in ("yoco_kv_choice", "yoco_passkey"):
        lines = result_file(tmp_path / "two", str(tiny_dir), task).with_name(f"samples_{task}.jsonl").read_text()
        assert sorted(json.loads(x)["doc_id"] for x in lines.splitlines()) == [0, 1, 2, 3, 4]
    assert "--gpus 2" in (tmp_path / "two" / "commands.txt").read_text()
    assert r.stdout.count("yoco eval: ") == 1                     # rank 0 prints the table
    assert "documents shared among 2 processes" in r.stderr
    r = r_tp
    assert r.returncode == 0, r.stderr[-3000:]
    tp = pd.read_csv(tmp_path / "tp" / "eval.csv")[cols]
    pd.testing.assert_frame_equal(one, tp, check_exact=False, rtol=1e-5)
    assert "tensor parallel over 2 processes" in r.stderr and r.stdout.count("yoco eval: ") == 1


def _gathers_body(rank, world, device):
    """A rank of a gloo group of four, twice: the model class of the whole world sees its place,
    and its gathers are lm-eval's among all four; then as two tensor-parallel groups of two, whose
    gathers run among the ranks of one place in their groups (0 with 2, 1 with 3)."""
    import torch

    from conftest import small_model
    from yoco_cli import parallel
    from yoco_cli.lm_eval_model import YOCOLM
    from yoco_core.parallel import World
    from yoco_core.tokenizer import ByteTokenizer

    model = small_model("yoco-gret", n_layers=2)
    model.tokenizer = ByteTokenizer()
    bad = []
    for grouped in (False, True):
        if not grouped:
            lm, peers, first = YOCOLM(model=model), list(range(world)), rank == 0
            if (lm.rank, lm.world_size) != (rank, world):
                bad.append(f"rank {rank}: the model says rank {lm.rank} of {lm.world_size}")
        else:
            w = World(rank, world, rank)
            dw, place = parallel.layout(w, 2)
            lm = YOCOLM(model=model, data_parallel=(dw.rank, dw.size, parallel.data_group(w, 2)))
            peers, first = [place, place + 2], dw.rank == 0
        counts = lm.all_gather(torch.tensor(rank)).tolist()
        if counts != peers:
            bad.append(f"rank {rank} (grouped: {grouped}): all_gather gave {counts}")
        got = lm.gather_object({"rank": rank}, dst=0)
        if got != ([{"rank": r} for r in peers] if first else None):
            bad.append(f"rank {rank} (grouped: {grouped}): gather_object gave {got}")
        lm.barrier()
    return bad


def test_the_model_class_serves_lm_evals_collectives_whole_and_in_tensor_parallel_groups():
    """One spawn of four ranks for both (each rank's imports, lm-eval's among them, are most of the time)."""
    from conftest import spawn_ranks

    spawn_ranks(_gathers_body, 4)


def test_fewer_documents_than_processes_is_refused_in_one_line(tiny_dir, tmp_path, capsys):
    from yoco_cli.main import main

    rc = main(["eval", "--tasks", "yoco_kv_choice", "--model", str(tiny_dir), "--limit", "1", "--device", "cpu",
               "--gpus", "2", "--out", str(tmp_path / "ev")])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and line.startswith("error: --limit 1 over 2 processes")
    assert not (tmp_path / "ev").exists()
