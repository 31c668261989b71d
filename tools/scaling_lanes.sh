#!/bin/bash
# usage: bash tools/scaling_lanes.sh RUN_ID ... (sc-n<N>: N training articles; c30-x2500: resume that data-only run;
# c30-s16384, c30-tf, c30-tau20, c30-il-tau20, c30-il-tau50: issue 30's E2c, N11-N14 on the 1,600-article
# data); logs in logs/
# issue 26 item 3 / issue 30 N9: the fast recipe on 200..3,300 training articles (dev 800 + extra 0-2,499),
# val articles only, best epoch on the val curve; then each run's val evaluation with the curve (select).
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
C="--set data.extra_train_articles=2500 --set data.distractor_path=corpora/wiki_distract_2000.jsonl.gz --set eval.split=val --set train.best_metric=val_curve_recall_at_5 --set train.early_stop_metric=val_curve_recall_at_5 --set train.threads=1"
L="--set eval.baselines=[copy_last,context_mean,ridge] --set eval.banks=[test] --set eval.primary_bank=test --set eval.latency_queries=0"
lane() {
  for id in "$@"; do
    C30="--set data.distractor_path=corpora/wiki_distract_2000.jsonl.gz --set eval.split=val --set train.best_metric=val_curve_recall_at_5 --set train.early_stop_metric=val_curve_recall_at_5 --set train.threads=1"
    case "$id" in
      c30-s16384) X="--set loss.bank_sample=16384" ;;
      c30-tf) X="--set model.kind=transformer" ;;
      c30-tau20) X="--set loss.temperature=0.2" ;;
      c30-il-tau20) X="--set model.mix_init_last=4.0 --set loss.temperature=0.2" ;;
      c30-il-tau50) X="--set model.mix_init_last=4.0 --set loss.temperature=0.5" ;;
      *) X="" ;;
    esac
    if [ -n "$X" ]; then
      $PY -m lvmlib run params/wiki1000_x800_fast.yaml --run-id $id $C30 $X --only 01_data --only 02_train --quiet > logs/$id.log 2>&1
    elif [ "$id" = c30-x2500 ]; then
      $PY -m lvmlib run --resume runs/c30-x2500 --set train.threads=1 --only 02_train --only 03_gates --quiet > logs/$id.log 2>&1
    else
      n=${id#sc-n}  # sc-n<N>
      $PY -m lvmlib run params/wiki1000_x800_fast.yaml --run-id $id $C --set data.train_articles=$n --only 01_data --only 02_train --only 03_gates --quiet > logs/$id.log 2>&1
    fi
    echo "$(date +%T) trained $id rc=$?" >> logs/lanes.log
    $PY -m lvmlib select --rule curve $L runs/$id > logs/$id.select.txt 2>&1
    echo "$(date +%T) selected $id rc=$?" >> logs/lanes.log
  done
}
lane "$@"
