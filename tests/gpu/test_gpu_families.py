"""The natively converted Hugging Face families on the GPU: bf16 with the fast kernels (Triton
RMSNorm / RoPE, the split-KV decode kernel with its window, scale and soft-cap, CUDA-graph
decoding) against transformers' own model in float64 on the same weights.

Bound (``tolerance.py``): our chunked prefill and graph-decoded logits are within ``MODEL_K``
times the error of our plain-PyTorch bf16 full forward, and within ``MODEL_K`` times the error of
transformers' own bf16 model (SDPA), both against the float64 reference."""
from __future__ import annotations

import pytest
import torch

from yoco_core import load_model
from yoco_core.graphs import CUDAGraphDecoder, graph_capable
from yoco_core.kernels import backend

from .tolerance import MODEL_K, assert_as_accurate

pytestmark = pytest.mark.gpu
transformers = pytest.importorskip("transformers")

PLAIN = dict(fused="torch", decode="torch", gret="torch")
BASE = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=256, vocab_size=320, max_position_embeddings=512)
SLIDING = ["sliding_attention", "full_attention"] * 2
FAMILIES = {
    "llama-bias": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True)),
    "mistral": ("MistralConfig", dict(sliding_window=16)),
    "qwen2": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=16, max_window_layers=2)),
    "qwen3": ("Qwen3Config", dict(head_dim=64)),
    "phi3-partial": ("Phi3Config", dict(partial_rotary_factor=0.5, pad_token_id=0)),
    "gemma2": ("Gemma2Config", dict(head_dim=32, sliding_window=16, query_pre_attn_scalar=24)),
    "gemma3": ("Gemma3TextConfig", dict(head_dim=32, sliding_window=16, layer_types=SLIDING)),
}


def _folder(tmp_path, name):
    cls, over = FAMILIES[name]
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(getattr(transformers, cls)(**BASE, **over)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.ndim == 1 else 0.05))
    ref.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", list(FAMILIES))
@torch.inference_mode()
def test_family_bf16_fast_paths_against_float64(tmp_path, device, name):
    folder = _folder(tmp_path, name)
    ids = torch.randint(0, 320, (2, 128), generator=torch.Generator().manual_seed(1)).to(device)
    P, n = 96, 32                                       # prefill 96 (chunks of 40), then decode 32
    theirs64 = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64,
                                                                 attn_implementation="eager").to(device).eval()
    ref = theirs64(ids).logits[:, P - 1:P + n - 1]
    del theirs64
    try:
        theirs16 = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                                                     attn_implementation="sdpa")
    except ValueError:                                  # no SDPA for this class (Gemma 2): its eager path
        theirs16 = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                                                     attn_implementation="eager")
    theirs16 = theirs16.to(device).eval()
    hf16 = theirs16(ids).logits[:, P - 1:P + n - 1].float()
    del theirs16
    ours = load_model(f"hf:{folder}", device=device, dtype=torch.bfloat16, tokenizer="bytes")
    with backend.override(**PLAIN):
        plain = ours(ids)[:, P - 1:P + n - 1]
    last, cache = ours.prefill(ids[:, :P], chunk_size=40, reserve=n)
    steps = [last[:, None]]
    if graph_capable(ours):
        step = CUDAGraphDecoder(ours, cache)
        steps += [step(ids[:, P + i:P + i + 1]).clone() for i in range(n - 1)]
    else:                                               # a head size the split-KV kernel does not tile
        steps += [ours.decode(ids[:, P + i:P + i + 1], cache)[0] for i in range(n - 1)]
    fast = torch.cat(steps, dim=1)
    e_fast, e_plain = assert_as_accurate(fast, plain, ref, MODEL_K, what=f"{name} vs our plain bf16")
    e_fast, e_hf = assert_as_accurate(fast, hf16, ref, MODEL_K, what=f"{name} vs transformers bf16")
    print(f"{name}: graph={graph_capable(ours)} rel error {e_fast:.2e} (our plain bf16 {e_plain:.2e}, "
          f"transformers bf16 {e_hf:.2e})")
    del ours
