#!/usr/bin/env bash
# Instructions per change for each decoder benchmark case, counted by
# callgrind (examples/decoder_instructions.rs): stable under load, so usable
# for before/after comparisons on a shared machine where wall-clock medians
# move by tens of percent.
#
#   scripts/decoder-instructions.sh                  # every case
#   scripts/decoder-instructions.sh orders_update    # some
set -euo pipefail
cd "$(dirname "$0")/.."

cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
    cases=(orders_insert orders_update orders_delete orders_mixed_txn10 wide_insert wide_update)
fi
low=2000
high=12000

cargo build --release --quiet --example decoder_instructions
bin=target/release/examples/decoder_instructions

# Total instructions ("Collected") of one run.
instructions() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

printf '%-20s %s\n' case instructions/change
for case in "${cases[@]}"; do
    a=$(instructions "$case" "$low")
    b=$(instructions "$case" "$high")
    per=$(((b - a) / (high - low)))
    # One count of the transaction case is 10 changes.
    if [ "$case" = orders_mixed_txn10 ]; then per=$((per / 10)); fi
    printf '%-20s %s\n' "$case" "$per"
done
