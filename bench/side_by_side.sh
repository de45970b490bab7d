#!/bin/bash
# Every checkout's relay at the same time, each with its own bench/connections.py client,
# so all of them see the same (shared, noisy) machine; one line per round.
#   bench/side_by_side.sh ROUNDS LABEL=CHECKOUT... -- CONNECTIONS.PY ARGS
#   bench/side_by_side.sh 4 main=/tmp/main this=. -- --connections 600 --message
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=$1
shift
labels=()
dirs=()
while [ "$1" != "--" ]; do
  labels+=("${1%%=*}")
  dirs+=("$(cd "${1#*=}" && pwd)")
  shift
done
shift
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$rounds"); do
  pids=()
  for i in "${!labels[@]}"; do
    (cd "$root" && PYTHONPATH=${dirs[$i]} timeout 600 .venv/bin/python bench/connections.py "$@" >"$out/$i" 2>&1) &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  line="round $r:"
  for i in "${!labels[@]}"; do
    line="$line ${labels[$i]} $(grep -oE '[0-9]+/s, relay [0-9.]+ ms|received [0-9]+ of|Error.*' "$out/$i" | tail -1)"
  done
  echo "$line   (load $(cut -d' ' -f1 /proc/loadavg))"
done
