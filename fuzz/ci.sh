#!/usr/bin/env bash
# Builds every fuzz target as a libFuzzer binary with plain cargo (the flags `cargo fuzz build -s none` uses, all
# of them accepted by stable rustc: no cargo-fuzz install, no nightly) and runs each one briefly on its committed
# seeds plus whatever it finds in FUZZ_SECONDS (default 20). Exits non-zero on the first crash, leak, timeout or
# failed assertion and names the reproducer. Used by `scripts/setup test`; run it by hand the same way:
#   fuzz/ci.sh                      # every target
#   FUZZ_SECONDS=600 fuzz/ci.sh gso # one target, longer
set -euo pipefail
cd "$(dirname "$0")"

secs=${FUZZ_SECONDS:-20}
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
-Cdebug-assertions -Coverflow-checks -Cllvm-args=-sanitizer-coverage-stack-depth"
# --target keeps RUSTFLAGS off build scripts and proc macros, as cargo-fuzz does.
cargo build --release --locked --target "$triple" --bins --examples

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzz_targets | sed -n 's/\.rs$//p')
fi
work=$(mktemp -d /tmp/vmsecd-fuzz-ci.XXXXXX)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  printf '%-14s ' "$t"
  if ! "target/$triple/release/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$work/$t-" "$work/$t" "seeds/$t" >"$log" 2>&1; then
    echo "FAILED"
    tail -n 60 "$log"
    for a in "$work/$t"-*; do
      [ -e "$a" ] || continue
      mkdir -p artifacts/"$t"
      cp "$a" artifacts/"$t"/
      echo "reproducer: fuzz/artifacts/$t/$(basename "$a")  (run: fuzz/target/$triple/release/$t fuzz/artifacts/$t/$(basename "$a"))"
    done
    exit 1
  fi
  sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tr '\n' ' '
  echo "executions in ${secs}s, $(grep -c . <(ls "$work/$t")) new corpus entries"
done
