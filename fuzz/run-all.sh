#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) each, two at a time, and
# prints each one's closing statistics. Needs cargo-fuzz (`cargo install cargo-fuzz`);
# on the stable toolchain, RUSTC_BOOTSTRAP=1 lets it use the nightly flags it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${SECONDS_EACH:-600}"
export RUSTC_BOOTSTRAP=1
targets=(cookie_header session_id signed_cookie snapshot_restore)
cargo fuzz build --release
mkdir -p fuzz/logs
run() { cargo fuzz run --release "$1" -- -max_total_time="$seconds" -rss_limit_mb=2048 > "fuzz/logs/$1.log" 2>&1 || echo "$1: FAILED (see fuzz/logs/$1.log)"; }
run cookie_header & run session_id & wait
run signed_cookie & run snapshot_restore & wait
for t in "${targets[@]}"; do
  echo "== $t"; grep -E "^Done|stat::number_of_executed_units|SUMMARY|crash-" "fuzz/logs/$t.log" | tail -3
done
