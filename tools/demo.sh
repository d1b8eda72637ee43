#!/usr/bin/env bash
# The README's main job: builds the default store data/default.mkv from the
# sample data set (once), then shows what the CLI sees in it.
#   tools/demo.sh [PATH-TO-mapkv]      (default: build/release/tools/cli/mapkv)
set -euo pipefail
cd "$(dirname "$0")/.."
mapkv=${1:-build/release/tools/cli/mapkv}
store=data/default.mkv
if [ ! -f "$store" ]; then
  echo "\$ mapkv load $store data/sample.jsonl"
  "$mapkv" load "$store" data/sample.jsonl
fi
run() { echo; echo "\$ mapkv $*"; "$mapkv" "$@"; }
run stats "$store"
run get "$store" config:release; echo
run get "$store" config:service/auth/issuer; echo
run keys "$store" --prefix config:service/auth/
run check "$store"
