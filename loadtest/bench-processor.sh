#!/usr/bin/env bash
# make bench-processor: the processor's end-to-end throughput (Kafka -> exactly once into
# PostgreSQL) over pre-filled topics of generated messages, as ratios to baselines measured in
# the same run (this machine is shared and noisy), plus its resident memory at 10 thousand and
# at 1 million contacts. loadtest/bench_processor.py does the runs; docs/benchmarks.md explains
# them and keeps the last results.
source "$(dirname "${BASH_SOURCE[0]}")/../infra/local/lib.sh"
cd "$FUNNEL_ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FUNNEL_CACHE/target}
cargo build --release --bin funnel-processor --bin funnel-loadtest >&2
"$FUNNEL_ROOT/infra/local/stack.sh" up >/dev/null
eval "$("$FUNNEL_ROOT/infra/local/env.sh")"
export FUNNEL_REL="$CARGO_TARGET_DIR/release" FUNNEL_TOPIC_PARTITIONS="$TOPIC_PARTITIONS"
exec "$FUNNEL_CACHE/venv/bin/python" "$FUNNEL_ROOT/loadtest/bench_processor.py" "$@"
