"""What every Hugging Face decoder family shares: reading a ``config.json`` into our Transformer's
config, refusing what it does not handle, and the LLaMA tensor names most families use.

A family (``hf_llama``, ``hf_phi3``, ``hf_gemma``) is a ``Family``: its ``config_map`` reads the
family's own keys and passes the rest to ``decoder_config``; its ``finish`` picks the key table for
the config (biases and q/k norms exist only where the config says so).

Never silently wrong: ``decoder_config`` is told every key the family reads (``reads``); any other
key of the config that could change the math is refused with one line naming it. A key counts as
inert when it is in ``INERT`` (bookkeeping, token ids, dropout, generation defaults) or its value is
null / false / an empty list or object (a 0 is not inert): what a family does not read, transformers ignores too, but a
user who wrote ``sliding_window: 128`` into a LLaMA config meant it, and ignoring it would be wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..config import ModelConfig
from ..rope import hf_rope
from ..state import CheckpointError
from .remap import Table

# Keys that never change a forward pass in eval mode.
INERT = frozenset("""
    architectures auto_map model_type transformers_version torch_dtype dtype _name_or_path name_or_path
    bos_token_id eos_token_id pad_token_id sep_token_id decoder_start_token_id unk_token_id
    use_cache initializer_range cache_implementation use_return_dict return_dict output_attentions
    output_hidden_states torchscript use_bfloat16 pruned_heads id2label label2id problem_type
    tokenizer_class prefix task_specific_params finetuning_task chunk_size_feed_forward is_decoder
    is_encoder_decoder add_cross_attention tf_legacy_loss _attn_implementation_autoset
    attention_dropout hidden_dropout embd_pdrop resid_pdrop dropout attn_pdrop summary_first_dropout
    pretraining_tp max_length min_length do_sample early_stopping num_beams num_beam_groups
    diversity_penalty temperature top_k top_p typical_p repetition_penalty length_penalty
    no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores
    return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens
    max_position_embeddings original_max_position_embeddings
    rope_theta rope_scaling rope_parameters partial_rotary_factor rope_local_base_freq
""".split())

# what decoder_config itself reads
_COMMON = frozenset("""hidden_size num_attention_heads num_hidden_layers intermediate_size vocab_size
    num_key_value_heads head_dim rms_norm_eps tie_word_embeddings hidden_act""".split())

LLAMA_NAMES = {
    "embed_tokens.weight": "embed.weight",
    "layers.{}.input_layernorm.weight": "layers.{}.attn_norm.weight",
    "layers.{}.self_attn.q_proj.weight": "layers.{}.attn.q_proj.weight",
    "layers.{}.self_attn.k_proj.weight": "layers.{}.attn.k_proj.weight",
    "layers.{}.self_attn.v_proj.weight": "layers.{}.attn.v_proj.weight",
    "layers.{}.self_attn.o_proj.weight": "layers.{}.attn.o_proj.weight",
    "layers.{}.post_attention_layernorm.weight": "layers.{}.mlp_norm.weight",
    "layers.{}.mlp.gate_proj.weight": "layers.{}.mlp.gate_proj.weight",
    "layers.{}.mlp.up_proj.weight": "layers.{}.mlp.up_proj.weight",
    "layers.{}.mlp.down_proj.weight": "layers.{}.mlp.down_proj.weight",
    "norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}


@dataclass(frozen=True)
class Family:
    """One ``model_type`` of ``hf:PATH`` (the interface ``convert.convert_folder`` reads).

    ``read(hf, source, name)`` makes our config; ``defaults`` are the transformers config class's
    own values for keys a ``config.json`` may leave out (transformers fills them in, so do we).
    ``config_map`` applies them and turns any malformed value (a string where a number belongs, a
    null transformers would not accept) into one ``CheckpointError`` line."""
    TAG: str
    read: Callable[[dict, str, str], ModelConfig]
    finish: Callable[[ModelConfig, dict, str], tuple]
    defaults: dict = field(default_factory=dict)
    PREFIXES: tuple[str, ...] = ("model.",)     # XForCausalLM's names; a bare XModel's have none

    def config_map(self, hf: dict, source: str, name: str) -> ModelConfig:
        try:
            return self.read({**self.defaults, **hf}, source, name)
        except CheckpointError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{source}: malformed config value ({type(e).__name__}: {text[:200]})") from None


def uniform_windows(hf: dict) -> list | None:
    """``sliding_window`` on every layer (Mistral, Phi-3), or None when it is null."""
    window = hf.get("sliding_window")
    return [int(window)] * int(hf["num_hidden_layers"]) if window else None


def with_optional(names: dict, cfg: ModelConfig) -> dict:
    """``names`` (ours under ``layers.{}.attn`` / ``layers.{}.mlp``) plus the tensors the config
    says exist: q/k/v and o biases, MLP biases, per-head q/k norms (beside their ``q_proj``)."""
    out, theirs = dict(names), {v: k for k, v in names.items()}

    def bias(ours_weight: str) -> None:
        if ours_weight in theirs:
            out[theirs[ours_weight].replace(".weight", ".bias")] = ours_weight.replace(".weight", ".bias")

    projections = [("attn", p) for p in ("q_proj", "k_proj", "v_proj") if cfg.qkv_bias]
    projections += [("attn", "o_proj")] * cfg.o_bias
    projections += [("mlp", p) for p in ("gate_proj", "up_proj", "down_proj") if cfg.mlp_bias]
    for part, proj in projections:
        bias(f"layers.{{}}.{part}.{proj}.weight")
    if cfg.qk_norm:
        base = theirs["layers.{}.attn.q_proj.weight"].rsplit(".", 2)[0]        # layers.{}.self_attn
        out[f"{base}.q_norm.weight"] = "layers.{}.attn.q_norm.weight"
        out[f"{base}.k_norm.weight"] = "layers.{}.attn.k_norm.weight"
    return out


def check_keys(hf: dict, reads: frozenset, source: str, family: str) -> None:
    """Refuse (one line) the first key that could change the math and that nobody reads."""
    for key, value in hf.items():
        if key in reads or key in _COMMON or key in INERT or value is None or value is False or value in ([], {}):
            continue
        raise CheckpointError(f"{source}: config key {key} ({_short(value)}) is not read for model_type "
                              f"{family!r}; refusing rather than ignoring it")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(hf: dict, key: str, source: str, default=None) -> int:
    """``hf[key]`` as an integer; absent or null: ``default`` (transformers puts the number of
    query heads for a null ``num_key_value_heads``, hidden / heads for a null ``head_dim``)."""
    value = hf.get(key)
    value = default if value is None else value
    if value is None:
        raise CheckpointError(f"{source}: config lacks {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise CheckpointError(f"{source}: config key {key}: expected an integer, not {value!r}")
    return int(value)


def windows_from_layer_types(hf: dict, n_layers: int, window, source: str) -> list | None:
    """Per-layer windows from transformers' ``layer_types`` (``sliding_attention`` /
    ``full_attention``), or None when every layer is full."""
    types = hf.get("layer_types")
    if not types:
        return None
    if not isinstance(types, list) or len(types) != n_layers:
        raise CheckpointError(f"{source}: config key layer_types must list {n_layers} layer types")
    unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
    if unknown:
        raise CheckpointError(f"{source}: config key layer_types: {unknown[0]!r} is not supported")
    if "sliding_attention" in types and not window:
        raise CheckpointError(f"{source}: layer_types has sliding layers but sliding_window is {window!r}")
    return [int(window) if t == "sliding_attention" else 0 for t in types] if "sliding_attention" in types else None


# max_seq_len: transformers runs a model past its max_position_embeddings (the RoPE extrapolates,
# or a dynamic scaling takes over), and long-context research measures exactly that; so do we,
# up to the toolkit's 2M positions.
def decoder_config(hf: dict, source: str, name: str, family: str, reads: frozenset = frozenset(),
                   act_key: str = "hidden_act", acts: tuple = ("silu", "swish"), rope_layer: str | None = None,
                   partial_rotary: bool = False, **fields) -> ModelConfig:
    """Our Transformer config for the common keys of ``hf`` plus the family's ``fields``
    (e.g. ``qkv_bias``, ``layer_windows``; they win over the common reading); every other key
    checked by ``check_keys``. ``rope_layer``: whose RoPE parameters where they are per layer type;
    ``partial_rotary``: the family rotates part of each head where ``partial_rotary_factor`` says
    so (Phi-3); elsewhere transformers ignores that key, so a factor below one is refused."""
    check_keys(hf, reads | {act_key}, source, family)
    act = hf.get(act_key) or "silu"
    if act not in acts:
        raise CheckpointError(f"{source}: {act_key} {act!r} is not supported (supported: {', '.join(acts)})")
    heads, dim = _int(hf, "num_attention_heads", source), _int(hf, "hidden_size", source)
    head_dim = _int(hf, "head_dim", source, default=dim // heads)
    try:
        theta, scaling, rot = hf_rope(hf, source, head_dim, layer_type=rope_layer)
        if rot != head_dim and not partial_rotary:
            raise CheckpointError(f"{source}: config key partial_rotary_factor is not applied by {family!r} in "
                                  "transformers; refusing rather than guessing")
        common = dict(
            name=name, arch="transformer", vocab_size=_int(hf, "vocab_size", source), dim=dim,
            n_layers=_int(hf, "num_hidden_layers", source), n_heads=heads,
            n_kv_heads=_int(hf, "num_key_value_heads", source, default=heads),
            ffn_dim=_int(hf, "intermediate_size", source), rope_theta=theta, rope_scaling=scaling,
            norm_eps=float(hf["rms_norm_eps"] if hf.get("rms_norm_eps") is not None else 1e-6),
            max_seq_len=max(_int(hf, "max_position_embeddings", source, default=1 << 21), 1 << 21),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            head_size=0 if head_dim * heads == dim else head_dim,
            rope_dim=0 if rot == head_dim else rot,
        )
        cfg = ModelConfig(**{**common, **fields})
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        msg = str(e)
        raise CheckpointError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    return cfg


def table_finish(names: dict, plus_one: tuple[str, ...] = ()) -> Callable:
    """A family's ``finish``: the table for the config (``with_optional``), weights need nothing."""
    def finish(cfg: ModelConfig, state: dict, source: str) -> tuple[ModelConfig, Table]:
        return cfg, Table(with_optional(names, cfg), plus_one=plus_one)
    return finish
