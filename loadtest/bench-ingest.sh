#!/usr/bin/env bash
# make bench-ingest: throughput and latency of funnel-ingest against the local broker, as
# ratios to two baselines measured in the same run (this machine is shared and noisy):
#   - a bare poem endpoint that parses the same JSON and answers 202 without Kafka;
#   - Kafka's own kafka-producer-perf-test producing records of the same size to the same topic
#     with the same producer settings (acks=all, idempotent, lz4, linger 5 ms).
source "$(dirname "${BASH_SOURCE[0]}")/../infra/local/lib.sh"
cd "$FUNNEL_ROOT"
DURATION=${BENCH_DURATION:-15}
SINGLE_CONCURRENCY=${BENCH_SINGLE_CONCURRENCY:-256}
BATCH_CONCURRENCY=${BENCH_BATCH_CONCURRENCY:-32}
BATCH_SIZE=${BENCH_BATCH_SIZE:-200}
PERF_RECORDS=${BENCH_PERF_RECORDS:-1000000}
CONTACTS=${BENCH_CONTACTS:-50000}

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FUNNEL_CACHE/target}
cargo build --release --bin funnel-ingest --bin funnel-processor --bin funnel-loadtest >&2
REL=$CARGO_TARGET_DIR/release
"$FUNNEL_ROOT/infra/local/stack.sh" up >/dev/null
eval "$("$FUNNEL_ROOT/infra/local/env.sh")"
# Migrations as the owner; the service runs as its own role (docs/security.md).
"$REL/funnel-processor" migrate >/dev/null
export DATABASE_URL=$FUNNEL_INGEST_DATABASE_URL
topic="bench.$(date +%s).chat-messages"
infra/local/bin/kafka-topics --bootstrap-server "$FUNNEL_KAFKA_BROKERS" --create --topic "$topic" \
  --partitions "$TOPIC_PARTITIONS" --replication-factor 1 >/dev/null
out="$FUNNEL_STACK_DIR/bench"; mkdir -p "$out"
ingest_port=$((FUNNEL_PORT_BASE + 85)); bare_port=$((FUNNEL_PORT_BASE + 86))
token=$("$REL/funnel-ingest" token create --scope ingest --description bench 2>/dev/null)
# The benchmark measures the service, not the tenant's rate limit (docs/security.md).
FUNNEL_TOPIC_MESSAGES=$topic FUNNEL_HTTP_ADDR=127.0.0.1:$ingest_port FUNNEL_LOG=warn \
  FUNNEL_LIMIT_MESSAGES_PER_SECOND=1000000000 FUNNEL_LIMIT_BURST=1000000000 \
  "$REL/funnel-ingest" > "$out/ingest.log" 2>&1 &
ingest_pid=$!
"$REL/funnel-loadtest" bare-endpoint --addr "127.0.0.1:$bare_port" > "$out/bare.log" 2>&1 &
bare_pid=$!
trap 'kill $ingest_pid $bare_pid 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$ingest_port/health/live" >/dev/null 2>&1 && break; sleep 0.2; done

bench() { # bench NAME URL CONCURRENCY BATCH [CONTACTS]
  log "$1: $3 clients, $4 message(s) per request, phones cycling over ${5:-$CONTACTS} contacts, ${DURATION}s"
  "$REL/funnel-loadtest" http-bench --url "$2" --token "$token" --concurrency "$3" --duration "$DURATION" --batch "$4" \
    --contacts "${5:-$CONTACTS}" | tee "$out/$1.json"
}
bench bare-single "http://127.0.0.1:$bare_port/v1/messages" "$SINGLE_CONCURRENCY" 1
bench ingest-single "http://127.0.0.1:$ingest_port/v1/messages" "$SINGLE_CONCURRENCY" 1
bench bare-batch "http://127.0.0.1:$bare_port/v1/messages/batch" "$BATCH_CONCURRENCY" "$BATCH_SIZE"
bench ingest-batch "http://127.0.0.1:$ingest_port/v1/messages/batch" "$BATCH_CONCURRENCY" "$BATCH_SIZE"
# The worst case for the phone cache: every message from a new phone.
bench ingest-batch-distinct "http://127.0.0.1:$ingest_port/v1/messages/batch" "$BATCH_CONCURRENCY" "$BATCH_SIZE" 0

# The perf-test baseline produces records of the size ingest produced: read one back.
record_size=${BENCH_RECORD_SIZE:-$("$FUNNEL_CACHE/venv/bin/python" - "$FUNNEL_KAFKA_BROKERS" "$topic" "$TOPIC_PARTITIONS" <<'PY'
import sys
from confluent_kafka import Consumer, TopicPartition
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "bench-size", "enable.auto.commit": False})
c.assign([TopicPartition(sys.argv[2], p, 0) for p in range(int(sys.argv[3]))])
m = None
while m is None or m.error():
    m = c.poll(10)
print(len(m.value()))
PY
)}
log "kafka-producer-perf-test: $PERF_RECORDS records of $record_size bytes"
infra/local/bin/kafka-producer-perf-test --topic "$topic" --num-records "$PERF_RECORDS" --record-size "$record_size" \
  --throughput -1 --command-property bootstrap.servers="$FUNNEL_KAFKA_BROKERS" acks=all \
  enable.idempotence=true linger.ms=5 compression.type=lz4 \
  2>/dev/null | tail -n1 | tee "$out/perf-test.txt"

python3 - "$out" <<'PY'
import json, re, sys
d = sys.argv[1]
r = {n: json.load(open(f"{d}/{n}.json")) for n in ["bare-single", "ingest-single", "bare-batch", "ingest-batch", "ingest-batch-distinct"]}
perf = open(f"{d}/perf-test.txt").read()
perf_rps = float(re.search(r"([\d.]+) records/sec", perf).group(1))
perf_p99 = float(re.search(r"([\d.]+) ms 99th", perf).group(1))
print()
print("| run | requests/s | messages/s | p50 ms | p99 ms | non-2xx | ratio |")
print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
def row(name, ratio):
    x = r[name]
    print(f"| {name} | {x['requests_per_second']:.0f} | {x['messages_per_second']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['non_2xx']} | {ratio} |")
row("bare-single", "baseline")
row("ingest-single", f"{r['ingest-single']['requests_per_second'] / r['bare-single']['requests_per_second']:.2f}x bare requests/s (target 0.5x)")
row("bare-batch", "baseline")
row("ingest-batch", f"{r['ingest-batch']['messages_per_second'] / perf_rps:.2f}x perf-test records/s (target 0.5x)")
row("ingest-batch-distinct", f"{r['ingest-batch-distinct']['messages_per_second'] / perf_rps:.2f}x perf-test records/s (every phone new)")
print(f"| kafka-producer-perf-test | | {perf_rps:.0f} | | {perf_p99:.2f} | | baseline |")
PY
