#!/usr/bin/env bash
# make bench-isolation: one tenant sending at ten times its limit while holding a dozen stalled
# CSV exports, and what that does to another tenant's p99 latency, as a ratio to that tenant's
# p99 alone in the same run. loadtest/bench_isolation.py does the runs; docs/benchmarks.md
# explains them and keeps the last results.
source "$(dirname "${BASH_SOURCE[0]}")/../infra/local/lib.sh"
cd "$FUNNEL_ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FUNNEL_CACHE/target}
cargo build --release --bin funnel-ingest --bin funnel-processor --bin funnel-loadtest >&2
"$FUNNEL_ROOT/infra/local/stack.sh" up >/dev/null
eval "$("$FUNNEL_ROOT/infra/local/env.sh")"
export FUNNEL_REL="$CARGO_TARGET_DIR/release" FUNNEL_TOPIC_PARTITIONS="$TOPIC_PARTITIONS" FUNNEL_PORT_BASE
exec "$FUNNEL_CACHE/venv/bin/python" "$FUNNEL_ROOT/loadtest/bench_isolation.py" "$@"
