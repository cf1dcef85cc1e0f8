"""`yoco train`: the synthetic data, the loss going down, exact resume, the CLI, the shipped weights."""
import csv
import re

import pytest
import torch
from safetensors.torch import load_file

from yoco_cli.main import main
from yoco_core import checkpoint, get_config, load_model
from yoco_core import needle as nd
from yoco_core import synthetic as syn
from yoco_core import train as tr
from yoco_core.tokenizer import ByteTokenizer

# A very small model so that a few steps run in seconds on a shared CPU.
MICRO = dict(dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64)
MICRO_SET = [f"--set={k}={v}" for k, v in MICRO.items()]


def micro_cfg(tmp_path, model="yoco-tiny", **kw):
    base = dict(model=model, overrides=dict(MICRO), steps=4, out=str(tmp_path / "run"), device="cpu",
                lr=1e-2, batch_tokens=256, curriculum=[96, 128], log_every=1, save_every=2)
    base.update(kw)
    return tr.TrainConfig(**base)


# -- data --------------------------------------------------------------------------------------
NEEDLE_RE = re.compile(re.escape(nd.NEEDLE).replace(r"\{key\}", r"(\S+)").replace(r"\{value\}", r"(\d+)"))
ASK_RE = re.compile(re.escape(nd.QUESTION).replace(r"\{key\}", r"(?P<key>\S+)", 1).replace(r"\{key\}", r"(?P=key)")
                    + r" (\d+)\.")


def test_needle_samples_are_the_evaluated_format_with_right_answers():
    tok = ByteTokenizer()
    data = syn.SyntheticData(tok, seed=3, mix={"needle": 1.0})
    batch = data.batch(0, 12, 1024)
    assert batch.ids.shape == (12, 1025) and batch.kind.shape == (12, 1025)
    n_multi = 0
    for ids, kind, task in zip(batch.ids, batch.kind, batch.tasks):
        assert task == "needle"
        text = tok.decode(ids)
        assert ids[0] == tok.bos_id and text.startswith(nd.INTRO)
        needles = dict(NEEDLE_RE.findall(text))
        asked = ASK_RE.findall(text)
        assert needles and len(asked) == len(needles)         # every needle is asked for once
        assert all(needles[k] == v for k, v in asked)          # ... with its own value
        # the answer tokens are exactly the " VALUE." continuations, in the order asked
        assert tok.decode(ids[kind == syn.ANSWER]) == "".join(f" {v}." for _, v in asked)
        assert (kind[ids == tok.pad_id] == syn.IGNORE).all()
        n_multi += len(needles) > 1
    assert 0 < n_multi < 12                                    # both single and multi-key samples


def test_batches_are_a_pure_function_of_seed_and_step():
    tok = ByteTokenizer()
    a = syn.SyntheticData(tok, seed=1).batch(5, 8, 512)
    b = syn.SyntheticData(tok, seed=1).batch(5, 8, 512)
    c = syn.SyntheticData(tok, seed=1).batch(6, 8, 512)
    assert (a.ids == b.ids).all() and (a.kind == b.kind).all() and a.tasks == b.tasks
    assert not (a.ids == c.ids).all()


def test_kv_and_copy_answers_come_from_the_context():
    tok = ByteTokenizer()
    kv = syn.SyntheticData(tok, seed=0, mix={"kv": 1.0}).batch(0, 4, 512)
    for ids, kind in zip(kv.ids, kv.kind):
        text = tok.decode(ids)
        table = dict(re.findall(r"^(\S+): (\d+)$", text, flags=re.M))
        queries = re.findall(r"^(\S+): (\d+)$", text.split("\n", 1)[1], flags=re.M)
        assert table and all(table[k] == v for k, v in queries)
        assert (kind == syn.ANSWER).sum() >= 8
    cp = syn.SyntheticData(tok, seed=0, mix={"copy": 1.0}).batch(0, 4, 300)
    for ids, kind in zip(cp.ids, cp.kind):
        answer = ids[kind == syn.ANSWER]
        head = len(tok.encode(syn.COPY_INTRO, add_bos=True))
        assert len(answer) > 100 and (ids[head:head + len(answer)] == answer).all()


def test_bad_mix_and_overrides_are_one_line_errors():
    with pytest.raises(ValueError, match="bad mix entry"):
        syn.parse_mix("needle=1,bogus=2")
    with pytest.raises(tr.TrainError, match="unknown model setting"):
        tr.parse_overrides(["nonsense=1"])
    with pytest.raises(tr.TrainError, match="cross_rope wants a bool"):
        tr.parse_overrides(["cross_rope=maybe"])
    assert tr.parse_overrides(["cross_rope=false", "dim=64", "rope_theta=5e5"]) == \
        {"cross_rope": False, "dim": 64, "rope_theta": 5e5}


def test_schedule_and_curriculum():
    cfg = tr.TrainConfig(steps=100, lr=1e-3, warmup=10, curriculum=[256, 1024], batch_tokens=4096)
    assert tr.lr_at(cfg, 0) == pytest.approx(1e-4) and tr.lr_at(cfg, 9) == pytest.approx(1e-3)
    assert tr.lr_at(cfg, 99) == pytest.approx(1e-4, rel=0.01)
    assert [tr.length_at(cfg, s) for s in (0, 49, 50, 99)] == [256, 256, 1024, 1024]
    assert tr.batch_size_at(cfg, 0) == 16 and tr.batch_size_at(cfg, 99) == 4


# -- training --------------------------------------------------------------------------------------
def _log(run):
    with (run / tr.LOG_FILE).open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_few_steps_lower_the_loss(tmp_path):
    cfg = micro_cfg(tmp_path, steps=16, curriculum=[128], batch_tokens=512, lr=1e-2, warmup=2, save_every=0)
    result = tr.train(cfg)
    rows = _log(result.out)
    assert len(rows) == 16
    first = sum(float(r["answer_loss"]) for r in rows[:3]) / 3
    last = sum(float(r["answer_loss"]) for r in rows[-3:]) / 3
    assert first > 5.0                                   # ~ln(320) at random init
    assert last < first - 1.0, (first, last)
    assert (result.out / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("arch", ["yoco-tiny", "transformer-tiny"])
def test_resume_is_exact(tmp_path, arch):
    straight = tr.train(micro_cfg(tmp_path / "a", model=arch))
    half = tr.train(micro_cfg(tmp_path / "b", model=arch), stop_at=2)
    assert half.step == 2 and not (half.out / "final").exists()
    with pytest.raises(tr.TrainError, match="already holds checkpoints"):
        tr.train(micro_cfg(tmp_path / "b", model=arch))
    with pytest.raises(tr.TrainError, match="cannot resume"):
        tr.train(micro_cfg(tmp_path / "b", model=arch, lr=5e-3), resume=True)
    resumed = tr.train(micro_cfg(tmp_path / "b", model=arch), resume=True)
    assert resumed.resumed_from == 2 and resumed.step == 4
    for name in ("final/model.safetensors", "step_4/model.safetensors", "step_4/optimizer.safetensors"):
        a, b = load_file(str(straight.out / name)), load_file(str(resumed.out / name))
        assert a.keys() == b.keys() and len(a) > 0
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    la, lb = _log(straight.out), _log(resumed.out)
    assert [r["step"] for r in lb] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


# -- the CLI ---------------------------------------------------------------------------------------
def test_cli_trains_resumes_and_ships(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint, "WEIGHTS_DIR", tmp_path / "weights")
    run = tmp_path / "run"
    args = ["train", "--model", "transformer-tiny", "--steps", "4", "--out", str(run), "--device", "cpu",
            "--batch-tokens", "256", "--curriculum", "96,128", "--log-every", "2", "--save-every", "2", *MICRO_SET]
    assert main(args + ["--stop-at", "2"]) == 0
    assert "stopped: step 2/4" in capsys.readouterr().err
    assert main(args) == 2                                      # checkpoints there, no --resume
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and len(err.strip().splitlines()) == 1
    assert "yoco train" in (run / "commands.txt").read_text()
    state_file = next(run.glob("step_*")) / tr.STATE_FILE
    good = state_file.read_text()
    state_file.write_text(good[: len(good) // 2])              # a damaged checkpoint: one line, exit 2
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "damaged checkpoint" in err and len(err.strip().splitlines()) == 1
    state_file.write_text(good)
    assert main(args + ["--resume", "--ship"]) == 0
    err = capsys.readouterr().err
    assert "done: step 4/4" in err and "shipped" in err
    shipped = tmp_path / "weights" / "transformer-tiny"
    state = load_file(str(shipped / "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    assert (shipped / tr.SUMMARY_FILE).is_file()
    model = load_model("transformer-tiny")                     # now the shipped (micro) weights
    assert model.config.dim == MICRO["dim"]
    final = load_file(str(run / "final" / "model.safetensors"))
    assert torch.equal(model.state_dict()["embed.weight"], final["embed.weight"].bfloat16().float())


@pytest.mark.parametrize("bad, message", [
    (["--set", "nonsense=1"], "unknown model setting"),
    (["--set", "dim=30"], "divisible"),
    (["--curriculum", "4"], "at least 8 tokens"),
    (["--dtype", "fp16"], "fp16"),
    (["--mix", "needle=0"], "weight 0"),
    (["--batch-tokens", "lots"], "bad size"),
    (["--model", "no-such-model"], "neither a preset"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, bad, message):
    code = main(["train", "--steps", "2", "--out", str(tmp_path / "r"), "--device", "cpu", *bad])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


# -- the shipped weights ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,ctxs", [
    ("yoco-tiny", (1024, 4096)),          # measured 100% from 1K to 1M (README)
    ("transformer-tiny", (8192,)),        # its last training length
])
def test_shipped_weights_retrieve_the_needle(name, ctxs):
    shipped = checkpoint.WEIGHTS_DIR / name
    if not (shipped / "model.safetensors").is_file():
        pytest.skip(f"no trained weights shipped in {shipped} yet (yoco train ... --ship)")
    model = load_model(name, device="cpu", dtype=torch.float32)
    assert model.config == get_config(name)      # the preset describes the shipped model
    scores = [nd.run_cell(model, ctx, depth, seed=7).score for ctx in ctxs for depth in (0.0, 0.5, 1.0)]
    assert scores == [1.0] * len(scores), scores


def test_shipped_yoco_tiny_retrieves_past_its_training_length():
    """yoco-tiny was trained up to 8K; at 16K (NoPE cross-decoder with log-length query scaling)
    it still retrieves every needle."""
    if not (checkpoint.WEIGHTS_DIR / "yoco-tiny" / "model.safetensors").is_file():
        pytest.skip("no trained weights shipped yet")
    model = load_model("yoco-tiny", device="cpu", dtype=torch.float32)
    scores = [nd.run_cell(model, 16384, d, seed=11).score for d in (0.1, 0.5, 0.9)]
    assert scores == [1.0] * 3, scores


def test_a_checkpoint_with_overrides_is_built_once_with_the_changed_tokenizer(tmp_path, monkeypatch):
    """--set on a checkpoint: its weights read straight into the changed config (one model built,
    not load_model's then a copy), and --set tokenizer=... is the tokenizer trained with."""
    from yoco_core import HFTokenizer, save_model
    from yoco_core.tokenizer import BYTE_TOKENIZER_DIR

    first = tr.make_model(micro_cfg(tmp_path))
    save_model(first, tmp_path / "ckpt")
    built = []
    from yoco_core import state

    real = state.build_model
    for module in (checkpoint, state):
        monkeypatch.setattr(module, "build_model", lambda *a, **kw: built.append(1) or real(*a, **kw))
    monkeypatch.setattr(tr, "build_model", lambda *a, **kw: built.append(1) or real(*a, **kw))
    cfg = micro_cfg(tmp_path, model=str(tmp_path / "ckpt"), overrides={"tokenizer": f"hf:{BYTE_TOKENIZER_DIR}"})
    model = tr.make_model(cfg)
    assert len(built) == 1 and model.training
    assert isinstance(model.tokenizer, HFTokenizer) and model.tokenizer.path == BYTE_TOKENIZER_DIR
    assert model.config.tokenizer == f"hf:{BYTE_TOKENIZER_DIR}"
    for k, v in first.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    plain = tr.make_model(micro_cfg(tmp_path, model=str(tmp_path / "ckpt"), overrides={}))
    assert isinstance(plain.tokenizer, ByteTokenizer) and plain.config == first.config
    with pytest.raises(tr.TrainError, match=r"ckpt.model.safetensors: .* config wants") as e:
        tr.make_model(micro_cfg(tmp_path, model=str(tmp_path / "ckpt"), overrides={"ffn_dim": 96}))
    assert "\n" not in str(e.value)


def test_gret_check_on_the_cpu_changes_no_backend(tmp_path):
    """Off CUDA (or without fla-core) there is nothing to check: the selector's choice stands."""
    from yoco_core.kernels import backend

    before = backend.chosen("gret")
    yoco = tr.make_model(micro_cfg(tmp_path))
    assert tr.check_gret_backend(yoco, micro_cfg(tmp_path)) == ("gRet backend: PyTorch chunkwise form", None)
    tf = tr.make_model(micro_cfg(tmp_path, model="transformer-tiny"))
    assert tr.check_gret_backend(tf, micro_cfg(tmp_path)) == ("no gated retention in this model", None)
    assert backend.chosen("gret") == before
