#!/bin/bash
# What restarting a worker costs with `serve --workers 2`: kill each worker once (kill -9),
# then print every process's RSS/PSS and the supervisor's `worker restarted` lines
# (seconds_to_listen). Loopback only; its own state in a temporary folder.
#   bench/restart_cost.sh [CHECKOUT]      (default: this checkout; run from the repo root)
set -u
checkout=$(realpath "${1:-.}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
export PYTHONPATH=$checkout PHI_RELAY_READY_FILE=$work/ready
"$OLDPWD/.venv/bin/phi-relay" serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  --state-dir "$work/state" --workers 2 --log-json >"$work/log" 2>&1 &
sup=$!
for _ in $(seq 300); do [ -s ready ] && break; sleep 0.2; done
sleep 2
show() {
  for p in $sup $(cat /proc/$sup/task/$sup/children); do
    rss=$(awk '/^Rss:/ {print int($2/1024)}' /proc/$p/smaps_rollup)
    pss=$(awk '/^Pss:/ {print int($2/1024)}' /proc/$p/smaps_rollup)
    echo "  pid $p rss $rss MB pss $pss MB"
  done
}
echo "started"; show
for _ in 1 2; do
  victim=$(awk '{print $1}' /proc/$sup/task/$sup/children)
  kill -9 "$victim"; sleep 6
  echo "after kill -9 of worker pid $victim"; show
done
grep -h '"worker restarted"' "$work/log"
kill -TERM $sup; wait $sup
