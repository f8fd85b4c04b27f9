#!/usr/bin/env bash
# make bench-webhook: messages per second through a WhatsApp channel's webhook (Meta-shaped
# payloads signed with the app secret, checked, mapped, keyed and produced) as a ratio to the
# same messages through POST /v1/messages/batch (and one per request to POST /v1/messages), in
# the same run on the same funnel-ingest. docs/benchmarks.md keeps the last results.
source "$(dirname "${BASH_SOURCE[0]}")/../infra/local/lib.sh"
cd "$FUNNEL_ROOT"
DURATION=${BENCH_DURATION:-15}
CONCURRENCY=${BENCH_CONCURRENCY:-32}
BATCH_SIZE=${BENCH_BATCH_SIZE:-50}
CONTACTS=${BENCH_CONTACTS:-50000}

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FUNNEL_CACHE/target}
cargo build --release --bin funnel-ingest --bin funnel-processor --bin funnel-loadtest >&2
REL=$CARGO_TARGET_DIR/release
"$FUNNEL_ROOT/infra/local/stack.sh" up >/dev/null
eval "$("$FUNNEL_ROOT/infra/local/env.sh")"
"$REL/funnel-processor" migrate >/dev/null
export DATABASE_URL=$FUNNEL_INGEST_DATABASE_URL
topic="bench.webhook.$(date +%s).chat-messages"
infra/local/bin/kafka-topics --bootstrap-server "$FUNNEL_KAFKA_BROKERS" --create --topic "$topic" \
  --partitions "$TOPIC_PARTITIONS" --replication-factor 1 >/dev/null
out="$FUNNEL_STACK_DIR/bench-webhook"; mkdir -p "$out"
port=$((FUNNEL_PORT_BASE + 88))
token=$("$REL/funnel-ingest" token create --scope ingest --description bench-webhook 2>/dev/null)
secret=bench-app-secret-$RANDOM$RANDOM
echo "$secret" > "$out/app-secret"
number=9$(date +%s%N | cut -c1-14)
channel=$("$REL/funnel-ingest" channel add whatsapp --tenant default --phone-number-id "$number" \
  --app-secret-file "$out/app-secret" --verify-token bench-verify-token)
path=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["webhook_path"])' "$channel")
channel_id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["channel_id"])' "$channel")
FUNNEL_TOPIC_MESSAGES=$topic FUNNEL_HTTP_ADDR=127.0.0.1:$port FUNNEL_LOG=warn \
  FUNNEL_LIMIT_MESSAGES_PER_SECOND=1000000000 FUNNEL_LIMIT_BURST=1000000000 \
  "$REL/funnel-ingest" > "$out/ingest.log" 2>&1 &
ingest_pid=$!
trap 'kill $ingest_pid 2>/dev/null; "$REL/funnel-ingest" channel remove "$channel_id" >/dev/null 2>&1' EXIT
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/health/live" >/dev/null 2>&1 && break; sleep 0.2; done

bench() { # bench NAME URL BATCH [http-bench flags...]
  local name=$1 url=$2 batch=$3; shift 3
  log "$name: $CONCURRENCY clients, $batch message(s) per request, ${DURATION}s"
  "$REL/funnel-loadtest" http-bench --url "$url" --concurrency "$CONCURRENCY" --duration "$DURATION" \
    --batch "$batch" --contacts "$CONTACTS" "$@" | tee "$out/$name.json"
}
api="http://127.0.0.1:$port"
wa=(--whatsapp-app-secret "$secret" --phone-number-id "$number")
bench api-batch "$api/v1/messages/batch" "$BATCH_SIZE" --token "$token"
bench webhook-batch "$api$path" "$BATCH_SIZE" "${wa[@]}"
bench api-single "$api/v1/messages" 1 --token "$token"
bench webhook-single "$api$path" 1 "${wa[@]}"

python3 - "$out" "$BATCH_SIZE" <<'PY'
import json, sys
d, n = sys.argv[1], sys.argv[2]
r = {k: json.load(open(f"{d}/{k}.json")) for k in ["api-batch", "webhook-batch", "api-single", "webhook-single"]}
print()
print("| run | requests/s | messages/s | p50 ms | p99 ms | non-2xx | ratio |")
print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
for k, base in [("api-batch", None), ("webhook-batch", "api-batch"), ("api-single", None), ("webhook-single", "api-single")]:
    x = r[k]
    ratio = "baseline" if base is None else f"{x['messages_per_second'] / r[base]['messages_per_second']:.2f}x {base}"
    print(f"| {k} ({n if 'batch' in k else 1} per request) | {x['requests_per_second']:.0f} | {x['messages_per_second']:.0f} | "
          f"{x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['non_2xx']} | {ratio} |")
PY
