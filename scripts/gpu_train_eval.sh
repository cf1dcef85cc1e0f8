#!/usr/bin/env bash
# issue 16, one device call: train run specs (scripts/train_shipped.py's, ';'-separated in RUNS) with
# tests/gpu beside them, then the shipped-models eval grid (5 depths x 4 trials, 1K-1M, the multi formats
# first) on every run: its final weights under its run name, a cut run's newest checkpoint as <run>-step<N>:
#   RUNS="yoco-tiny lr=2e-3 order=any formats=..." STEPS=4000 TRAIN_S=420 EVAL_S=200 CHECK_S=240 bash scripts/gpu_train_eval.sh
# Back in $OUT: check.txt, train.log, t/sweep.csv, t/runs.tar.gz, t/<run>.safetensors, e/eval.csv, e/needle.tar.gz.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .wheels/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
mkdir -p "$OUT/t" "$OUT/e"
if [ "${CHECK_S:-0}" -gt 0 ]; then
  timeout ${CHECK_S} python3 -m pytest -q -rfEx --tb=short --durations=8 -p no:cacheprovider -p no:warnings tests/gpu \
      > "$OUT/check.txt" 2>&1 &
fi
python3 scripts/train_shipped.py train --runs "$RUNS" --steps ${STEPS:-4000} --budget-s ${TRAIN_S:-420} --no-select \
    --work /tmp/yoco-train --out "$OUT/t" > "$OUT/train.log" 2>&1
echo "train rc=$?"; tail -3 "$OUT/train.log"
wait
tail -3 "$OUT/check.txt" 2>/dev/null
# each run's final weights, or a cut run's newest complete checkpoint under <run>-step<N>
models=$(python3 - <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "scripts")
from train_shipped import weights_dir
out = []
for run in sorted(Path("/tmp/yoco-train").glob("*/run")):
    w, status = weights_dir(run)
    if w is not None:
        out.append(f"{run.parent.name}{'' if status == 'done' else '-' + w.name.replace('_', '')}={w}")
print(",".join(out))
PY
)
if [ -n "$models" ] && [ "${EVAL_S:-200}" -gt 0 ]; then
  python3 scripts/train_shipped.py eval --models "$models" --budget-s ${EVAL_S:-200} --work /tmp/yoco-eval \
      --out "$OUT/e" > "$OUT/e/eval.log" 2>&1
  echo "eval rc=$?"; grep -v " single " "$OUT/e/eval.log" | tail -20; grep " single " "$OUT/e/eval.log" | awk '{print $4, $5}' | tr '\n' ' '
  gzip "$OUT/e/eval.log"
fi
