"""`yoco report` on tiny schema-conformant sweeps: every figure and table, self-contained HTML
that renders in headless Chromium, and one-line refusals of bad input."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from test_plots import TWO_YOCO, assert_png, two_yoco_rows, write_eval, write_needle, write_profile, write_throughput

from yoco_cli import plots, schemas
from yoco_cli.main import main

H100, H200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"
FIGURES = ["profile_memory.png", "profile_prefill.png", "profile_throughput.png",
           "profile_decode_latency.png", "profile_ratios.png", "needle.png",
           "needle_transformer-3b.png", "eval.png"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two result folders (nested, found recursively): an H100 sweep with all three CSVs and an
    H200 profile of the same cells; the report goes to its own folder."""
    root = tmp_path_factory.mktemp("sweeps")
    h100, h200 = root / "h100", root / "more" / "h200"
    write_profile(h100, devices=(H100,))
    write_needle(h100)
    write_eval(h100)
    write_profile(h200, devices=(H200,), oom_from=16384)
    out = root.parent / (root.name + "_report")
    rc = main(["report", str(root), "--out", str(out)])
    assert rc == 0
    return root, out


def test_report_has_every_figure(built):
    _, out = built
    for name in FIGURES:
        assert_png(out / name)
    md = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in md, name
    assert sorted(p.name for p in out.glob("*.png")) == sorted(FIGURES)


def test_report_tables(built):
    root, out = built
    md = (out / "report.md").read_text()
    for header in ("| YOCO vs | size | batch | context | device | memory saved | prefill speed-up | throughput gain |",
                   "| model | 1k | 4k | 16k | all lengths | trials |",
                   "| task | metric | value | stderr | model |", "| folder | file | rows | device |"):
        assert header in md, header
    # headline ratios recomputed from the CSV: memory saved at 16k on the H100
    prof = schemas.PROFILE.read(root / "h100" / "profile.csv")
    cell = prof[(prof.ctx == 16384) & (prof.status == "ok")].set_index("arch")
    saved = cell.loc["transformer", "peak_alloc_gb"] / cell.loc["yoco", "peak_alloc_gb"]
    speed = cell.loc["transformer", "prefill_s"] / cell.loc["yoco", "prefill_s"]
    gain = cell.loc["yoco", "decode_tok_s"] / cell.loc["transformer", "decode_tok_s"]
    assert f"| transformer | 3b | 1 | 16k | {H100} | {saved:.2f}x | {speed:.2f}x | {gain:.2f}x |" in md
    # YOCO ran where the Transformer did not: said so, per device, side by side (not averaged)
    assert f"| transformer | 3b | 1 | 64k | {H100} | Transformer OOM |" in md
    assert f"| transformer | 3b | 1 | 16k | {H200} | Transformer OOM |" in md
    # needle accuracy per length (transformer misses at 16k except depth 1.0 trial 0: 1/6)
    assert "| transformer-3b | 100% | 100% | 17% | 72.2% | 18 |" in md
    assert "| yoco-3b | 100% | 100% | 100% | 100.0% | 18 |" in md
    # eval rows, stderr left empty where lm-eval gave none
    assert "| hellaswag | acc_norm | 0.55 |  | yoco-3b |" in md
    # device, versions, dates and the commands of each folder
    assert "torch 2.13.0; triton 3.4.0" in md and "2025-01-02T03:04:05Z" in md
    assert "yoco profile --sizes 3b" in md and "yoco needle --ctx 16k" in md and "yoco eval --tasks" in md
    assert md.count("```") == 4          # one command block per folder
    assert "h100" in md and "more/h200" in md


def test_report_html_self_contained(built):
    _, out = built
    page = (out / "report.html").read_text()
    srcs = re.findall(r'\bsrc="([^"]*)"', page)
    assert len(srcs) == len(FIGURES)
    assert all(src.startswith("data:image/png;base64,") for src in srcs)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert embedded == {(out / n).read_bytes() for n in FIGURES}
    assert not re.search(r'\b(href|src)="(?!data:)', page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "<table>" in page and 'class="oom">Transformer OOM' in page


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (.ci/run installs it)")
def test_report_html_renders_in_headless_chromium(built, tmp_path):
    """Open report.html in headless Chromium; a script counts images that failed to decode."""
    _, out = built
    probe = ("<script>window.addEventListener('load',function(){var a=Array.from(document.images);"
             "document.title='IMGCHECK '+a.length+' '+a.filter(function(i){return !i.complete||"
             "i.naturalWidth===0;}).length;});</script>")
    good = tmp_path / "good.html"
    good.write_text((out / "report.html").read_text().replace("</body>", probe + "</body>"))
    bad = tmp_path / "bad.html"      # the probe itself must see a broken image
    bad.write_text(good.read_text().replace("<h1>", '<img src="data:image/png;base64,AAAA"><h1>', 1))

    def render(page):
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
               "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        m = re.search(r"<title>IMGCHECK (\d+) (\d+)</title>", res.stdout)
        assert m, f"no probe result from Chromium (rc {res.returncode}): {res.stderr[-500:]}"
        return int(m.group(1)), int(m.group(2))

    assert render(good) == (len(FIGURES), 0)
    assert render(bad) == (len(FIGURES) + 1, 1)


def test_same_device_in_two_runs_kept_side_by_side(tmp_path):
    """Two runs of the same cells on the same device: both kept, labelled by run, never merged."""
    write_profile(tmp_path / "a", ctxs=(1024, 4096))
    write_profile(tmp_path / "b", ctxs=(1024, 4096))
    from yoco_cli import reporting

    runs = reporting.load_runs([tmp_path], tmp_path / "out")
    df = reporting.combine(runs, schemas.PROFILE)
    assert len(df) == 8
    assert set(df.device) == {f"{H100} (a)", f"{H100} (b)"}
    ratios = plots.ratio_rows(df)
    assert len(ratios) == 4 and ratios.memory_saved.notna().all()


# -- bad input ---------------------------------------------------------------------------------
def _one_line_error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


def _damage(kind):
    def truncate(text):
        lines = text.splitlines()
        return "\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) // 2]]) + "\n"

    def non_numeric(text):
        lines = text.splitlines()
        cells = lines[2].split(",")
        cells[schemas.PROFILE.names.index("prefill_s")] = "fast"
        return "\n".join([*lines[:2], ",".join(cells), *lines[3:]]) + "\n"

    return {
        "truncated": truncate,
        "foreign": lambda text: "name,value\nfoo,1\n",
        "non-numeric": non_numeric,
        "empty": lambda text: "",
        "extra-field": lambda text: text.rstrip("\n") + ",surplus\n",
        "binary": lambda text: "\x00\xff\xfe garbage",
        "infinite": lambda text: text.replace(",1024,", ",inf,", 1),
        "fractional-int": lambda text: text.replace(",1024,", ",1024.5,", 1),
    }[kind]


@pytest.mark.parametrize("kind", ["truncated", "foreign", "non-numeric", "empty", "extra-field", "binary",
                                  "infinite", "fractional-int"])
def test_damaged_csv_refused(tmp_path, capsys, kind):
    good = write_profile(tmp_path / "ok" / "run", ctxs=(1024,))
    bad = write_profile(tmp_path / "ok" / "broken", ctxs=(1024, 2048))
    text = bad.read_text()
    damaged = _damage(kind)(text)
    if kind == "binary":
        bad.write_bytes(b"\x00\xff\xfe\x80garbage")
    else:
        bad.write_text(damaged)
    err = _one_line_error(capsys, ["report", str(tmp_path / "ok"), "--out", str(tmp_path / "rep")])
    assert "broken/profile.csv" in err
    assert not (tmp_path / "rep" / "report.html").exists()
    assert good.exists()


def test_damaged_csv_refused_by_the_command(tmp_path):
    """The installed CLI, end to end: exit code 2 and one line on stderr, no traceback."""
    run = tmp_path / "run"
    schemas.NEEDLE.path(run).parent.mkdir(parents=True)
    schemas.NEEDLE.path(run).write_text("model,score\nyoco,1\n")
    res = subprocess.run([sys.executable, "-m", "yoco_cli.main", "report", str(run), "--out",
                          str(tmp_path / "rep")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a needle.csv" in lines[0] and "missing columns" in lines[0]


def test_missing_or_empty_folder_refused(tmp_path, capsys):
    err = _one_line_error(capsys, ["report", str(tmp_path / "nope")])
    assert "no such folder" in err
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.csv").write_text("a,b\n1,2\n")
    err = _one_line_error(capsys, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert "no profile.csv, needle.csv, eval.csv found" in err
    (tmp_path / "file.txt").write_text("x")
    assert "not a results folder" in _one_line_error(capsys, ["report", str(tmp_path / "file.txt")])


def test_report_of_profile_only_and_rerun_replaces_figures(tmp_path, capsys):
    run = tmp_path / "run"
    write_needle(run, models=("yoco-3b", "transformer-3b"), ctxs=(1024,))
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert (out / "needle_transformer-3b.png").exists()
    schemas.NEEDLE.path(run).unlink()
    write_needle(run, models=("yoco-3b",), ctxs=(1024,))
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["needle.png"]   # stale figure removed
    md = (out / "report.md").read_text()
    assert "## Profile" not in md and "| yoco-3b | 100% | 100.0% | 6 |" in md
    assert len((out / "commands.txt").read_text().splitlines()) == 2
    assert pd.read_csv(schemas.NEEDLE.path(run)).shape[0] == 6


def test_batch_table_finds_each_archs_best_batch_and_yocos_gain():
    from yoco_cli.reporting import batch_table

    def row(arch, batch, tok_s, status="ok"):
        return {"arch": arch, "size": "3b", "ctx": 262144, "batch": batch, "device": H100, "dtype": "bf16",
                "status": status, "decode_tok_s": tok_s, "decode_share": tok_s / 1000}

    df = pd.DataFrame([row("yoco", 1, 100.0), row("yoco", 8, 500.0), row("yoco", 16, 450.0),
                       row("transformer", 1, 50.0), row("transformer", 2, 80.0),
                       row("transformer", 4, float("nan"), status="oom")])
    t = batch_table(df).set_index("arch")
    assert t.loc["yoco", "best tok/s"] == "500" and t.loc["yoco", "at batch"] == "8"
    assert t.loc["yoco", "largest batch run"] == "16"
    assert t.loc["transformer", "at batch"] == "2" and t.loc["transformer", "largest batch run"] == "2"
    assert t.loc["transformer", "YOCO's best over this"] == "6.25x"
    assert batch_table(df[df["batch"] == 1]).empty          # one batch per context: no table


def test_old_dtype_spelling_is_reported_as_one(tmp_path):
    """needle.csv rows written as bfloat16 (before one dtype spelling) and as bf16 are one dtype in
    the report: one accuracy row, not one per spelling."""
    run = tmp_path / "run"
    path = write_needle(run, models=("yoco-3b",), ctxs=(1024,))
    lines = path.read_text().splitlines()
    assert all(",bf16," in line for line in lines[1:])
    path.write_text("\n".join([*lines[:4], *(line.replace(",bf16,", ",bfloat16,") for line in lines[4:])]) + "\n")
    res = main(["report", str(run), "--out", str(tmp_path / "rep")])
    assert res == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| yoco-3b | 100% | 100.0% | 6 |" in md
    assert f"| run | needle.csv | 6 | {H100} | bf16 |" in md


def test_exit_codes_of_commands_come_back_from_main(tmp_path, monkeypatch, capsys):
    """click (standalone_mode=False) returns typer.Exit's code instead of raising it, and turns
    Ctrl-C into Exit(130): main() returns both."""
    import typer

    from yoco_cli import reporting

    write_needle(tmp_path / "run", models=("yoco-3b",), ctxs=(1024,))
    argv = ["report", str(tmp_path / "run"), "--out", str(tmp_path / "rep")]

    def exit_130(*a, **k):
        raise typer.Exit(130)

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    def exit_3(*a, **k):
        raise typer.Exit(3)

    for fn, code in ((exit_130, 130), (ctrl_c, 130), (exit_3, 3)):
        monkeypatch.setattr(reporting, "build", fn)
        assert main(argv) == code
    assert "interrupted" in capsys.readouterr().err


def test_an_old_profile_csv_without_the_mode_column_is_reported(tmp_path):
    """profile.csv files written before the mode column still report (read as full runs)."""
    path = write_profile(tmp_path / "run", ctxs=(1024, 4096))
    lines = path.read_text().splitlines()
    col = lines[0].split(",").index("mode")
    path.write_text("\n".join(",".join(f for i, f in enumerate(line.split(",")) if i != col) for line in lines) + "\n")
    assert "mode" not in path.read_text().splitlines()[0].split(",")
    before = path.read_bytes()
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "rep")]) == 0
    assert "## Profile" in (tmp_path / "rep" / "report.md").read_text()
    assert path.read_bytes() == before                   # report reads, never rewrites


def test_report_shows_the_throughput_protocol_beside_the_paper(tmp_path):
    """The protocol table, its constant setting (device, dtype, tokens generated, steps timed) said
    once in the paragraph instead of a column each."""
    write_throughput(tmp_path / "tp")
    write_profile(tmp_path / "tp" / "full", devices=(H200,))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert ("| size | context | YOCO batch | YOCO tok/s | Transformer batch | "
            "Transformer tok/s | YOCO / Transformer | paper | note |") in md
    assert "| 3b | 32k | 117 | 1,684 | 24 | 695 | 2.42x | 2.72x | decode extrapolated " in md
    assert "| 3b | 512k | 44 | 108 | 2 | 10.8 | 10.00x | 9.56x |" in md
    assert "| 3b | 1m | 26 | 53.8 |  | OOM |  | n/a | Transformer OOM;" in md
    assert ("each model at the largest batch the estimate fits (or the --batch cap)" in md
            and "Every row generated 1024 tokens per sequence, 64 of the decode steps timed" in md)
    assert "batch cap" not in md.split("(or the --batch cap)")[1].split("\n")[0]      # nothing capped
    assert "arXiv:2405.05254, Fig. 6" in md
    assert f"]({plots.THROUGHPUT_FIGURE})" in md
    assert_png(tmp_path / "rep" / plots.THROUGHPUT_FIGURE)
    # the per-batch headline ratios hold the full-mode rows only (throughput batches differ per arch)
    assert f"| transformer | 3b | 1 | 16k | {H200} |" in md and "| transformer | 3b | 117 |" not in md


def test_batch_table_shares_are_of_the_read_bandwidth():
    """The share shown is decode_share where its run measured the read bandwidth, and none for rows
    of runs before read_tbs (theirs was over the copy bandwidth)."""
    from yoco_cli.reporting import batch_table

    def row(arch, batch, share, read):
        return {"arch": arch, "size": "3b", "ctx": 262144, "batch": batch, "device": H200, "dtype": "bf16",
                "status": "ok", "decode_tok_s": 10.0 * batch, "decode_share": share, "read_tbs": read, "mode": "full"}

    df = pd.DataFrame([row("yoco", 1, 0.5, 4.4), row("yoco", 8, 0.93, 4.4),
                       row("transformer", 1, 1.05, float("nan")), row("transformer", 2, 1.02, float("nan"))])
    t = batch_table(df).set_index("arch")
    assert t.loc["yoco", "share of read bandwidth"] == "0.93"
    assert t.loc["transformer", "share of read bandwidth"] == ""
    from yoco_cli.reporting import read_share

    assert read_share({"decode_share": 1.0213, "read_tbs": 4.45}) == "1.02"     # above 1 shows as such


def _md_table(md: str, caption: str) -> list[str]:
    """The table of a report.md under the caption that starts ``caption``: its header line, then its rows."""
    start = md.index(f"*{caption}")
    lines = md[start:md.index("\n\n", md.index("| ", start))].splitlines()
    return [lines[2], *lines[4:]]


def _protocol_table(md: str) -> list[str]:
    """The throughput table of a report.md: its header line, then its rows."""
    return _md_table(md, "Throughput protocol")


def test_a_capped_throughput_batch_is_not_reported_as_the_protocol(tmp_path):
    """Rows at their --batch cap: the note says which model was capped and the paragraph that
    those rows are not the paper's protocol."""
    write_throughput(tmp_path / "tp", cap=16, rows=(
        ("yoco", 32768, 16, "ok", 400.0), ("transformer", 32768, 16, "ok", 300.0),
        ("yoco", 524288, 16, "ok", 40.0), ("transformer", 524288, 2, "ok", 10.0)))
    assert main(["report", str(tmp_path / "tp"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "In 2 row(s) a model ran at its batch cap" in md and "not the paper's protocol" in md
    head, *rows = _protocol_table(md)
    assert [r.split(" | ")[-1].split(";")[0] for r in rows] == ["YOCO capped at 16", "YOCO capped at 16"]
    assert "Transformer capped at 16" in rows[0] and "Transformer capped" not in rows[1]


def test_the_throughput_table_says_which_rows_prefilled_one_sequence_at_a_time(tmp_path):
    """--timed-prefills rows: a column where the setting varies, else a sentence in the paragraph."""
    rows = (("yoco", 32768, 117, "ok", 1684.0), ("transformer", 32768, 24, "ok", 695.0))
    write_throughput(tmp_path / "both", rows=rows)
    write_throughput(tmp_path / "both", rows=rows, prefills=2)
    assert main(["report", str(tmp_path / "both"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    head, *body = _protocol_table(md)
    assert "| timed prefills |" in head and sorted(r.split(" | ")[2] for r in body) == ["", "2"]
    assert "prefilled one sequence at a time" not in md.split("*Throughput protocol")[0]
    write_throughput(tmp_path / "one", rows=rows, prefills=2)
    assert main(["report", str(tmp_path / "one"), "--out", str(tmp_path / "rep1")]) == 0
    md = (tmp_path / "rep1" / "report.md").read_text()
    assert "timed prefills" not in _protocol_table(md)[0]
    assert ("Every batch was prefilled one sequence at a time, 2 of those prefills timed (at most the batch's), "
            "the batch's prefill time its size x their median.") in md


def test_the_throughput_table_names_the_yoco_model_when_there_are_several(tmp_path):
    """A gRet and an SWA YOCO at one context: a model column tells their rows apart; and a model that
    did not run is in the same words as the ratio table ("skipped (over memory)")."""
    rows = (("yoco", 32768, 8, "ok", 100.0, "yoco-3b"), ("yoco", 32768, 8, "ok", 120.0, "yoco-swa-3b"),
            ("transformer", 32768, 1, "skipped", None, "transformer-3b"))
    write_throughput(tmp_path / "tp", rows=rows, timed=1024)
    assert main(["report", str(tmp_path / "tp"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    head, *body = _protocol_table(md)
    assert head.startswith("| size | YOCO model | context | YOCO batch | YOCO tok/s |")
    assert [r.split(" | ")[1] for r in body] == ["yoco-3b", "yoco-swa-3b"]
    assert all("| skipped (over memory) |" in r for r in body)
    assert "Every row generated 1024 tokens per sequence." in md
    write_throughput(tmp_path / "one", rows=rows[::2])
    assert main(["report", str(tmp_path / "one"), "--out", str(tmp_path / "rep1")]) == 0
    assert "YOCO model" not in (tmp_path / "rep1" / "report.md").read_text()


def test_report_tells_two_yoco_models_of_one_size_apart(tmp_path):
    """profile.csv with a gRet and an SWA YOCO of one size and a Transformer: two headline rows per
    context, each with its own model's ratios and named by it; the cells table names every row's model."""
    for row in two_yoco_rows():
        schemas.PROFILE.append_row(tmp_path / "run", row)
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    head, *rows = _md_table(md, "Headline ratios")
    assert head == ("| YOCO vs | size | YOCO model | batch | context | device | memory saved | prefill speed-up "
                    "| throughput gain |")
    assert rows == [f"| transformer | 3b | {m} | 1 | {c} | {H200} | {x} | {x} | {x} |"
                    for c in ("4k", "64k") for m, x in (("yoco-3b", "4.00x"), ("yoco-swa-3b", "2.00x"))]
    assert "Each YOCO model (column YOCO model) is compared on its own." in md
    head, *rows = _md_table(md, "All profile cells")
    assert head.startswith("| arch | model | size | batch | context |")
    assert [r.split(" | ")[1] for r in rows] == ["transformer-3b"] * 2 + ["yoco-3b"] * 2 + ["yoco-swa-3b"] * 2


def test_one_yoco_model_keeps_the_tables_columns():
    """One model per (arch, size), with or without a model column: no model column in any table."""
    from yoco_cli.reporting import batch_table, profile_table, ratio_table

    df = pd.DataFrame(two_yoco_rows(TWO_YOCO[::2]))
    for frame in (df, df.drop(columns=["model"])):
        assert list(ratio_table(frame).columns) == ["YOCO vs", "size", "batch", "context", "device", "memory saved",
                                                    "prefill speed-up", "throughput gain"]
        assert list(profile_table(frame.assign(note="", throughput_tok_s=float("nan"), cache_gb=1.0)).columns) == [
            "arch", "size", "batch", "context", "device", "status", "prefill (s)", "decode (ms/step)",
            "throughput (tok/s)", "peak mem (GB)", "cache (GB)"]
        assert list(batch_table(pd.concat([frame, frame.assign(batch=2)])).columns) == [
            "arch", "size", "context", "best tok/s", "at batch", "share of read bandwidth", "largest batch run",
            "YOCO's best over this"]


def test_batch_table_keeps_each_yoco_models_best_batch():
    """Two YOCO models at several batches: a row each (named by the model), and the baseline's row
    gives each one's best over its best, never the best of their rows pooled."""
    from yoco_cli.reporting import batch_table

    def row(model, batch, tok_s):
        return {"arch": model.split("-")[0], "model": model, "size": "3b", "ctx": 262144, "batch": batch,
                "device": H200, "dtype": "bf16", "status": "ok", "decode_tok_s": tok_s, "decode_share": 0.5,
                "read_tbs": 4.4, "mode": "full"}

    df = pd.DataFrame([row("yoco-3b", 1, 100.0), row("yoco-3b", 8, 500.0), row("yoco-swa-3b", 1, 90.0),
                       row("yoco-swa-3b", 8, 400.0), row("yoco-swa-3b", 16, 300.0),
                       row("transformer-3b", 1, 50.0), row("transformer-3b", 2, 80.0)])
    t = batch_table(df)
    assert list(t.columns[:3]) == ["arch", "model", "size"]
    t = t.set_index("model")
    assert list(t.index) == ["transformer-3b", "yoco-3b", "yoco-swa-3b"]
    assert (t.loc["yoco-3b", "best tok/s"], t.loc["yoco-3b", "at batch"], t.loc["yoco-3b", "largest batch run"]) == (
        "500", "8", "8")
    assert (t.loc["yoco-swa-3b", "best tok/s"], t.loc["yoco-swa-3b", "at batch"],
            t.loc["yoco-swa-3b", "largest batch run"]) == ("400", "8", "16")
    assert t.loc["transformer-3b", "YOCO's best over this"] == "yoco-3b 6.25x; yoco-swa-3b 5.00x"
