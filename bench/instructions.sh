#!/usr/bin/env bash
# Instructions per turn of each target (bench/turn_cost.py under callgrind, counting the
# turns only): repeatable where wall-clock timings on a shared VM are not.
# Usage: [BAG_BYTES=N] [CONCURRENCY=N] [USERS=N] [REDIS_URL=redis://...] bench/instructions.sh \
#          [comma-separated targets] [turns]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TURNS=${2:-2000}
IFS=, read -ra targets <<< "${1:-baseline,baseline-orjson,floor,memory,memory-plain}"
for target in "${targets[@]}"; do
  total=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null --collect-atstart=no \
    --toggle-collect=sys_call_tracing "$PY" bench/turn_cost.py --targets "$target" \
    --turns "$TURNS" --repeat 1 --bag-bytes "${BAG_BYTES:-0}" --users "${USERS:-200}" --concurrency "${CONCURRENCY:-1}" \
    ${REDIS_URL:+--redis-url "$REDIS_URL"} 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
  echo "$target $(( total / TURNS )) instructions/turn"
done
