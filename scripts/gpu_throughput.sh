#!/usr/bin/env bash
# One device call of the YOCO paper's throughput protocol (arXiv 2405.05254, Fig. 6) on the 3B models:
#   yoco profile --throughput --arch $ARCH --size 3b --ctx $CTX --gen-tokens $GEN [--timed-steps $TIMED] [--timed-prefills $PREFILLS]
#                [--batch $BATCH] [--cold-after $COLD] --device cuda --dtype bf16 --resume  -> $OUT/t/
# Per context the largest batch the memory estimate fits (an out-of-memory is a row, the batch steps
# down), prefilled (with PREFILLS: one sequence at a time, PREFILLS of them timed, the batch's time extrapolated),
# then GEN tokens decoded (TIMED of them timed, the rest extrapolated: see the note
# column). A profile.csv already in $RESUME_DIR (default runs/gpu/t: an earlier call's $OUT/t/profile.csv,
# copied there from what came back and carried) is resumed, so the whole target runs over several calls. The
# sweep gets SIGINT after LIMIT_S seconds (it stops after the row in flight) and SIGKILL 30 s later;
# the rows written before are kept either way. A CUDA error that loses the context stops it with
# one line and rc=1 (its row kept): call again to continue after that cell.
# Carry .wheels (fla-core, for gated retention) and $RESUME_DIR.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .wheels/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}; RESUME_DIR=${RESUME_DIR:-runs/gpu/t}; mkdir -p "$OUT/t"
# straight into $OUT: a call cut by the device's own limit still brings its rows back
[ -f "$RESUME_DIR/profile.csv" ] && [ ! -f "$OUT/t/profile.csv" ] && cp "$RESUME_DIR/profile.csv" "$OUT/t/"
EXTRA=""
[ -n "${TIMED:-}" ] && EXTRA="$EXTRA --timed-steps $TIMED"
[ -n "${PREFILLS:-}" ] && EXTRA="$EXTRA --timed-prefills $PREFILLS"
[ -n "${BATCH:-}" ] && EXTRA="$EXTRA --batch $BATCH"
[ -n "${COLD:-}" ] && EXTRA="$EXTRA --cold-after $COLD"     # a prefill too long to run twice: timed by its warm-up
timeout -k 30 -s INT ${LIMIT_S:-540} python3 -m yoco_cli.main profile --throughput --arch ${ARCH:-yoco,transformer} \
    --size 3b --ctx ${CTX:-32k,64k,128k,256k,512k,1m} --gen-tokens ${GEN:-1024} $EXTRA \
    --device cuda --dtype bf16 --out "$OUT/t" --resume > "$OUT/t/log.txt" 2>&1
echo "throughput rc=$?"
rm -f "$OUT/t/.yoco.lock"
grep -E "^ceilings|interrupted|error" "$OUT/t/log.txt" | head -5
python3 - "$OUT/t/profile.csv" <<'PY'
import csv, sys
try:
    rows = list(csv.DictReader(open(sys.argv[1])))
except OSError:
    raise SystemExit(f"{sys.argv[1]} missing")
for r in rows:
    print(f"{r['arch']:<11}{r['ctx']:>8} b{r['batch']:<4} cap {r.get('batch_cap') or '-':<4} {r['status']:<7} pre {r['prefill_s'][:7]:>7}s "
          f"dec {r['decode_s'][:7]:>7}s {r['decode_ms'][:6]:>6}ms/step {r['throughput_tok_s'][:7]:>7}tok/s "
          f"peak {r['peak_alloc_gb'][:5]:>5}GB est {r['est_gb'][:5]:>5}GB share {r['decode_share'][:4]} {r['note'][:90]}")
PY
