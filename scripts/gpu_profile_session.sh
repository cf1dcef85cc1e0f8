#!/usr/bin/env bash
# One device call: the committed H100 profile run.
#   1. cuDNN vs flash causal attention at the 3B head shape (agreement at 8K, time at 64K)
#   2. FLA-YOCO logits parity (scripts/check_fla_yoco.py)
#   3. yoco profile --arch yoco,transformer,hf,fla --size 3b --ctx 1m          -> $OUT/p/
#   4. yoco profile --arch yoco,transformer --size 3b --ctx 256k --batch 1..64 --decode-only  -> $OUT/b/
# Short tables are printed last; the two checks' lines are also kept in $OUT (*_check.txt), since
# only the end of a long log comes back.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .wheels/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}; mkdir -p "$OUT/p" "$OUT/b"
Y="python3 -m yoco_cli.main"
rm -rf /tmp/p /tmp/b
echo "== attention backends"; timeout 60 python3 - <<'PY' 2>&1 | grep -v -i warn | tee "$OUT/attention_check.txt"
import torch, torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from yoco_core.kernels.attention import attend
torch.manual_seed(0)
def qkv(T):
    return (torch.randn(1, 24, T, 128, device="cuda", dtype=torch.bfloat16),
            torch.randn(1, 8, T, 128, device="cuda", dtype=torch.bfloat16),
            torch.randn(1, 8, T, 128, device="cuda", dtype=torch.bfloat16))
def run(b, q, k, v):
    with sdpa_kernel([b]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
q, k, v = qkv(8192)
ref = run(SDPBackend.FLASH_ATTENTION, q, k, v).float()
for name, b in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
    try:
        print(f"8K {name} vs flash: max |diff| {(run(b, q, k, v).float() - ref).abs().max().item():.2e}")
    except Exception as e:
        print(f"8K {name}: {type(e).__name__}: {str(e).splitlines()[0][:150]}")
print(f"8K attend() vs flash: max |diff| {(attend(q, k, v).float() - ref).abs().max().item():.2e}")
q, k, v = qkv(65536)
for name, fn in (("flash", lambda: run(SDPBackend.FLASH_ATTENTION, q, k, v)),
                 ("cudnn", lambda: run(SDPBackend.CUDNN_ATTENTION, q, k, v)), ("attend", lambda: attend(q, k, v))):
    try:
        fn(); torch.cuda.synchronize()
        a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); [fn() for _ in range(3)]; e.record(); torch.cuda.synchronize()
        ms = a.elapsed_time(e) / 3
        print(f"64K causal {name}: {ms:.1f} ms, {4 * 64 * 128 * 24 * 65536 ** 2 / 2 / ms / 1e9:.0f} TFLOP/s")
    except Exception as ex:
        print(f"64K {name}: {type(ex).__name__}: {str(ex).splitlines()[0][:150]}")
PY
echo "== fla yoco check"; timeout ${FLA_S:-75} python3 scripts/check_fla_yoco.py 2>&1 | grep -v -i warn | tail -6 | tee "$OUT/fla_check.txt"
timeout ${PROFILE_S:-330} $Y profile --arch yoco,transformer,hf,fla --size 3b --ctx 1m --gen-tokens ${GEN:-32} \
    --device cuda --dtype bf16 --out /tmp/p > "$OUT/p/log.txt" 2>&1
echo "profile rc=$?"
timeout ${BATCH_S:-90} $Y profile --arch yoco,transformer --size 3b --ctx 256k --batch 1,2,4,8,16,32,64 --decode-only \
    --gen-tokens ${GEN:-32} --device cuda --dtype bf16 --out /tmp/b > "$OUT/b/log.txt" 2>&1
echo "batch rc=$?"
cp /tmp/p/profile.csv /tmp/p/commands.txt "$OUT/p/" 2>/dev/null
cp /tmp/b/profile.csv /tmp/b/commands.txt "$OUT/b/" 2>/dev/null
python3 - <<'PY'
import csv
for f in ("/tmp/p/profile.csv", "/tmp/b/profile.csv"):
    try:
        rows = list(csv.DictReader(open(f)))
    except OSError:
        print(f, "missing"); continue
    print("==", f)
    for r in rows:
        print(f"{r['arch']:<11}{r['ctx']:>8} b{r['batch']:<3} {r['status']:<7} pre {r['prefill_s'][:6]:>6}s dec {r['decode_ms'][:6]:>6}ms "
              f"{r['decode_tok_s'][:7]:>7}t/s peak {r['peak_alloc_gb'][:5]:>5}GB share {r['prefill_share'][:4]}/{r['decode_share'][:4]} {r['note'][:50]}")
PY
