#!/usr/bin/env bash
# One device call: train yoco-tiny and transformer-tiny side by side on one GPU (same data, seed,
# steps and token budget), ship both as bf16, copy weights and logs to $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .wheels/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}
T="python3 -m yoco_cli.main train --steps ${STEPS:-1200} --batch-tokens 64k --curriculum ${CURRICULUM:-512,1k,2k,4k,8k,16k} --lr 2e-3 --seed 0 --device cuda --save-every 100 --ship"
(timeout ${TRAIN_S:-380} $T -m yoco-tiny --set cross_rope=false --out /tmp/ty > "$OUT/yoco.log" 2>&1; echo "yoco rc=$?") &
(timeout ${TRAIN_S:-380} $T -m transformer-tiny --out /tmp/tt > "$OUT/transformer.log" 2>&1; echo "transformer rc=$?") &
wait
for pair in yoco-tiny:/tmp/ty transformer-tiny:/tmp/tt; do
  n=${pair%%:*}; run=${pair#*:}; mkdir -p "$OUT/$n"
  if ! cp yoco_core/weights/$n/* "$OUT/$n/" 2>/dev/null; then   # cut short: pack the latest checkpoint
    last=$(ls -d $run/step_* 2>/dev/null | sort -t_ -k2 -n | tail -1)
    echo "$n: not shipped; packing ${last:-nothing}"
    [ -n "$last" ] && python3 -c "import sys, torch; from yoco_core import load_model, save_model; save_model(load_model(sys.argv[1], dtype=torch.bfloat16), sys.argv[2])" "$last" "$OUT/$n"
  fi
done
cp /tmp/ty/train_log.csv "$OUT/yoco-tiny/" 2>/dev/null; cp /tmp/tt/train_log.csv "$OUT/transformer-tiny/" 2>/dev/null
tail -4 "$OUT/yoco.log" "$OUT/transformer.log"
ls -la "$OUT"/*
