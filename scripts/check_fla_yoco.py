"""Check the FLA YOCO loader against flash-linear-attention itself (run where ``fla`` imports).

Builds tiny random ``fla.models.YOCOForCausalLM`` models (gated-retention and, when flash-attn is
installed, SWA self-decoders; untied and tied heads), saves each with ``save_pretrained``, loads
it through ``load_model("hf:DIR")`` and compares the logits of one forward in float32. Exits 1 if
any differ by more than the tolerance; prints one line per case.

    python scripts/check_fla_yoco.py [--device cuda] [--tol 2e-3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile

import torch


def fla_cases():
    base = dict(hidden_size=128, num_hidden_layers=4, num_self_decoder_layers=2, vocab_size=320,
                hidden_ratio=2, max_position_embeddings=512, fuse_norm=False, fuse_swiglu=False,
                fuse_cross_entropy=False, norm_eps=1e-6)
    gret = dict(type="gated_retention", num_heads=2)
    cross = dict(num_heads=4, num_kv_heads=2)
    yield "gret", dict(base, self_decoder_attn=gret, cross_decoder_attn=cross)
    yield "gret-tied", dict(base, self_decoder_attn=gret, cross_decoder_attn=cross, tie_word_embeddings=True)
    yield "gret-yoco-angles", dict(base, self_decoder_attn=dict(gret, rope_inv_freq="yoco"),
                                   cross_decoder_attn=dict(cross, rope_inv_freq="yoco"))
    yield "swa", dict(base, self_decoder_attn=dict(type="swa", num_heads=4, window_size=16), cross_decoder_attn=cross)


def compare(name: str, cfg_kwargs: dict, device: str, tol: float, seq: int = 100) -> tuple[bool, str]:
    from fla.models import YOCOConfig, YOCOForCausalLM

    from yoco_core import CheckpointError, load_model     # registers the hf: loader

    torch.manual_seed(0)
    try:
        ref = YOCOForCausalLM(YOCOConfig(**cfg_kwargs)).to(device).float().eval()
    except Exception as e:  # e.g. SWA without flash-attn
        return True, f"{name}: skipped ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    with torch.no_grad():
        for p in ref.parameters():           # larger weights than the init: differences show
            p.normal_(0, 0.1)
    folder = tempfile.mkdtemp()
    ref.save_pretrained(folder, safe_serialization=True)
    try:
        ours = load_model("hf:" + folder, device=device, dtype=torch.float32)
    except CheckpointError as e:
        return False, f"{name}: refused: {e}"
    ids = torch.randint(0, 320, (2, seq), device=device)
    with torch.no_grad():
        a = ref(input_ids=ids, use_cache=False).logits.float()
        b = ours(ids)
    err = (a - b).abs().max().item()
    ok = err <= tol * max(1.0, a.abs().max().item())
    return ok, f"{name}: max |diff| {err:.3e} (logits up to {a.abs().max().item():.2f}) {'ok' if ok else 'MISMATCH'}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tol", type=float, default=2e-3)
    args = ap.parse_args(argv)
    try:
        import fla  # noqa: F401
    except ImportError as e:
        print(f"fla is not importable here: {e}")
        return 2
    failed = 0
    for name, kw in fla_cases():
        ok, line = compare(name, kw, args.device, args.tol)
        print(line)
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
