#!/usr/bin/env bash
# Runs the store fuzzer (built by the `fuzz` preset) for a bounded time on a
# scratch copy of the seed corpus plus every saved crash input, and fails when
# it finds a crash, a leak, a hang or a broken promise.
#   tests/fuzz/run_fuzzer.sh [SECONDS]      (default 90)
# A crash input is left in the scratch directory named in the output: copy it
# to data/fuzz-regressions/ with a name saying what it broke, fix the engine,
# and the ctest replay test keeps it fixed.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-90}"
fuzzer=build/fuzz/tests/fuzz/store_fuzzer
[ -x "$fuzzer" ] || { echo "run_fuzzer: $fuzzer not built (cmake --preset fuzz && cmake --build --preset fuzz)" >&2; exit 2; }
work="$(mktemp -d "${TMPDIR:-/tmp}/mapkv-fuzz-run.XXXXXX")"
mkdir -p "$work/corpus" "$work/artifacts"
cp data/fuzz-corpus/*.mkv "$work/corpus/"
find data/fuzz-regressions -type f ! -name README.md -exec cp {} "$work/corpus/" \;
echo "run_fuzzer: $seconds s on $(ls "$work/corpus" | wc -l) seed inputs; scratch directory $work"
set +e
ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
  "$fuzzer" "$work/corpus" -max_total_time="$seconds" -max_len=400000 -timeout=20 -rss_limit_mb=2048 \
  -artifact_prefix="$work/artifacts/" -print_final_stats=1 > "$work/fuzz.log" 2>&1
rc=$?
set -e
grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)" "$work/fuzz.log" || true
if [ $rc -ne 0 ]; then
  echo "run_fuzzer: FAILED (exit code $rc); the report:" >&2
  grep -v -E "^#[0-9]+|^INFO:" "$work/fuzz.log" | head -80 >&2
  echo "run_fuzzer: crash inputs kept in $work/artifacts:" >&2
  ls -l "$work/artifacts" >&2
  exit 1
fi
rm -rf "$work"
echo "run_fuzzer: no crash"
