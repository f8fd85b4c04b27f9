#!/usr/bin/env bash
# Prints the funnel read from PostgreSQL, for a person. Waits until the processor has caught
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
echo
echo "Funnel by lead channel (all time):"
psql_ -P pager=off -c "
SELECT coalesce(channel, '(no lead)') AS channel,
       count(lead_at) AS leads, count(booking_at) AS bookings, count(transaction_at) AS paying,
       sum(transaction_count) AS transactions, sum(transaction_value) AS revenue,
       round(100.0 * count(booking_at) FILTER (WHERE lead_at IS NOT NULL) / nullif(count(lead_at), 0), 1) AS \"lead->booking %\",
       round(100.0 * count(transaction_at) FILTER (WHERE lead_at IS NOT NULL) / nullif(count(lead_at), 0), 1) AS \"lead->paid %\"
  FROM funnel_contacts GROUP BY 1 ORDER BY 1"
echo "Processed $done_ of $end messages on $FUNNEL_TOPIC_MESSAGES."
