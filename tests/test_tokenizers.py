"""Tokenizers as the users' model folders define them: loading (tokenizer.json, AutoTokenizer,
tiktoken rank files, --tokenizer PATH), BOS / EOS as the tokenizer and generation_config.json say,
needle prompts that are the tokenizer's own tokenization of one text, chat templates (needle and
the lm-eval wrapper), the passkey task sized in the model's tokens.

Every tokenizer is built on the fly: a byte-level BPE, a Llama-2-style one (normalizer
``Prepend("▁")`` + ``Replace(" ", "▁")``, no pre-tokenizer), a tiktoken rank file."""
import json
import random
import string
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

from conftest import small_model  # noqa: E402
from yoco_core import CheckpointError, ByteTokenizer, generate, load_model, save_model  # noqa: E402
from yoco_core import needle as nd  # noqa: E402
from yoco_core import tokenizer as tk  # noqa: E402

ROOT = Path(__file__).parents[1]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _corpus() -> list[str]:
    rng = random.Random(0)
    g = nd.grammar()
    lines = [nd.INTRO, *nd.NOISE, nd.QUESTION.format(key="shy-otter"), nd.NEEDLE.format(key="shy-otter", value="4819302"),
             string.printable, " ".join(g["key_adjectives"] + g["key_nouns"])]
    return (lines + [nd.prose_sentence(rng) for _ in range(300)]) * 3


def _bpe(folder: Path, bos: bool = True) -> Path:
    """Byte-level BPE (GPT-2 style); ``bos``: a post-processor that adds ``<s>``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=600, show_progress=False, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}))
    return folder


def _sentencepiece_style(folder: Path) -> Path:
    """Llama-2's tokenizer.json layout: Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, a
    BOS post-processor (trained within words, as sentencepiece merges)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=900, show_progress=False, special_tokens=["<unk>", "<s>", "</s>"]))
    data = json.loads(tok.to_str())
    data["pre_tokenizer"] = None
    tok = Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return folder


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> printable character table, inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _rank_file(bpe_folder: Path, file: Path) -> Path:
    """A tiktoken rank file (base64 token, rank) made of the BPE's vocabulary, in merge order."""
    import base64

    vocab = json.loads((bpe_folder / "tokenizer.json").read_text())["model"]["vocab"]
    table = _byte_decoder()
    lines, rank = [], 0
    for token, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        raw = bytes(table[c] for c in token)
        lines.append(f"{base64.b64encode(raw).decode()} {rank}")
        rank += 1
    file.write_text("\n".join(lines) + "\n")
    return file


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("toks")
    out = {"bpe": _bpe(root / "bpe"), "sp": _sentencepiece_style(root / "sp")}
    if _has_tiktoken():
        out["tiktoken"] = _rank_file(out["bpe"], root / "small.tiktoken")
    return out


def _has_tiktoken() -> bool:
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return False
    return True


def _tokenizer(name, folders):
    if name == "bytes":
        return ByteTokenizer()
    if name not in folders:
        pytest.skip("tiktoken is not installed")
    return tk.load_tokenizer(folders[name])


# -- needle prompts -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bytes", "bpe", "sp", "tiktoken"])
@pytest.mark.parametrize("hay", ["noise", "text"])
def test_prompt_is_the_tokenizers_own_tokenization_of_one_text(folders, name, hay):
    tok = _tokenizer(name, folders)
    haystack = nd.make_haystack(hay, tok)
    for ctx in (700, 1500, 6000):
        for depth in (0.0, 0.25, 0.5, 0.77, 1.0):
            for task, n in (("single", 1), ("multi-key", 4)):
                s = nd.build_sample(tok, ctx, depth, task, n, rng=random.Random(f"{ctx}{depth}"), haystack=haystack)
                assert len(s.prompt_ids) == ctx
                assert s.prompt_ids == tok.encode(s.prompt_text, add_special_tokens=True)
                text = s.prompt_text
                assert text.startswith(nd.INTRO) and text.endswith(nd.QUESTION.format(key=s.keys[0]))
                assert text.count("  ") <= 1            # at most where the filler is cut, never per piece
                order = sorted(range(n), key=lambda j: s.needle_positions[j])
                before = 0
                for j in order:
                    pos, length = s.needle_positions[j], s.needle_lengths[j]
                    want = nd.NEEDLE.format(key=s.keys[j], value=s.values[j])
                    assert tok.decode(s.prompt_ids[pos:pos + length]).strip() == want
                    offset = pos - s.haystack_start - before   # haystack tokens before this needle
                    before += length
                    d = nd.needle_depths(depth, n)[j]
                    assert abs(offset - d * s.haystack_tokens) <= nd.snap_tolerance(s.haystack_tokens), (j, offset)
                    if j == 0 and depth in (0.0, 1.0):
                        assert offset == round(depth * s.haystack_tokens)


def test_sentencepiece_style_pieces_alone_are_not_the_text(folders):
    """Why the prompt is tokenized as one text: encoded alone, a piece of a Llama-2-style
    tokenizer gets the normalizer's extra "▁" (a double space once decoded together)."""
    tok = tk.load_tokenizer(folders["sp"])
    alone = tok.encode(" The grass is green.") + tok.encode(" The sky is blue.")
    whole = tok.encode(" The grass is green. The sky is blue.")
    assert alone != whole and "  " in tok.decode(alone) and "  " not in tok.decode(whole)


def test_bos_is_what_the_tokenizer_adds(folders, tmp_path):
    with_bos = tk.load_tokenizer(folders["bpe"])
    without = tk.load_tokenizer(_bpe(tmp_path / "plain", bos=False))
    assert with_bos.adds_bos and not without.adds_bos and ByteTokenizer().adds_bos
    assert nd.build_sample(with_bos, 500, 0.5).prompt_ids[0] == with_bos.bos_id
    assert nd.build_sample(without, 500, 0.5).prompt_ids[0] != without.bos_id
    # tokenizer_config.json's add_bos_token wins over the post-processor, as in transformers
    off = tmp_path / "off"
    _bpe(off)
    (off / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False}))
    assert not tk.load_tokenizer(off).adds_bos
    assert tk.load_tokenizer(off).encode("hi", add_special_tokens=True) == tk.load_tokenizer(off).encode("hi")


# -- loading --------------------------------------------------------------------------------------
def _checkpoint(tmp_path, tokenizer_folder=None, vocab=1000, name="m"):
    model = small_model("yoco-gret", vocab_size=vocab, n_layers=2)
    if tokenizer_folder is not None:
        model.tokenizer = tk.load_tokenizer(tokenizer_folder)
    return save_model(model, tmp_path / name)


def test_a_folder_without_a_usable_tokenizer_is_one_line_never_bytes(folders, tmp_path):
    folder = _checkpoint(tmp_path, folders["bpe"])
    assert isinstance(load_model(str(folder)).tokenizer, tk.HFTokenizer)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"^no usable tokenizer in .*--tokenizer PATH") as e:
        load_model(str(folder))                       # its tokenizer_config.json alone: AutoTokenizer fails
    assert "\n" not in str(e.value)
    (folder / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"^no tokenizer in .*--tokenizer PATH") as e:
        load_model(str(folder))
    assert "\n" not in str(e.value)
    (folder / "tokenizer.model").write_bytes(b"\x00 not a sentencepiece model")   # unreadable: refused
    with pytest.raises(CheckpointError) as e:
        load_model(str(folder))
    assert "\n" not in str(e.value) and "tokenizer" in str(e.value)
    assert isinstance(load_model(str(folder), tokenizer="bytes").tokenizer, ByteTokenizer)   # chosen, not a fallback
    assert isinstance(load_model(str(folder), tokenizer=folders["bpe"] / "tokenizer.json").tokenizer, tk.HFTokenizer)
    with pytest.raises(CheckpointError, match="neither 'bytes' nor an existing"):
        load_model(str(folder), tokenizer=tmp_path / "nope")


def test_a_tokenizer_larger_than_the_embedding_is_refused_at_load(folders, tmp_path):
    folder = _checkpoint(tmp_path, vocab=320)
    with pytest.raises(CheckpointError, match="the tokenizer has 600 ids, the model's embedding only 320") as e:
        load_model(str(folder), tokenizer=folders["bpe"])
    assert "\n" not in str(e.value)


def test_the_cli_refuses_a_folder_without_tokenizer_with_one_line(folders, tmp_path, capsys):
    from yoco_cli.main import main

    folder = _checkpoint(tmp_path, folders["bpe"])
    (folder / "tokenizer.json").unlink()
    assert main(["needle", "--model", str(folder), "--device", "cpu", "--ctx", "512", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no usable tokenizer" in err and "--tokenizer PATH" in err


def test_tiktoken_rank_file(folders, tmp_path, monkeypatch):
    if "tiktoken" not in folders:
        pytest.skip("tiktoken is not installed")
    tok = tk.load_tokenizer(folders["tiktoken"])
    bpe = tk.load_tokenizer(folders["bpe"])
    text = "The grass is green. One of the special magic numbers for shy-otter is: 4819302."
    assert isinstance(tok, tk.TiktokenTokenizer) and tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < len(text.encode())                 # merges, not bytes
    assert tok.encode(text) == bpe.encode(text)                       # the same vocabulary, in ranks
    ckpt = _checkpoint(tmp_path, vocab=1000)
    model = load_model(str(ckpt), tokenizer=folders["tiktoken"])
    assert isinstance(model.tokenizer, tk.TiktokenTokenizer)
    saved = load_model(str(save_model(model, tmp_path / "saved")))                     # the rank file travels
    assert isinstance(saved.tokenizer, tk.TiktokenTokenizer) and saved.tokenizer.encode(text) == tok.encode(text)
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("!!! 0\n")
    with pytest.raises(ValueError, match=r"bad.tiktoken:1: not a tiktoken rank line"):
        tk.load_tokenizer(bad)
    monkeypatch.setitem(sys.modules, "tiktoken", None)               # not installed
    with pytest.raises(ValueError, match="needs the tiktoken package") as e:
        tk.load_tokenizer(folders["tiktoken"])
    assert "\n" not in str(e.value)


def test_a_folder_autotokenizer_reads_without_tokenizer_json(folders, tmp_path):
    """vocab.json + merges.txt (no tokenizer.json): transformers' AutoTokenizer, offline; the
    same ids as the tokenizer.json they came from, and prompts that are its tokenization."""
    pytest.importorskip("transformers")
    bpe = json.loads((folders["bpe"] / "tokenizer.json").read_text())["model"]
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(bpe["vocab"]))
    merges = [" ".join(m) if isinstance(m, list) else m for m in bpe["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<s>", "eos_token": "</s>", "add_prefix_space": False}))
    tok, ref = tk.load_tokenizer(folder), tk.load_tokenizer(folders["bpe"])
    text = " The grass is green. One of the special magic numbers for shy-otter is: 4819302."
    assert isinstance(tok, tk.AutoTokenizerWrapper) and tok.encode(text) == ref.encode(text)
    s = nd.build_sample(tok, 800, 0.5, rng=1)
    assert len(s.prompt_ids) == 800 and s.prompt_ids == tok.encode(s.prompt_text, add_special_tokens=True)
    ckpt = _checkpoint(tmp_path, vocab=1000)
    saved = save_model(load_model(str(ckpt), tokenizer=folder), tmp_path / "saved")    # the files travel
    assert load_model(str(saved)).tokenizer.encode(text) == ref.encode(text)


# -- EOS --------------------------------------------------------------------------------------------
def test_generation_stops_at_every_eos_of_generation_config(folders, tmp_path):
    folder = _checkpoint(tmp_path, folders["bpe"])
    model = load_model(str(folder))
    ids = torch.tensor([model.tokenizer.encode("The grass is", add_special_tokens=True)])
    free = generate(model, ids, 6, stop_at_eos=False)
    first, second = free.tokens[0][0], free.tokens[0][1]
    assert model.tokenizer.eos_ids == (model.tokenizer.eos_id,)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, second]}))
    model = load_model(str(folder))
    assert set(model.tokenizer.eos_ids) == {7, second, model.tokenizer.eos_id}
    stopped = generate(model, ids, 6)
    assert stopped.tokens[0] == [first] and stopped.stopped == [True]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": first}))    # an int
    assert generate(load_model(str(folder)), ids, 6).tokens[0] == []


# -- chat templates ---------------------------------------------------------------------------------
def test_chat_template_sources(folders, tmp_path):
    folder = tmp_path / "chat"
    _bpe(folder)
    tok = tk.load_tokenizer(folder)
    assert tk.chat_template_for(tok, "auto") == (None, "none")
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    tok = tk.load_tokenizer(folder)
    assert tk.chat_template_for(tok, "auto") == (TEMPLATE, "model")
    assert tk.chat_template_for(tok, "none") == (None, "none")
    other = tmp_path / "other.jinja"
    other.write_text("{{ messages[0]['content'] }}")
    assert tk.chat_template_for(tok, str(other)) == ("{{ messages[0]['content'] }}", str(other))
    with pytest.raises(ValueError, match="chat template .*auto, none or a readable jinja file"):
        tk.chat_template_for(tok, str(tmp_path / "missing.jinja"))
    (folder / "chat_template.jinja").unlink()                         # tokenizer_config.json's, named
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": TEMPLATE}]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert tk.load_tokenizer(folder).chat_template == TEMPLATE


@pytest.mark.parametrize("name", ["bpe", "sp"])
def test_needle_prompt_in_a_chat_template(folders, name):
    tok = tk.load_tokenizer(folders[name])
    s = nd.build_sample(tok, 900, 0.5, "single", rng=3, chat_template=TEMPLATE)
    question, _, prefix = nd.QUESTION.format(key=s.keys[0]).partition("? ")
    assert len(s.prompt_ids) == 900
    assert s.prompt_text.startswith("<s><|user|>\n" + nd.INTRO)
    assert s.prompt_text.endswith(question + "?<|end|>\n<|assistant|>\n" + prefix)     # the answer prefix after it
    assert s.prompt_ids == tok.encode(s.prompt_text) and s.prompt_ids.count(tok.bos_id) == 1   # the template's BOS only
    pos, length = s.needle_positions[0], s.needle_lengths[0]
    assert tok.decode(s.prompt_ids[pos:pos + length]).strip() == nd.NEEDLE.format(key=s.keys[0], value=s.values[0])
    assert nd.chat_prompt(tok, "Haystack. Question?", "Answer", None) == "Haystack. Question? Answer"
    assert nd.min_context(tok, "single", chat_template=TEMPLATE) > nd.min_context(tok, "single")
    with pytest.raises(ValueError, match="chat template failed"):
        nd.build_sample(tok, 900, 0.5, chat_template="{% if %}")


# -- lm-eval wrapper --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chat_checkpoint(folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("chatckpt")
    tok_dir = _bpe(root / "tok")
    (tok_dir / "chat_template.jinja").write_text(TEMPLATE)
    return _checkpoint(root, tok_dir, vocab=640)


def test_lm_eval_wrapper_applies_the_chat_template_and_takes_device_twice(chat_checkpoint, caplog):
    pytest.importorskip("lm_eval")
    from yoco_cli.lm_eval_model import YOCOLM

    lm = YOCOLM.create_from_arg_string(f"pretrained={chat_checkpoint},device=cpu",
                                       {"device": "cpu", "batch_size": 1, "max_batch_size": None})
    chat = [{"role": "user", "content": "Which number?"}]
    text = lm.apply_chat_template(chat)
    assert text == "<s><|user|>\nWhich number?<|end|>\n<|assistant|>\n" and lm.chat_template(True) == TEMPLATE
    assert lm.tok_encode(text).count(lm.tok.bos_id) == 1                  # the template's BOS, not a second
    assert lm.tok_encode("plain")[0] == lm.tok.bos_id == lm.prefix_token_id   # as the tokenizer adds it
    assert "/" not in lm.tokenizer_name and "model" in lm.tokenizer_name
    cont = lm.apply_chat_template(chat + [{"role": "assistant", "content": "It is"}], add_generation_prompt=False)
    assert cont.endswith("<|assistant|>\nIt is")                         # continued, not closed
    with caplog.at_level("WARNING"):
        assert len(lm._cut(list(range(lm.max_length + 5)), lm.max_length, "generate_until")) == lm.max_length
    assert lm.truncated == 1 and "first 5 tokens are dropped" in caplog.text
    plain = YOCOLM(pretrained=str(chat_checkpoint), device="cpu", chat_template="none")
    with pytest.raises(ValueError, match="no chat template"):
        plain.apply_chat_template(chat)


def test_apply_chat_template_through_lm_eval(chat_checkpoint):
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from yoco_cli.lm_eval_model import YOCOLM, tasks_dir

    lm = YOCOLM(pretrained=str(chat_checkpoint), device="cpu", max_gen_toks=4)
    tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    res = simple_evaluate(model=lm, tasks=["yoco_passkey"], limit=1, task_manager=tm, bootstrap_iters=0,
                          log_samples=True, apply_chat_template=True)
    prompt = res["samples"]["yoco_passkey"][0]["arguments"]
    prompt = prompt[0][0] if isinstance(prompt[0], (list, tuple)) else prompt["gen_args_0"]["arg_0"]
    assert prompt.startswith("<s><|user|>\n") and "<|assistant|>\n" in prompt


def test_passkey_task_is_sized_in_the_models_tokens(folders):
    sys.path.insert(0, str(ROOT / "tasks" / "yoco_passkey"))
    try:
        import utils as passkey
    finally:
        sys.path.pop(0)
    shipped = passkey.load()["test"]
    assert all(d["tokens"] == len(d["input"].encode()) <= d["length"] for d in shipped)       # bytes
    assert passkey.load(tokenizer=str(tk.BYTE_TOKENIZER_DIR))["test"]["input"] == shipped["input"]
    tok = tk.load_tokenizer(folders["bpe"])
    docs = passkey.load(tokenizer=str(folders["bpe"]))["test"]
    assert len(docs) == len(shipped)
    for d in docs:
        n = len(tok.encode(d["input"], add_special_tokens=True))
        assert n == d["tokens"] <= d["length"] and n > 0.8 * d["length"]
    assert max(docs["tokens"]) > max(len(tok.encode(d["input"])) for d in shipped)     # bytes would be far shorter


def test_the_package_declares_the_lm_eval_entry_point():
    import importlib
    import tomllib

    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lm_eval.models"]
    module, _, attr = eps["yoco"].partition(":")
    pytest.importorskip("lm_eval")
    from yoco_cli.lm_eval_model import YOCOLM

    assert getattr(importlib.import_module(module), attr) is YOCOLM
