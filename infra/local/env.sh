#!/usr/bin/env bash
# Prints `export` lines for the running local stack: eval "$(make -s env)".
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cat <<ENV
export DATABASE_URL='$(database_url)'
export FUNNEL_INGEST_DATABASE_URL='$(role_database_url funnel_ingest_svc)'
export FUNNEL_PROCESSOR_DATABASE_URL='$(role_database_url funnel_processor_svc)'
export FUNNEL_ANALYST_DATABASE_URL='$(role_database_url funnel_analyst_default)'
export FUNNEL_KAFKA_BROKERS='$(kafka_bootstrap)'
export FUNNEL_SCHEMA_REGISTRY_URL='$(registry_url)'
export FUNNEL_STACK_KAFKA_SASL_BROKERS='$(kafka_bootstrap sasl)'
export FUNNEL_STACK_KAFKA_CA='$TLS_DIR/ca.pem'
export FUNNEL_HTTP_ADDR='127.0.0.1:$HTTP_PORT'
export FUNNEL_INGEST_URL='http://127.0.0.1:$HTTP_PORT'
export FUNNEL_PROCESSOR_ADDR='127.0.0.1:$PROCESSOR_PORT'
export FUNNEL_TOPIC_MESSAGES='$TOPIC_MESSAGES'
export FUNNEL_TOPIC_DLQ='$TOPIC_DLQ'
export FUNNEL_STATE_DIR='$FUNNEL_STACK_DIR/processor-state'
export FUNNEL_STACK_DIR='$FUNNEL_STACK_DIR'
export FUNNEL_CACHE='$FUNNEL_CACHE'
$( [[ -s "$FUNNEL_STACK_DIR/demo-token" ]] && echo "export FUNNEL_TOKEN='$(cat "$FUNNEL_STACK_DIR/demo-token")'" )
export PATH='$FUNNEL_ROOT/infra/local/bin:${CARGO_TARGET_DIR:-$FUNNEL_CACHE/target}/debug':"\$PATH"
ENV
