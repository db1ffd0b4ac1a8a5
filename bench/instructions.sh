#!/usr/bin/env bash
# Instructions per turn of each target (bench/turn_cost.py under callgrind): repeatable
# where wall-clock timings on a shared VM are not. Usage: bench/instructions.sh [targets]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for target in ${1:-baseline,baseline-orjson,memory,memory-plain}; do :; done
IFS=, read -ra targets <<< "${1:-baseline,baseline-orjson,memory,memory-plain}"
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$PY" bench/turn_cost.py \
    --targets "$1" --turns "$2" --repeat 1 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for target in "${targets[@]}"; do
  small=$(count "$target" 300)
  large=$(count "$target" 1300)
  echo "$target $(( (large - small) / 1000 )) instructions/turn"
done
