#!/usr/bin/env bash
# One device call: train the tiny presets side by side on one GPU (same data, seed, steps and
# token budget), measure each with `yoco needle` on the GPU, and bring back weights + logs.
#   $OUT/<name>.safetensors          the final weights in bf16 (one file each)
#   $OUT/runs.tar.gz                 per run: config.json, train_log.csv, train_summary.json,
#                                    needle.csv, commands.txt, the run's stdout
# Each line of VARIANTS is "NAME PRESET [--set KEY=VALUE ...]"; EXTRA is appended to every command.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .wheels/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}; mkdir -p "$OUT"
R=/tmp/runs; rm -rf $R; mkdir -p $R        # a warm machine keeps /tmp between calls
Y="python3 -m yoco_cli.main"
VARIANTS=${VARIANTS:-"yoco-tiny yoco-tiny
transformer-tiny transformer-tiny"}
STEPS=${STEPS:-1750}
CURRICULUM=${CURRICULUM:-512,1k,1k,2k,2k,4k,8k}
TRAIN_S=${TRAIN_S:-330}       # 2 models side by side: ~240 s on an H100
EVAL_S=${EVAL_S:-170}
T0=$(date +%s)

while read -r name preset sets; do
  [ -z "$name" ] && continue
  mkdir -p $R/$name
  ( timeout $TRAIN_S $Y train -m $preset $sets --steps $STEPS --batch-tokens ${BATCH:-64k} --curriculum $CURRICULUM \
      --lr ${LR:-2e-3} --seed 0 --device ${DEVICE:-cuda} --save-every 100 --log-every ${LOG_EVERY:-20} --out $R/$name ${EXTRA:-} \
      > $R/$name/train.txt 2>&1; echo "$name train rc=$? after $(( $(date +%s) - T0 )) s" ) &
done <<< "$VARIANTS"
wait
echo "== training done after $(( $(date +%s) - T0 )) s"

# the final weights, or the newest checkpoint of a run cut short
while read -r name preset sets; do
  [ -z "$name" ] && continue
  w=$R/$name/final
  [ -f $w/model.safetensors ] || w=$(ls -d $R/$name/step_* 2>/dev/null | sort -t_ -k2 -n | tail -1)
  [ -n "$w" ] && echo "$w" > $R/$name/weights_dir || echo "$name: no weights"
done <<< "$VARIANTS"

# needle on the GPU: 1K-64K at 10 depths x 2 trials; longer contexts (YOCO only) at 5 depths x 2
while read -r name preset sets; do
  [ -f $R/$name/weights_dir ] || continue
  w=$(cat $R/$name/weights_dir)
  (
    timeout $EVAL_S $Y needle -m $w --ctx ${SHORT:-1k,2k,4k,8k,16k,32k,64k} --n-depths ${DEPTHS:-10} --trials 2 --device ${DEVICE:-cuda} \
        --out $R/$name/needle > $R/$name/needle.txt 2>&1
    case $preset in yoco*)
      timeout 60 $Y needle -m $w --ctx ${LONG:-128k,256k,512k,1m} --n-depths 5 --trials 2 --device ${DEVICE:-cuda} \
          --out $R/$name/needle --resume >> $R/$name/needle.txt 2>&1 ;;
    esac
  ) &
done <<< "$VARIANTS"
wait
echo "== needle done after $(( $(date +%s) - T0 )) s"

while read -r name preset sets; do
  [ -f $R/$name/weights_dir ] || continue
  w=$(cat $R/$name/weights_dir)
  python3 -c "import sys, torch
from safetensors.torch import load_file, save_file
from yoco_core.checkpoint import FORMAT_VERSION
sd = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(sys.argv[1]).items()}
save_file(sd, sys.argv[2], metadata={'format': 'yoco', 'version': str(FORMAT_VERSION), 'dtype': 'bfloat16'})" \
    $w/model.safetensors "$OUT/$name.safetensors"
  cp $w/config.json $R/$name/config.json
  echo "== $name ($w)"; grep -E "^done|rc=|Error|error" $R/$name/train.txt | tail -3
  python3 - $R/$name/train_log.csv <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for r in rows[::max(1, len(rows) // 12)] + rows[-1:]:
    print(f"  step {r['step']:>5} len {r['length']:>6} loss {float(r['loss']):.3f} needle {r['needle_acc'][:5]:>5} "
          f"kv {r['kv_acc'][:5]:>5} copy {r['copy_acc'][:5]:>5} {r['tokens_per_s']:>8} tok/s")
PY
  python3 - $R/$name/needle/needle.csv <<'PY'
import sys
import pandas as pd
try:
    df = pd.read_csv(sys.argv[1])
except Exception as e:
    print("  needle: none", e); sys.exit()
t = df.groupby("ctx_requested")["score"].agg(["mean", "count"])
print("  needle acc by ctx: " + ", ".join(f"{int(c) // 1024}k {m:.2f}/{n}" for c, (m, n) in t.iterrows()))
PY
done <<< "$VARIANTS"
(cd $R && tar czf "$OUT/runs.tar.gz" --exclude='step_*' --exclude='final' --exclude='.step_*' .)
ls -la "$OUT"
