#!/usr/bin/env bash
# One-shot GPU benchmark of issue 6 (`yoco profile`), run from the repository root on the GPU machine:
#
#   bash scripts/gpu_profile.sh [STEP ...]     STEP: smoke ctx batch plots (default: all four)
#
# Results go to $OUT (default runs/gpu-profile): smoke/, ctx/ and batch256k/, each with profile.csv,
# commands.txt and the figures. Every step runs with --resume and one arch per invocation, so a
# step cut short by a time limit continues where it stopped when run again; `plots` measures
# nothing, it redraws the figures and the table from the CSVs.
#
#   smoke  tiny presets on cuda, a few seconds: the CUDA path end to end (events, peak memory, and
#          the OOM clean-up through an injected OOM at transformer 8k x 2, recorded as oom)
#   ctx    3B, contexts 4k..1M doubling, batch 1: prefill latency, decode latency, memory
#   batch  3B at 256K, batch 1..64 doubling: throughput at the largest batch that fits each model
#          (--ctx 256k,256k: a single size alone would mean a doubling sweep up to it)
set -uo pipefail

OUT=${OUT:-runs/gpu-profile}
GEN=${GEN:-128}
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
YOCO=(python -m yoco_cli.main profile)

ARCHS=(yoco transformer)
python -c "import transformers" 2>/dev/null && ARCHS+=(hf) || echo "note: transformers missing, arch hf left out"
python -c "import fla.models.yoco" 2>/dev/null && ARCHS+=(fla) || echo "note: fla.models.yoco missing, arch fla left out"
ALL=$(IFS=,; echo "${ARCHS[*]}")

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"

rc=0
run() { echo "+ ${YOCO[*]} $*"; "${YOCO[@]}" "$@" || { echo "step failed (rc $?): $*"; rc=1; }; }

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(smoke ctx batch plots)
for step in "${steps[@]}"; do
  case $step in
    smoke)
      YOCO_PROFILE_INJECT_OOM=transformer:8192:2 run --arch "$ALL" --size tiny --ctx 1k,8k --batch 1,2 --gen-tokens 8 --device cuda \
          --out "$OUT/smoke" --resume ;;
    ctx)
      for a in "${ARCHS[@]}"; do
        run --arch "$a" --size 3b --ctx 1m --batch 1 --gen-tokens "$GEN" --device cuda --dtype bf16 \
            --out "$OUT/ctx" --resume
      done ;;
    batch)
      for a in "${ARCHS[@]}"; do
        run --arch "$a" --size 3b --ctx 256k,256k --batch 1,2,4,8,16,32,64 --gen-tokens 32 --device cuda \
            --dtype bf16 --out "$OUT/batch256k" --resume
      done ;;
    plots)
      run --arch "$ALL" --size 3b --ctx 1m --batch 1 --gen-tokens "$GEN" --device cuda --dtype bf16 \
          --out "$OUT/ctx" --resume
      run --arch "$ALL" --size 3b --ctx 256k,256k --batch 1,2,4,8,16,32,64 --gen-tokens 32 --device cuda \
          --dtype bf16 --out "$OUT/batch256k" --resume ;;
    *) echo "unknown step $step (use smoke, ctx, batch, plots)"; exit 2 ;;
  esac
done
exit $rc
