#!/usr/bin/env bash
# make bench-replay: `funnel-processor replay --from earliest` of a million pre-filled records,
# timed end to end, as ratios to the processor's first pass over the same records and to
# kafka-consumer-perf-test, measured in the same run. loadtest/bench_replay.py does the runs;
# docs/benchmarks.md keeps the last results.
source "$(dirname "${BASH_SOURCE[0]}")/../infra/local/lib.sh"
cd "$FUNNEL_ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FUNNEL_CACHE/target}
cargo build --release --workspace >&2
"$FUNNEL_ROOT/infra/local/stack.sh" up >/dev/null
eval "$("$FUNNEL_ROOT/infra/local/env.sh")"
export FUNNEL_REL="$CARGO_TARGET_DIR/release" FUNNEL_TOPIC_PARTITIONS="$TOPIC_PARTITIONS"
exec "$FUNNEL_CACHE/venv/bin/python" "$FUNNEL_ROOT/loadtest/bench_replay.py" "$@"
