#!/usr/bin/env bash
# What the capture role's metrics cost per change on the drain path: the
# metered sink (decoded by table and op, commit-to-publish lag histogram),
# the publisher's publish and confirm (by routing key, confirm-latency
# histogram) and a transaction counter per ten changes, driven by the
# ignored unit test metrics::sample::hot_path.
#
# Prints instructions per change counted by callgrind (stable under load,
# so usable on a shared machine), the same loop without metrics subtracted,
# and a wall-clock estimate in ns per change (min of 3 runs; noisy).
#
#   scripts/metrics-instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(cargo test --release --lib --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.reason == "compiler-artifact" and .profile.test and .target.kind == ["lib"]) | .executable')
low=2000
high=12000
wall=2000000

run() { # events bare(0|1)
    if [ "$2" = 1 ]; then
        WALCAST_HOT_PATH_EVENTS=$1 WALCAST_HOT_PATH_BARE=1 "${@:3}" "$bin" metrics::sample::hot_path --ignored --exact --test-threads=1
    else
        WALCAST_HOT_PATH_EVENTS=$1 "${@:3}" "$bin" metrics::sample::hot_path --ignored --exact --test-threads=1
    fi
}

instructions() { # events bare
    run "$1" "$2" valgrind --tool=callgrind --callgrind-out-file=/dev/null 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

nanos() { # bare: min over 3 runs of ns per change
    local best=0 t0 t1 ns
    for _ in 1 2 3; do
        t0=$(date +%s%N)
        run "$wall" "$1" >/dev/null 2>&1
        t1=$(date +%s%N)
        ns=$(((t1 - t0) / wall))
        if [ "$best" = 0 ] || [ "$ns" -lt "$best" ]; then best=$ns; fi
    done
    echo "$best"
}

metered=$((($(instructions $high 0) - $(instructions $low 0)) / (high - low)))
bare=$((($(instructions $high 1) - $(instructions $low 1)) / (high - low)))
printf 'instructions per change: %s with metrics, %s without, metrics %s\n' \
    "$metered" "$bare" "$((metered - bare))"
printf 'ns per change (wall, min of 3, %s changes): %s with metrics, %s without\n' \
    "$wall" "$(nanos 0)" "$(nanos 1)"
