# issue 16: the shipped models' GPU eval (yoco-tiny reshipped, transformer-tiny), RULER for all three, tests/gpu: side by side
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .wheels/*.whl .wheels-eval/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
python3 -c "import lm_eval, datasets, nltk; print('lm_eval', lm_eval.__version__, 'datasets', datasets.__version__)"
python3 scripts/train_shipped.py eval --models yoco-tiny,transformer-tiny --budget-s ${EVAL_S:-430} --out $OUT > /tmp/eval.log 2>&1 &
E=$!
python3 scripts/train_shipped.py ruler --models yoco-tiny,yoco-swa-tiny,transformer-tiny --limit ${LIMIT:-20} --budget-s ${RULER_S:-440} --out $OUT > /tmp/ruler.log 2>&1 &
R=$!
timeout ${CHECK_S:-300} python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/gpu 2>&1 | tail -40 > $OUT/check.txt
wait $E $R
tail -4 $OUT/check.txt
tar czf $OUT/logs.tar.gz -C /tmp eval.log ruler.log yoco-ruler/yoco-tiny.txt 2>/dev/null
grep -v "^yoco-tiny .*single\|^transformer-tiny .*single" /tmp/eval.log | tail -25
tail -16 /tmp/ruler.log
