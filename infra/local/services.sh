#!/usr/bin/env bash
# Starts or stops funnel-ingest and funnel-processor in the background against the local
# stack, logs under the stack's data folder.
#   services.sh up BIN_DIR | down
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval "$("$FUNNEL_ROOT/infra/local/env.sh")"
mkdir -p "$LOG_DIR" "$RUN_DIR"

start() { # start NAME BIN ARGS...
  local name=$1 bin=$2; shift 2
  if pid_alive "$RUN_DIR/$name.pid"; then log "$name already running"; return; fi
  log "starting $name (log: $LOG_DIR/$name.log)"
  nohup "$bin" "$@" >> "$LOG_DIR/$name.log" 2>&1 &
  echo $! > "$RUN_DIR/$name.pid"
}

stop() {
  pid_alive "$RUN_DIR/$1.pid" && log "stopping $1"
  stop_pidfile "$RUN_DIR/$1.pid"
}

case "${1:-}" in
  up)
    bin=${2:?bin dir}
    # Migrations as the owner; each service as its own role (docs/security.md).
    "$bin/funnel-processor" migrate >/dev/null
    PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$PG_DB" -qAt \
      -c "INSERT INTO funnel_analyst_tenants VALUES ('funnel_analyst_default', 'default') ON CONFLICT DO NOTHING"
    if [[ ! -s "$FUNNEL_STACK_DIR/demo-token" ]]; then
      DATABASE_URL=$FUNNEL_INGEST_DATABASE_URL "$bin/funnel-ingest" token create --tenant default \
        --scope ingest,read,admin --description "make up demo token" > "$FUNNEL_STACK_DIR/demo-token.new" 2>/dev/null
      mv "$FUNNEL_STACK_DIR/demo-token.new" "$FUNNEL_STACK_DIR/demo-token"
    fi
    DATABASE_URL=$FUNNEL_INGEST_DATABASE_URL start ingest "$bin/funnel-ingest"
    DATABASE_URL=$FUNNEL_PROCESSOR_DATABASE_URL start processor "$bin/funnel-processor"
    for _ in $(seq 1 120); do
      curl -fsS "$FUNNEL_INGEST_URL/health/live" >/dev/null 2>&1 && break
      pid_alive "$RUN_DIR/ingest.pid" || die "funnel-ingest exited; see $LOG_DIR/ingest.log"
      sleep 0.5
    done
    curl -fsS "$FUNNEL_INGEST_URL/health/live" >/dev/null || die "funnel-ingest did not answer; see $LOG_DIR/ingest.log"
    pid_alive "$RUN_DIR/processor.pid" || die "funnel-processor exited; see $LOG_DIR/processor.log" ;;
  down) stop ingest; stop processor ;;
  *) echo "usage: $0 up BIN_DIR | down" >&2; exit 2 ;;
esac
