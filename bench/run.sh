#!/usr/bin/env bash
# The whole comparison in one command: installs the peers (Debian packages),
# builds the `bench` preset, runs peer_bench and draws the chart.
#   bench/run.sh [--n 1000000] [--runs 3] [--dir DIR] [other peer_bench options]
# Writes bench/results/results-N<size>.{md,csv,dat,svg}. Store files go to
# --dir (default /var/tmp/mapkv-peer-bench, which must be on a real disk, not
# tmpfs) and are removed at the end. Run it from the repository's root.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/install-deps bench
nice -n 10 cmake --preset bench >/dev/null
nice -n 10 cmake --build --preset bench --target peer_bench
label=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = "--label" ] && label=${args[$((i + 1))]:-}
done
if [ -z "$label" ]; then
  n=1000000
  for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--n" ] && n=${args[$((i + 1))]:-$n}
  done
  if [ $((n % 1000000)) -eq 0 ]; then label="results-N$((n / 1000000))M"; else label="results-N$n"; fi
  args+=(--label "$label")
fi
./build/bench/bench/peer_bench --out bench/results "${args[@]}"
bench/plot.sh "bench/results/$label.dat" "bench/results/$label.svg" \
  "mapkv and peers: ns per operation, ${label#results-}, median of runs (lower is faster)"
