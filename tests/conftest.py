import pytest
import torch

from yoco_core import build_model, get_config

# Small shapes of every architecture, float32, weights drawn large enough (std 0.2) that the
# logits are far from uniform: a wrong cache or mask shows up as a large difference.
SMALL = dict(dim=64, n_heads=4, n_kv_heads=2, ffn_dim=128, n_layers=4)
ARCHS = {
    "yoco-gret": get_config("yoco-tiny").replace(cross_rope=True, cross_logn=0, **SMALL),
    "yoco-swa": get_config("yoco-swa-tiny").replace(window=16, cross_rope=True, cross_logn=0, **SMALL),
    "transformer": get_config("transformer-tiny").replace(**SMALL),
    # NoPE cross-decoder with log-length query scaling (active from 8 keys on, so at test lengths)
    "yoco-nope": get_config("yoco-tiny").replace(cross_rope=False, cross_logn=8, **SMALL),
}


def small_model(kind: str, seed: int = 0, **overrides):
    cfg = ARCHS[kind].replace(**overrides)
    model = build_model(cfg, seed=seed)
    model.init_weights(std=0.2, generator=torch.Generator().manual_seed(seed))
    return model


@pytest.fixture(params=list(ARCHS))
def arch(request):
    return request.param
