#!/usr/bin/env bash
# Prints the funnel report for a person. Waits until the processor has caught
# up with the input topic (its offsets in PostgreSQL reach the topic's end).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval "$("$FUNNEL_ROOT/infra/local/env.sh")"
psql_() { "$PG_BIN/psql" "$DATABASE_URL" -v ON_ERROR_STOP=1 "$@"; }
end=$("$FUNNEL_ROOT/infra/local/bin/kafka-get-offsets" --bootstrap-server "$FUNNEL_KAFKA_BROKERS" \
  --topic "$FUNNEL_TOPIC_MESSAGES" --time -1 2>/dev/null | awk -F: '{s+=$3} END {print s+0}')
for _ in $(seq 1 120); do
  done_=$(psql_ -qAt -c "SELECT coalesce(sum(next_offset),0) FROM funnel_sink_offsets WHERE topic = '$FUNNEL_TOPIC_MESSAGES' AND consumer_group = 'funnel-processor'")
  [[ "$done_" -ge "$end" ]] && break
  sleep 0.5
done
# The report the API serves (GET /v1/reports/funnel), as tables: the last 30 days by lead
# week and by lead channel.
bin="${CARGO_TARGET_DIR:-$FUNNEL_CACHE/target}/debug"
echo
"$bin/funnel-loadtest" report --url "$FUNNEL_INGEST_URL" --token "$FUNNEL_TOKEN" --group-by week
echo
"$bin/funnel-loadtest" report --url "$FUNNEL_INGEST_URL" --token "$FUNNEL_TOKEN" --group-by channel
echo "Processed $done_ of $end messages on $FUNNEL_TOPIC_MESSAGES."
