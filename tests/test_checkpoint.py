import pytest
import torch

from conftest import small_model
from yoco_core import CheckpointError, load_model, save_model


def test_save_load_round_trips_logits_exactly(tmp_path, arch):
    model = small_model(arch)
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(str(tmp_path / "ckpt"))
    ids = torch.randint(0, 256, (2, 30))
    assert torch.equal(model(ids), loaded(ids))
    assert loaded.config == model.config
    # a path to the weights file works too
    again = load_model(str(tmp_path / "ckpt" / "model.safetensors"))
    assert torch.equal(model(ids), again(ids))


def test_torch_state_dict_loads_with_weights_only(tmp_path):
    model = small_model("yoco-gret")
    save_model(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    ids = torch.randint(0, 256, (1, 20))
    assert torch.equal(load_model(str(tmp_path))(ids), model(ids))


def test_a_pickled_object_is_refused(tmp_path):
    model = small_model("yoco-gret")
    save_model(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"model": model}, tmp_path / "evil.pt")   # arbitrary objects need full unpickling
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_model(str(tmp_path))


def test_missing_corrupt_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="neither a preset"):
        load_model(str(tmp_path / "nope"))
    model = small_model("transformer")
    save_model(model, tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_model(str(tmp_path / "a"))
    save_model(model, tmp_path / "b")
    cfg = (tmp_path / "b" / "config.json").read_text().replace('"dim": 64', '"dim": 96')
    (tmp_path / "b" / "config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match="shape|match"):
        load_model(str(tmp_path / "b"))
    (tmp_path / "b" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="bad config"):
        load_model(str(tmp_path / "b"))
    (tmp_path / "c").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(str(tmp_path / "c"))


def test_presets_load_by_name():
    model = load_model("yoco-tiny")
    assert model.config.name == "yoco-tiny" and model.dtype == torch.float32


def test_a_config_with_impossible_values_is_one_checkpoint_error(tmp_path):
    model = small_model("yoco-gret")
    save_model(model, tmp_path)
    cfg = (tmp_path / "config.json").read_text().replace('"n_kv_heads": 2', '"n_kv_heads": 0')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match="bad config.*n_kv_heads"):
        load_model(str(tmp_path))


def test_loading_in_bf16_equals_loading_then_casting(tmp_path):
    model = small_model("transformer")
    save_model(model, tmp_path)
    direct = load_model(str(tmp_path), dtype=torch.bfloat16)
    assert direct.dtype == torch.bfloat16
    for (k, a), (_, b) in zip(direct.state_dict().items(), model.to(torch.bfloat16).state_dict().items()):
        assert torch.equal(a, b), k


def test_checkpoints_with_separately_named_projections_load(tmp_path, arch):
    """The model holds q | k | v (| gate | decay), gate | up and YOCO's k | v as one matrix each;
    a checkpoint naming them one by one (the shipped weights, every converted format) loads into
    the same model, and a half-complete group is a one-line error, not a silent mix."""
    from safetensors.torch import save_file

    from yoco_core.model import fuse_state_dict, split_state_dict

    model = small_model(arch)
    split = split_state_dict(model, model.state_dict())
    assert not any(k.endswith(("gate_up.weight", "qkv.weight", "attn.proj.weight")) for k in split)
    assert any(k.endswith("mlp.gate_proj.weight") for k in split)
    assert fuse_state_dict(model, split).keys() == model.state_dict().keys()
    save_model(model, tmp_path)
    save_file({k: v.contiguous() for k, v in split.items()}, str(tmp_path / "model.safetensors"))
    ids = torch.randint(0, 256, (2, 30))
    assert torch.equal(load_model(str(tmp_path))(ids), model(ids))
    broken = {k: v for k, v in split.items() if not k.endswith("layers.0.mlp.up_proj.weight")}
    save_file({k: v.contiguous() for k, v in broken.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_model(str(tmp_path))


def test_load_model_attaches_the_tokenizer_and_build_model_none(tmp_path):
    from yoco_core import ByteTokenizer, build_model, get_config

    assert isinstance(load_model("yoco-tiny").tokenizer, ByteTokenizer)          # shipped weights
    assert isinstance(load_model("transformer-3b", device="meta").tokenizer, ByteTokenizer)  # random preset
    assert build_model(get_config("yoco-tiny")).tokenizer is None
    save_model(small_model("yoco-gret"), tmp_path)
    assert isinstance(load_model(str(tmp_path)).tokenizer, ByteTokenizer)


def test_a_model_built_on_meta_reads_no_tokenizer_file(tmp_path, monkeypatch):
    """Building (on meta or not) never touches the files a config's tokenizer names."""
    from yoco_core import build_model, get_config, model_from_state
    from yoco_core import tokenizer as tk

    def refuse(*args, **kw):
        raise AssertionError("a tokenizer file was read")

    for name in ("_special_tokens", "_read_json", "copy_tokenizer_files"):    # the module's own readers
        monkeypatch.setattr(tk, name, refuse)
    monkeypatch.setattr(tk.HFTokenizer, "__init__", refuse)
    for name in ("folder", f"hf:{tmp_path / 'missing'}"):
        cfg = get_config("yoco-tiny").replace(tokenizer=name)
        assert build_model(cfg, device="meta").tokenizer is None
        assert build_model(cfg.replace(dim=64, n_layers=2, ffn_dim=128)).tokenizer is None
    model = small_model("yoco-gret")
    again = model_from_state(model.config.replace(tokenizer="folder"), model.state_dict(), "x", "cpu", torch.float32)
    assert again.tokenizer is None


def test_folder_tokenizer_needs_its_files(tmp_path):
    model = small_model("transformer")
    model.config = model.config.replace(tokenizer="folder")     # names files, holds no tokenizer
    with pytest.raises(CheckpointError, match="holds no tokenizer"):
        save_model(model, tmp_path / "a")
    model.config = model.config.replace(tokenizer="bytes")
    save_model(model, tmp_path / "b")
    cfg = (tmp_path / "b" / "config.json").read_text().replace('"tokenizer": "bytes"', '"tokenizer": "folder"')
    (tmp_path / "b" / "config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match=r"^no tokenizer in .*--tokenizer PATH") as e:
        load_model(str(tmp_path / "b"))             # never the byte tokenizer silently
    assert "\n" not in str(e.value)
    (tmp_path / "b" / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"^cannot read .*tokenizer\.json: ") as e:
        load_model(str(tmp_path / "b"))
    assert "\n" not in str(e.value)
    (tmp_path / "b" / "config.json").write_text(cfg.replace('"folder"', '"sentencepiece"'))
    with pytest.raises(CheckpointError, match="bad config.*tokenizer must be 'bytes' or 'folder'"):
        load_model(str(tmp_path / "b"))


def test_an_old_config_naming_an_absolute_tokenizer_path_still_loads(tmp_path):
    """Configs written before the tokenizer files were copied say "hf:/abs/path": read from that
    path; saving again copies the files and writes "folder"."""
    from yoco_core import HFTokenizer
    from yoco_core.tokenizer import BYTE_TOKENIZER_DIR

    model = small_model("yoco-gret")
    save_model(model, tmp_path / "old")
    cfg = (tmp_path / "old" / "config.json").read_text()
    (tmp_path / "old" / "config.json").write_text(cfg.replace('"tokenizer": "bytes"', f'"tokenizer": "hf:{BYTE_TOKENIZER_DIR}"'))
    old = load_model(str(tmp_path / "old"))
    assert isinstance(old.tokenizer, HFTokenizer) and old.tokenizer.path == BYTE_TOKENIZER_DIR
    save_model(old, tmp_path / "new")
    assert '"tokenizer": "folder"' in (tmp_path / "new" / "config.json").read_text()
    new = load_model(str(tmp_path / "new"))
    assert new.tokenizer.path == tmp_path / "new"
    text = "Héllo wörld 🙂"
    assert new.tokenizer.encode(text, add_bos=True) == old.tokenizer.encode(text, add_bos=True)
    ids = torch.randint(0, 256, (1, 20))
    assert torch.equal(new(ids), model(ids))
