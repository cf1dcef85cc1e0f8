"""`yoco needle` and yoco_core.needle: exact prompt length, needle depth, scoring, sweep, resume."""
import random
import re

import pytest

from yoco_cli import schemas
from yoco_cli.main import main
from yoco_core import ByteTokenizer, build_model, get_config, save_model, tokenizer_for
from yoco_core import needle as nd
from yoco_core.generation import Generation, generate as real_generate


class PairTokenizer:
    """A tokenizer whose tokens span two bytes (a stand-in for BPE): piece-wise encoding must
    still give exact lengths."""

    name = "pairs"
    bos_id, eos_id, pad_id = 256, 257, 258

    def encode(self, text, add_bos=False):
        ids = []                                  # pairs of bytes within words, split as GPT-2 splits
        for word in re.findall(r" ?\S+|\s+(?!\S)|\s+", text):
            b = word.encode("utf-8")
            ids += [259 + b[i] * 256 + b[i + 1] if i + 1 < len(b) else b[i] for i in range(0, len(b), 2)]
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            if i >= 259:
                out += bytes(divmod(i - 259, 256))
            elif i < 256:
                out.append(i)
        return out.decode("utf-8", errors="replace")


TOKENIZERS = {"bytes": ByteTokenizer(), "pairs": PairTokenizer()}


def _tol(H):
    return max(nd.SNAP_TOKENS, H // nd.SNAP_FRACTION)


@pytest.mark.parametrize("tok_name", list(TOKENIZERS))
@pytest.mark.parametrize("hay", ["noise", "text"])
def test_prompt_has_the_requested_length_and_the_needle_at_the_requested_depth(tok_name, hay):
    tok = TOKENIZERS[tok_name]
    haystack = nd.make_haystack(hay, tok)
    for ctx in (400, 1000, 3001, 20000):
        for depth in (0.0, 0.1, 0.25, 0.5, 0.77, 1.0):
            s = nd.build_sample(tok, ctx, depth, "single", rng=random.Random(ctx + depth), haystack=haystack)
            assert len(s.prompt_ids) == ctx
            (pos,), (length,) = s.needle_positions, s.needle_lengths
            needle = " " + nd.NEEDLE.format(key=s.keys[0], value=s.values[0])
            assert tok.decode(s.prompt_ids[pos:pos + length]) == needle
            offset = pos - s.haystack_start           # haystack tokens before the needle
            assert abs(offset - depth * s.haystack_tokens) <= _tol(s.haystack_tokens)
            if depth in (0.0, 1.0):
                assert offset == round(depth * s.haystack_tokens)
            text = tok.decode(s.prompt_ids)
            assert text.startswith(nd.INTRO)
            assert text.endswith(nd.QUESTION.format(key=s.keys[0]))
            assert text.count(s.values[0]) == 1
            if tok_name == "bytes" and hay == "noise" and depth < 1:   # short sentences: a boundary
                before = tok.decode(s.prompt_ids[:pos])                 # is always near (at depth 1
                assert before.endswith((".", "\n")), before[-30:]      # the cut haystack ends it)


@pytest.mark.parametrize("task", ["multi-needle", "multi-key", "multi-value"])
def test_multi_tasks_place_spread_needles_and_ask_the_right_question(task):
    tok = ByteTokenizer()
    s = nd.build_sample(tok, 4000, 0.3, task, 4, rng=7, haystack="noise")
    assert len(s.prompt_ids) == 4000 and len(s.values) == 4 and len(set(s.values)) == 4
    text = tok.decode(s.prompt_ids)
    for k, v in zip(s.keys, s.values):
        assert text.count(nd.NEEDLE.format(key=k, value=v)) == 1
    question = text[text.rindex("\n") + 1:]
    if task == "multi-needle":
        assert len(set(s.keys)) == 4 and s.expected == s.values
        assert question.startswith("What are all") and all(k in question for k in s.keys)
        assert ", and " in question
    elif task == "multi-key":
        assert len(set(s.keys)) == 4 and s.expected == s.values[:1]
        assert question.startswith("What is") and s.keys[0] in question
        assert not any(k in question for k in s.keys[1:])
    else:
        assert len(set(s.keys)) == 1 and sorted(s.expected) == sorted(s.values)
        assert s.expected == sorted(s.values, key=text.index)         # in the order of the text
        assert s.answer == " " + nd.join_keys(s.expected) + "."
        assert question.startswith("What are all") and question.count(s.keys[0]) == 2
    # the first needle at the requested depth, the others a quarter of the haystack apart
    H, tol = s.haystack_tokens, _tol(s.haystack_tokens)
    order = sorted(range(4), key=lambda j: s.needle_positions[j])
    offsets, before = {}, 0
    for j in order:
        offsets[j] = s.needle_positions[j] - s.haystack_start - before
        before += s.needle_lengths[j]
    for j, want in enumerate([0.3, 0.55, 0.8, 0.05]):
        assert abs(offsets[j] - want * H) <= tol, (j, offsets[j], want * H)


def test_values_and_keys_are_drawn_from_the_seed():
    tok = ByteTokenizer()
    a = nd.build_sample(tok, 800, 0.5, rng=nd.cell_rng(0, "single", 800, 0.5, 1, 0))
    b = nd.build_sample(tok, 800, 0.5, rng=nd.cell_rng(0, "single", 800, 0.5, 1, 0))
    c = nd.build_sample(tok, 800, 0.5, rng=nd.cell_rng(0, "single", 800, 0.5, 1, 1))
    d = nd.build_sample(tok, 800, 0.5, rng=nd.cell_rng(1, "single", 800, 0.5, 1, 0))
    assert a.prompt_ids == b.prompt_ids and a.expected == b.expected
    assert len({a.values[0], c.values[0], d.values[0]}) == 3
    rng = random.Random(3)
    values = [v for _ in range(50) for v in nd.draw_values(rng, 4)]
    assert all(re.fullmatch(r"[1-9]\d{6}", v) for v in values) and len(set(values)) > 190
    assert all(re.fullmatch(r"[a-z]+-[a-z]+", k) for k in nd.draw_keys(rng, 20))


def test_generated_prose_is_seeded_readable_and_free_of_needle_material():
    tok = ByteTokenizer()
    text = tok.decode(nd.TextHaystack(tok, seed=0).take(30000))
    assert text == tok.decode(nd.TextHaystack(tok, seed=0).take(30000))
    assert text != tok.decode(nd.TextHaystack(tok, seed=1).take(30000))
    assert not re.search(r"\d", text) and "magic" not in text
    words = set(re.findall(r"[a-z]+", text.lower()))
    g = nd.grammar()
    assert not words & (set(g["key_adjectives"]) | set(g["key_nouns"]))
    sentences = re.findall(r"[A-Z][^.]*\.", text)
    assert len(sentences) > 200 and len(set(sentences)) > 0.9 * len(sentences)   # varied
    assert not re.search(r"\b[Aa] [aeiou]", text) and not re.search(r"\b[Aa]n [^aeiou]", text)  # a / an


def test_file_haystack_is_repeated_to_length_and_bad_files_are_clear(tmp_path):
    tok = ByteTokenizer()
    f = tmp_path / "hay.txt"
    f.write_text("First line here. Second one follows! Is this the third?\nYes it is.\n")
    s = nd.build_sample(tok, 2000, 0.5, haystack=nd.make_haystack(str(f), tok))
    text = tok.decode(s.prompt_ids)
    assert len(s.prompt_ids) == 2000 and text.count("Second one follows!") > 10
    for bad, msg in ((tmp_path / "none.txt", "neither noise, text nor an existing file"),
                     (tmp_path / "empty.txt", "is empty"), (tmp_path / "bin.txt", "not UTF-8")):
        if bad.name == "empty.txt":
            bad.write_text("  \n")
        if bad.name == "bin.txt":
            bad.write_bytes(b"\xff\xfe\x00abc")
        with pytest.raises(ValueError, match=msg):
            nd.make_haystack(str(bad), tok)


@pytest.mark.parametrize("task", nd.TASKS)
def test_min_context_is_enough_and_anything_smaller_is_refused(task):
    tok = ByteTokenizer()
    n = 1 if task == "single" else 3
    smallest = nd.min_context(tok, task, n)
    for seed in range(30):
        s = nd.build_sample(tok, smallest, 0.5, task, n, rng=seed)
        assert len(s.prompt_ids) == smallest
    with pytest.raises(ValueError, match="too small"):
        nd.build_sample(tok, 150, 0.5, task, n)
    with pytest.raises(ValueError, match="between 0 and 1"):
        nd.build_sample(tok, 2000, 1.5, task, n)


def test_task_and_needle_count_checks():
    assert nd.check_task("multi-key") == ("multi-key", 4)
    with pytest.raises(ValueError, match="unknown task"):
        nd.check_task("multi")
    with pytest.raises(ValueError, match="one needle"):
        nd.check_task("single", 2)
    with pytest.raises(ValueError, match="needs 2 to"):
        nd.check_task("multi-value", 1)


def test_score_on_crafted_predictions():
    assert nd.score(["4819302"], "4819302.") == 1.0
    assert nd.score(["4819302"], " The number is 4819302, I think") == 1.0
    assert nd.score(["4819302"], "48193021") == 0.0          # inside a longer number
    assert nd.score(["4819302"], "x4819302") == 0.0
    assert nd.score(["4819302"], "481930") == 0.0
    assert nd.score(["4819302"], "") == 0.0
    assert nd.score(["1111111", "2222222"], "1111111 and 3333333") == 0.5
    assert nd.score(["1111111", "2222222", "3333333", "4444444"], "4444444, 2222222, 1111111, and 3333333") == 1.0


def _with_tokenizer(model):
    model.tokenizer = tokenizer_for(model.config)       # build_model attaches none
    return model


def _oracle(wrong_after: int | None = None):
    """A fake generate that reads the prompt and answers from the needle(s) it asks about."""
    calls = []

    def fake(model, ids, max_new_tokens, chunk_size=None, stop_strings=()):
        calls.append(dict(tokens=ids.shape[1], max_new=max_new_tokens, chunk=chunk_size, stops=stop_strings))
        text = model.tokenizer.decode(ids[0].tolist())
        question = text[text.rindex("\n") + 1:]
        asked = re.match(r"What (?:is|are all) the special magic numbers? for (.*?) mentioned", question).group(1)
        keys = re.split(r", and |, | and ", asked)
        found = [v for k in keys for v in re.findall(rf"numbers for {re.escape(k)} is: (\d+)\.", text)]
        if wrong_after is not None:
            found = found[:wrong_after] + ["1000000"] * (len(found) - wrong_after)
        answer = " " + ", ".join(found)
        return Generation([[1]], [answer], ids.shape[1], 0.01, 0.0, 1, [True])

    return fake, calls


@pytest.mark.parametrize("task,n,wrong_after,want", [
    ("single", 1, None, 1.0), ("single", 1, 0, 0.0), ("multi-key", 4, None, 1.0),
    ("multi-needle", 4, None, 1.0), ("multi-needle", 4, 2, 0.5), ("multi-value", 4, 3, 0.75)])
def test_run_cell_scores_what_the_model_answers(monkeypatch, task, n, wrong_after, want):
    fake, calls = _oracle(wrong_after)
    monkeypatch.setattr(nd, "generate", fake)
    model = _with_tokenizer(build_model(get_config("yoco-tiny").replace(dim=32, n_heads=2, n_kv_heads=1,
                                                                        ffn_dim=64, n_layers=2)))
    cell = nd.run_cell(model, 3000, 0.4, task, n, trial=2, seed=5, chunk_size=1024)
    assert cell.score == want
    assert calls == [dict(tokens=3000, max_new=nd.answer_tokens(nd.n_expected(task, n)), chunk=1024,
                          stops=nd.STOP_STRINGS)]
    assert cell.ctx_tokens == cell.ctx_requested == 3000
    assert (cell.task, cell.n_needles, cell.trial, cell.seed) == (task, n, 2, 5)
    assert len(cell.expected) == nd.n_expected(task, n)
    row = schemas.needle_row(cell, model="m", arch="yoco", haystack="noise", device="cpu", dtype="fp32")
    assert list(row) == schemas.NEEDLE.names
    assert row["expected"] == "|".join(cell.expected) and row["score"] == want and row["model"] == "m"


@pytest.mark.parametrize("name", ["yoco-tiny", "yoco-swa-tiny", "transformer-tiny"])
def test_run_cell_with_a_real_model_and_chunked_prefill(name):
    cfg = get_config(name).replace(dim=32, n_heads=2, n_kv_heads=1, ffn_dim=64, n_layers=2, window=64)
    cell = nd.run_cell(_with_tokenizer(build_model(cfg)), 700, 0.5, chunk_size=128)
    assert cell.ctx_tokens == 700 and cell.task == "single" and cell.n_needles == 1
    assert 0.0 <= cell.score <= 1.0 and cell.prefill_seconds > 0


# -- the command ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = get_config("yoco-tiny").replace(name="needle-test", dim=32, n_heads=2, n_kv_heads=1, ffn_dim=64,
                                          n_layers=2, max_seq_len=4096)
    return str(save_model(build_model(cfg), tmp_path_factory.mktemp("ckpt") / "m"))


@pytest.fixture
def counted(monkeypatch):
    calls = []

    def wrapper(*a, **k):
        calls.append(a[1].shape[1])
        return real_generate(*a, **k)

    monkeypatch.setattr(nd, "generate", wrapper)
    return calls


def test_sweep_writes_csv_and_heatmap_and_resume_measures_nothing_twice(ckpt, tmp_path, counted, capsys):
    out = tmp_path / "run"
    base = ["needle", "--model", ckpt, "--device", "cpu", "--out", str(out)]
    assert main(base + ["--ctx", "512,1k", "--n-depths", "3"]) == 0
    df = schemas.NEEDLE.read(out / "needle.csv")
    assert len(df) == 6 and sorted(counted) == [512] * 3 + [1024] * 3
    assert (df["ctx_tokens"] == df["ctx_requested"]).all()
    assert sorted(set(df["depth"])) == [0.0, 0.5, 1.0] and set(df["model"]) == {ckpt}
    assert df["expected"].str.fullmatch(r"\d{7}").all() and df["score"].between(0, 1).all()
    assert set(df["dtype"]) == {"fp32"} and df["device"].str.startswith("cpu").all()
    assert set(df["arch"]) == {"yoco"} and set(df["haystack"]) == {"noise"} and set(df["task"]) == {"single"}
    png = out / "needle_heatmap.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "needle" in (out / "commands.txt").read_text()
    summary = capsys.readouterr().out
    assert "512" in summary and "1k" in summary and "accuracy" in summary and str(png) in summary

    assert main(base + ["--ctx", "512,1k", "--n-depths", "3", "--resume"]) == 0
    assert len(counted) == 6 and len(schemas.NEEDLE.read(out / "needle.csv")) == 6

    # one size alone is a doubling sweep from 1k: 1k is done, only 2k is new
    assert main(base + ["--ctx", "2k", "--depths", "0,0.5,1", "--resume"]) == 0
    df = schemas.NEEDLE.read(out / "needle.csv")
    assert counted[6:] == [2048] * 3 and len(df) == 9
    assert df.duplicated(list(schemas.NEEDLE.key)).sum() == 0

    capsys.readouterr()
    assert main(base + ["--ctx", "512"]) == 2                  # would append duplicates
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err


@pytest.mark.parametrize("args,message", [
    (["--depths", "1.5"], "bad depth 1.5"),
    (["--depths", "0,x"], "not a number"),
    (["--ctx", "12q"], "bad size '12q'"),
    (["--ctx", "1k,8k"], "maximum of 4096"),
    (["--ctx", "4096"], "answer tokens exceeds"),
    (["--ctx", "100"], "too small"),
    (["--task", "bogus"], "unknown task"),
    (["--needles", "3"], "one needle"),
    (["--task", "multi-key", "--needles", "1"], "needs 2 to"),
    (["--trials", "0"], "--trials 0"),
    (["--n-depths", "1"], "--n-depths 1"),
    (["--haystack", "/no/such/file.txt"], "neither noise, text nor an existing file"),
    (["--chunk-size", "-3"], "bad size"),
    (["--model", "no-such-model"], "neither a preset"),
    (["--dtype", "fp8"], "unknown dtype"),
])
def test_bad_input_exits_2_with_one_line_before_any_work(ckpt, tmp_path, counted, capsys, args, message):
    out = tmp_path / "bad"
    argv = ["needle", "--model", ckpt, "--device", "cpu", "--out", str(out)]
    if "--model" in args:
        argv = ["needle", "--device", "cpu", "--out", str(out)]
    assert main(argv + args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert counted == [] and not (out / "needle.csv").exists()


def test_resume_tells_haystacks_apart(tmp_path, monkeypatch):
    """A --resume with another haystack measures its own cells instead of reusing the others'."""
    calls = []

    def fake(model, ids, max_new_tokens, **kw):
        calls.append(1)
        return Generation([[]], [""], ids.shape[1], 0.0, 0.0)

    monkeypatch.setattr(nd, "generate", fake)
    base = ["needle", "--model", "yoco-tiny", "--device", "cpu", "--ctx", "1k", "--depths", "0.5",
            "--out", str(tmp_path)]
    assert main(base) == 0 and len(calls) == 1
    assert main(base + ["--haystack", "text", "--resume"]) == 0 and len(calls) == 2
    assert main(base + ["--haystack", "text", "--resume"]) == 0 and len(calls) == 2
    df = schemas.NEEDLE.read(tmp_path / "needle.csv")
    assert sorted(df["haystack"]) == ["noise", "text"]


def test_resume_reads_the_old_dtype_spelling(ckpt, tmp_path, counted):
    """needle.csv files written before one dtype spelling say float32: --resume still finds their
    cells (the key reads the dtype with dtypes.canonical) and measures nothing twice."""
    out = tmp_path / "old"
    base = ["needle", "--model", ckpt, "--device", "cpu", "--out", str(out), "--ctx", "512", "--depths", "0,1"]
    assert main(base) == 0 and len(counted) == 2
    path = schemas.NEEDLE.path(out)
    text = path.read_text()
    assert text.count(",fp32,") == 2
    path.write_text(text.replace(",fp32,", ",float32,"))
    assert main(base + ["--resume"]) == 0 and len(counted) == 2
    assert len(schemas.NEEDLE.read(path)) == 2 and path.read_text().count(",float32,") == 2
    assert main(base[:-2] + ["--depths", "0,0.5,1", "--resume"]) == 0 and counted[2:] == [512]
    assert path.read_text().count(",float32,") == 2 and path.read_text().count(",fp32,") == 1
    assert set(schemas.NEEDLE.read(path)["dtype"]) == {"fp32"}          # read in one spelling
    assert [p.name for p in out.glob("*.png")] == ["needle_heatmap.png"]   # one heatmap, not one per spelling


def test_ctrl_c_mid_sweep_exits_130_and_keeps_the_rows_measured(ckpt, tmp_path, monkeypatch, capsys):
    calls = []

    def interrupted_second_time(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_generate(*a, **k)

    monkeypatch.setattr(nd, "generate", interrupted_second_time)
    out = tmp_path / "cut"
    argv = ["needle", "--model", ckpt, "--device", "cpu", "--out", str(out), "--ctx", "512", "--depths", "0,0.5,1"]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(schemas.NEEDLE.read(schemas.NEEDLE.path(out))) == 1
    assert main(argv + ["--resume"]) == 0 and len(calls) == 4
    assert len(schemas.NEEDLE.read(schemas.NEEDLE.path(out))) == 3


def test_chat_template_and_tokenizer_options(ckpt, tmp_path, monkeypatch, capsys):
    """--chat-template PATH writes the prompts in it (the answer prefix after the generation
    prompt), needle.csv records it, and a --resume with another template measures its own cells;
    a missing template file or tokenizer is one line."""
    seen = []

    def spy(model, ids, *a, **k):
        seen.append(model.tokenizer.decode(ids[0].tolist()))
        return real_generate(model, ids, *a, **k)

    monkeypatch.setattr(nd, "generate", spy)
    jinja = tmp_path / "chat.jinja"
    jinja.write_text("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}<|assistant|>")
    out = tmp_path / "chat"
    base = ["needle", "--model", ckpt, "--device", "cpu", "--out", str(out), "--ctx", "512", "--depths", "0.5"]
    assert main(base) == 0                                      # auto: the folder has no template
    assert main(base + ["--chat-template", str(jinja), "--resume"]) == 0
    assert seen[0].startswith(nd.INTRO) and seen[1].startswith("<|user|>" + nd.INTRO)
    assert "<|end|><|assistant|>The special magic number for" in seen[1]
    df = schemas.NEEDLE.read(out / "needle.csv")
    assert sorted(df["chat_template"]) == sorted(["none", str(jinja)]) and (df["ctx_tokens"] == 512).all()
    capsys.readouterr()
    for extra, message in ((["--chat-template", str(tmp_path / "no.jinja")], "readable jinja file"),
                           (["--tokenizer", str(tmp_path / "nope")], "neither 'bytes' nor an existing")):
        assert main(base + extra + ["--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert len(seen) == 2


def test_given_keys_and_values_are_the_needles_and_bad_ones_are_refused():
    tok = ByteTokenizer()
    s = nd.build_sample(tok, 1500, 0.5, "multi-key", 2, rng=1, keys=["ab-cd", "ef-gh"], values=["1234567", "7654321"])
    assert s.keys == ["ab-cd", "ef-gh"] and s.expected == ["1234567"]
    assert nd.NEEDLE.format(key="ef-gh", value="7654321") in tok.decode(s.prompt_ids)
    with pytest.raises(ValueError, match="takes 2 values and 2 different keys"):
        nd.build_sample(tok, 1500, 0.5, "multi-key", 2, keys=["ab-cd", "ab-cd"], values=["1234567", "7654321"])
    with pytest.raises(ValueError, match="keys and values together"):
        nd.build_sample(tok, 1500, 0.5, "multi-key", 2, keys=["ab-cd", "ef-gh"])
    with pytest.raises(ValueError, match="takes 3 values and one key"):
        nd.build_sample(tok, 1500, 0.5, "multi-value", 3, keys=["ab-cd", "ef-gh", "ab-cd"], values=["1", "2", "3"])
