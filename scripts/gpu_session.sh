#!/usr/bin/env bash
# One device call: smoke test of the CUDA paths on tiny presets, the 3B profile sweep (YOCO,
# our Transformer, HF Llama, FLA YOCO), FLA-YOCO logits check, decode-kernel benchmark.
# Results under $OUT (profile.csv + commands.txt); logs printed last.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .wheels/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}; mkdir -p "$OUT/p"
Y="python3 -m yoco_cli.main"
GEN=${GEN:-32}
timeout 90 $Y profile --arch yoco,transformer --size tiny --ctx 1k,8k --gen-tokens 8 --device cuda --out /tmp/smoke > "$OUT/smoke.txt" 2>&1
smoke=$?
if [ $smoke -eq 0 ] && ! grep -q ",error," /tmp/smoke/profile.csv; then
  timeout ${PROFILE_S:-380} $Y profile --arch yoco,transformer,hf,fla --size 3b --ctx 1m --gen-tokens $GEN \
      --device cuda --dtype bf16 --out /tmp/p > "$OUT/profile_log.txt" 2>&1
  echo "profile rc=$?"
  cp /tmp/p/profile.csv /tmp/p/commands.txt "$OUT/p/" 2>/dev/null
else
  echo "SMOKE FAILED rc=$smoke"; tail -30 "$OUT/smoke.txt"; cut -c1-400 /tmp/smoke/profile.csv
fi
echo "== fla yoco check"; timeout 45 python3 scripts/check_fla_yoco.py 2>&1 | grep -v -i warn | tail -12
echo "== decode kernel"; timeout 60 python3 scripts/bench_decode_attention.py --no-sweep 2>&1 | grep -v -i warn | tail -22
echo "== profile"; python3 - <<'PY'
import csv
for r in csv.DictReader(open("/tmp/p/profile.csv")):
    print(f"{r['arch']:<11}{r['ctx']:>8} {r['status']:<7} pre {r['prefill_s'][:6]:>6}s dec {r['decode_ms'][:6]:>6}ms "
          f"peak {r['peak_alloc_gb'][:5]:>5}GB share {r['prefill_share'][:4]}/{r['decode_share'][:4]} {r['note'][:60]}")
PY
