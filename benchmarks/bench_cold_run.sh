#!/usr/bin/env bash
# Cold `make run` of an earlier commit against this working tree, in one session, as a ratio.
#
#     bash benchmarks/bench_cold_run.sh [BASE_COMMIT] [PAIRS]
#
# BASE_COMMIT (default cb01c2d: main when the speed issue was filed) is checked out as a git worktree in
# a temporary directory; both sides run `python -m lvmlib run params/default.yaml` (what `make run` runs
# once .venv exists) with this repo's .venv and an EMPTY cache each time (LVM_CACHE_DIR=$(mktemp -d):
# no chunk cache, no exported encoder, no vectors). PAIRS pairs (default 2) alternate the order (base
# first, then this tree first) so a change of machine speed during the session hits both sides.
# Prints each run's wall time and stage times, then each pair's ratio base / this tree.
set -euo pipefail
BASE=${1:-cb01c2d}
PAIRS=${2:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "bench_cold_run: $PY missing — run 'make venv' (or make) first" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'git -C "$ROOT" worktree remove --force "$WORK/base" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git -C "$ROOT" worktree add --detach "$WORK/base" "$BASE" >/dev/null 2>&1 \
    || { echo "bench_cold_run: cannot check out $BASE" >&2; exit 1; }
STAMP=$(date +%H%M%S)

one() {  # one cold run: $1 = label, $2 = tree; prints "label seconds"
    local cache log t0 t1
    cache=$(mktemp -d -p "$WORK")
    log="$WORK/$1.log"
    t0=$(date +%s.%N)
    (cd "$2" && LVM_CACHE_DIR=$cache "$PY" -m lvmlib run params/default.yaml --run-id "cold-$1-$STAMP" --runs-root "$WORK/runs-$1" \
        --reports-root "$WORK/reports-$1" >"$log" 2>&1) || { echo "bench_cold_run: $1 failed, see:" >&2; tail -5 "$log" >&2; exit 1; }
    t1=$(date +%s.%N)
    echo "$1 $(echo "$t1 - $t0" | bc)"
    grep -E "^  0[1-4]_" "$log" | sed "s/^/    $1 /" >&2
}

echo "base $BASE vs this tree ($(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo '+changes')), $PAIRS pair(s), load: $(cut -d' ' -f1-3 /proc/loadavg)"
for p in $(seq 1 "$PAIRS"); do
    if [ $((p % 2)) -eq 1 ]; then
        b=$(one "base$p" "$WORK/base"); n=$(one "tree$p" "$ROOT")
    else
        n=$(one "tree$p" "$ROOT"); b=$(one "base$p" "$WORK/base")
    fi
    bs=${b#* }; ns=${n#* }
    printf "pair %d: base %.0f s, this tree %.0f s: %.2fx (load %s)\n" "$p" "$bs" "$ns" "$(echo "$bs / $ns" | bc -l)" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
done
