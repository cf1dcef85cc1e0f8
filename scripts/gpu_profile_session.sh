#!/usr/bin/env bash
# One device call of the committed GPU profile runs (reports/runs/h100-3b-*, h200-3b-*):
#   1. tests/gpu (pytest): the GPU checks (fused kernels vs references in bf16, cached paths
#      vs the full forward)                                                     -> $OUT/check.txt
#   2. yoco profile --arch yoco,transformer,hf,fla --size 3b --ctx 1m          -> $OUT/p/
#   2b. with SWA_S > 0: yoco profile --arch yoco --self-decoder swa --size 3b --ctx ${SWA_CTX:-1m}  -> $OUT/p/ too
#   3. yoco profile --arch yoco,transformer --size 3b --ctx 256k, --batch 1..64 --decode-only  -> $OUT/b/
#   4. with FIRST_S > 0: scripts/gpu_first_run.py (first use, cold and warm)                 -> $OUT/fr.tar.gz
# A CSV already in runs/gpu/{p,b}/ (carried from a call cut short) is resumed (--resume). The sweeps write
# straight into $OUT, so the rows of a call the device's limit cuts still come back. ARCH and CTX pick the
# profile's archs and contexts (default: yoco,transformer,hf,fla to 1m). Each step's time limit: CHECK_S, PROFILE_S,
# SWA_S, BATCH_S, FIRST_S (0 leaves the step out). COLD=S adds --cold-after S to the profile (cells too long to
# prefill twice). A sweep is stopped by SIGINT (the row in flight is kept) and killed
# 30 s later: a plain SIGTERM would wait for the row in flight, however long.
# Short tables are printed last; only the end of a long log comes back.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .wheels/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}; mkdir -p "$OUT/p" "$OUT/b"
Y="python3 -m yoco_cli.main"
# the sweeps write straight into $OUT: a call cut by the device's own limit still brings its rows back
for d in p b; do [ -f runs/gpu/$d/profile.csv ] && [ ! -f "$OUT/$d/profile.csv" ] && cp runs/gpu/$d/profile.csv "$OUT/$d/"; done
if [ "${CHECK_S:-120}" -gt 0 ]; then
  timeout ${CHECK_S:-120} python3 -m pytest -q -rfEx --tb=short --durations=8 -p no:cacheprovider -p no:warnings tests/gpu > "$OUT/check.txt" 2>&1
fi
if [ "${PROFILE_S:-400}" -gt 0 ]; then
  timeout -k 30 -s INT ${PROFILE_S:-400} $Y profile --arch ${ARCH:-yoco,transformer,hf,fla} --size 3b --ctx ${CTX:-1m} \
      --gen-tokens ${GEN:-32} --device cuda --dtype bf16 --out "$OUT/p" --resume ${COLD:+--cold-after $COLD} \
      > "$OUT/p/log.txt" 2>&1
  echo "profile rc=$?"
fi
if [ "${SWA_S:-0}" -gt 0 ]; then
  timeout -k 30 -s INT ${SWA_S} $Y profile --arch yoco --self-decoder swa --size 3b --ctx ${SWA_CTX:-1m} \
      --gen-tokens ${GEN:-32} --device cuda --dtype bf16 --out "$OUT/p" --resume > "$OUT/p/log-swa.txt" 2>&1
  echo "swa rc=$?"
fi
if [ "${BATCH_S:-0}" -gt 0 ]; then
  timeout -k 30 -s INT ${BATCH_S} $Y profile --arch yoco,transformer --size 3b --ctx 256k, --batch 1,2,4,8,16,32,64 \
      --decode-only --gen-tokens ${GEN:-32} --device cuda --dtype bf16 --out "$OUT/b" --resume > "$OUT/b/log.txt" 2>&1
  echo "batch rc=$?"
fi
if [ "${FIRST_S:-0}" -gt 0 ]; then   # first use (scripts/gpu_first_run.py), bundled: it writes a file per run
  mkdir -p "$OUT/fr"
  OUT="$OUT/fr" BUDGET_S=$((FIRST_S - 15)) RUN_S=${RUN_S:-65} timeout -k 10 ${FIRST_S} python3 scripts/gpu_first_run.py \
      > "$OUT/fr/log.txt" 2>&1
  echo "first-run rc=$?"; cut -c1-240 "$OUT/fr/log.txt" | grep -v "log tail"
  (cd "$OUT" && tar czf fr.tar.gz fr && rm -rf fr)
fi
for d in p b; do   # at most 8 files come back: per folder profile.csv, log.txt and one bundle of the rest
  (cd "$OUT/$d" && rm -f .yoco.lock && ls *.png commands.txt >/dev/null 2>&1 && tar czf extras.tar.gz *.png commands.txt \
     && rm -f *.png commands.txt)
done
tail -3 "$OUT/check.txt" 2>/dev/null
python3 - "$OUT" <<'PY'
import csv, sys
for f in (f"{sys.argv[1]}/p/profile.csv", f"{sys.argv[1]}/b/profile.csv"):
    try:
        rows = list(csv.DictReader(open(f)))
    except OSError:
        print(f, "missing"); continue
    print("==", f)
    for r in rows:
        print(f"{r['arch']:<11}{r['ctx']:>8} b{r['batch']:<3} {r['status']:<7} pre {r['prefill_s'][:6]:>6}s dec {r['decode_ms'][:6]:>6}ms "
              f"{r['decode_tok_s'][:7]:>7}t/s peak {r['peak_alloc_gb'][:5]:>5}GB share {r['prefill_share'][:4]}/{r['decode_share'][:4]} {r['note'][:50]}")
PY
