#!/usr/bin/env bash
# The local stack without Docker: PostgreSQL (own cluster), Apache Kafka in KRaft mode (one
# combined node, or KAFKA_NODES=3) and Apicurio Registry, all on loopback.
#   stack.sh up       install what is missing, start what is not running, create topics
#   stack.sh down     stop everything (data is kept)
#   stack.sh status   what runs where
#   stack.sh clean    stop and delete the data folder
#   stack.sh kill-kafka-node N | start-kafka-node N   (fault tests)
#   stack.sh kafka-user NAME PASSWORD     a SCRAM-SHA-512 user for the SASL_SSL listener
#   stack.sh kafka-grant ROLE NAME TOPICS [GROUPS]  the ACLs of ROLE (ingest, processor) for
#                                         user NAME on the topics starting with TOPICS (and the
#                                         processor's consumer groups starting with GROUPS)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

has() { [[ " $FUNNEL_STACK_COMPONENTS " == *" $1 "* ]]; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

grant_traverse() {
  # The postgres user must reach its data folder inside the clone: add the execute (traverse)
  # bit to ancestors that lack it. Nothing becomes readable by others.
  local d=$1
  while [[ "$d" != "/" ]]; do
    if [[ $(stat -c %a "$d") != *[1357] ]]; then chmod o+x "$d"; fi
    d=$(dirname "$d")
  done
}

# ---------------------------------------------------------------- PostgreSQL
pg_running() { as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; }
psql_super() { PGPASSWORD=$PG_SUPERPASS "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

pg_up() {
  mkdir -p "$FUNNEL_STACK_DIR/postgres" "$LOG_DIR"
  if [[ $EUID -eq 0 ]]; then
    grant_traverse "$FUNNEL_STACK_DIR"
    chown postgres: "$FUNNEL_STACK_DIR/postgres"
    touch "$LOG_DIR/postgres.log" && chown postgres: "$LOG_DIR/postgres.log"
  fi
  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    log "initialising PostgreSQL cluster in $PG_DATA"
    local pw
    pw=$(mktemp) && echo "$PG_SUPERPASS" > "$pw" && chmod 644 "$pw"
    as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --pwfile="$pw" \
      --auth-local=peer --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pw"
  fi
  as_postgres mkdir -p "$PG_RUN"
  if pg_running; then
    log "postgres already running on 127.0.0.1:$PG_PORT"
  else
    log "starting postgres on 127.0.0.1:$PG_PORT"
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$LOG_DIR/postgres.log" -w -t 60 \
      -o "-c port=$PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG_RUN -c max_connections=300 -c fsync=on" \
      start >/dev/null || die "postgres did not start; see $LOG_DIR/postgres.log"
  fi
  # Roles and databases of the project (idempotent).
  psql_super -d postgres <<SQL
SELECT 'CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD ''$PG_PASSWORD'''
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') \gexec
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER'
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_DB') \gexec
SELECT 'CREATE ROLE $REGISTRY_USER LOGIN PASSWORD ''$REGISTRY_PASSWORD'''
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$REGISTRY_USER') \gexec
SELECT 'CREATE DATABASE $REGISTRY_DB OWNER $REGISTRY_USER'
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$REGISTRY_DB') \gexec
SQL
  # The services' and the analyst's roles (docs/security.md): group roles the migrations grant
  # to, and a LOGIN role in each.
  local r login group pass
  for r in "${PG_SERVICE_ROLES[@]}"; do
    read -r login group pass <<< "$r"
    psql_super -d postgres <<SQL
SELECT 'CREATE ROLE $group NOLOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$group') \gexec
SELECT 'CREATE ROLE $login LOGIN PASSWORD ''$pass''' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$login') \gexec
GRANT $group TO $login;
SQL
  done
}

pg_down() {
  if [[ -f "$PG_DATA/PG_VERSION" ]] && pg_running; then
    log "stopping postgres"
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
  fi
}

# ---------------------------------------------------------------- Kafka
kafka_dir() { echo "$FUNNEL_STACK_DIR/kafka/node-$1"; }

kafka_write_config() { # kafka_write_config NODE COUNT
  local i=$1 n=$2 dir voters="" j
  dir=$(kafka_dir "$i")
  for ((j = 1; j <= n; j++)); do voters+="${voters:+,}$j@127.0.0.1:$(kafka_controller_port "$j")"; done
  local rf=1 isr=1
  if ((n >= 3)); then rf=3; isr=2; fi
  mkdir -p "$dir/data"
  cat > "$dir/server.properties" <<PROPS
# Written by infra/local/stack.sh: node $i of $n, KRaft combined broker+controller.
process.roles=broker,controller
node.id=$i
# PLAINTEXT: the stack's own tools and tests, on loopback. SASL_SSL: clients with TLS and a
# SCRAM-SHA-512 user (stack.sh kafka-user), authorized by ACLs (stack.sh kafka-grant).
listeners=PLAINTEXT://127.0.0.1:$(kafka_broker_port "$i"),CONTROLLER://127.0.0.1:$(kafka_controller_port "$i"),SASL_SSL://127.0.0.1:$(kafka_sasl_port "$i")
advertised.listeners=PLAINTEXT://127.0.0.1:$(kafka_broker_port "$i"),SASL_SSL://127.0.0.1:$(kafka_sasl_port "$i")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS_DIR/broker.pem
# ACLs decide what a SASL user may do. The loopback PLAINTEXT listener and the controllers
# (principal ANONYMOUS) are the stack's operators; production has no such listener.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
$( ((n == 1)) && echo "controller.quorum.bootstrap.servers=127.0.0.1:$(kafka_controller_port 1)" || echo "controller.quorum.voters=$voters")
log.dirs=$dir/data
num.partitions=$TOPIC_PARTITIONS
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
# Replay re-reads the input topic: keep it (per-topic retention.ms=-1 on the funnel topics).
log.retention.hours=168
PROPS
}

tls_up() {
  # A local CA and the brokers' certificate (127.0.0.1 and localhost), made once; clients
  # trust $TLS_DIR/ca.pem (FUNNEL_KAFKA_SSL_CA_LOCATION).
  [[ -s "$TLS_DIR/broker.pem" && -s "$TLS_DIR/ca.pem" ]] && return 0
  log "making a local CA and the brokers' TLS certificate in $TLS_DIR"
  mkdir -p "$TLS_DIR"
  local d=$TLS_DIR
  openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 3650 -subj "/CN=Funnel local stack CA" \
    -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -sha256 -nodes -subj "/CN=localhost" \
    -keyout "$d/broker.key" -out "$d/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$d/san.ext"
  openssl x509 -req -sha256 -days 3650 -in "$d/broker.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
    -CAcreateserial -extfile "$d/san.ext" -out "$d/broker.crt" 2>/dev/null
  # Kafka's PEM key store: the PKCS#8 key, then the certificate.
  cat "$d/broker.key" "$d/broker.crt" > "$d/broker.pem.new" && mv "$d/broker.pem.new" "$d/broker.pem"
}

kafka_user() { # kafka_user NAME PASSWORD
  "$FUNNEL_ROOT/infra/local/bin/kafka-configs" --bootstrap-server "$(kafka_bootstrap)" --alter \
    --entity-type users --entity-name "$1" --add-config "SCRAM-SHA-512=[password=$2]" >/dev/null \
    || die "could not store the SCRAM credentials of $1"
}

kafka_grant() { # kafka_grant ROLE NAME TOPICS [GROUPS]: the ACLs docs/security.md lists for ROLE
  local role=$1 user=$2 topics=$3 groups=${4:-} acls
  acls=("$FUNNEL_ROOT/infra/local/bin/kafka-acls" --bootstrap-server "$(kafka_bootstrap)" --add --allow-principal "User:$user")
  case "$role" in
    # Produces chat messages (funnel-ingest, an integration producing straight to Kafka,
    # funnel-loadtest --mode kafka).
    ingest) "${acls[@]}" --operation Write --operation Describe --topic "$topics" --resource-pattern-type prefixed >/dev/null ;;
    # Reads the chat messages and the dead letters, writes dead letters (and redriven
    # messages), and owns its consumer groups (generations, redrive: same prefix).
    processor)
      [[ -n "$groups" ]] || die "kafka-grant processor NAME TOPICS GROUPS: the consumer groups' prefix is missing"
      "${acls[@]}" --operation Read --operation Write --operation Describe --topic "$topics" --resource-pattern-type prefixed >/dev/null &&
      "${acls[@]}" --operation Read --operation Describe --operation Delete --group "$groups" --resource-pattern-type prefixed >/dev/null ;;
    *) die "kafka-grant: unknown role $role (ingest or processor)" ;;
  esac || die "could not add the ACLs of $user"
}

kafka_java() { # kafka_java HEAP MAINCLASS ARGS...
  local heap=$1; shift
  "$(java_bin)" "-Xmx$heap" "-Xms$heap" -XX:+UseG1GC -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$FUNNEL_ROOT/infra/local/log4j2.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}

kafka_node_up() { # kafka_node_up NODE
  local i=$1 dir pidf
  dir=$(kafka_dir "$i"); pidf="$RUN_DIR/kafka-$i.pid"
  if pid_alive "$pidf"; then return 0; fi
  # The configuration follows this script, also for a cluster formatted by an older one.
  tls_up
  kafka_write_config "$i" "$(kafka_node_count)"
  : > "$LOG_DIR/kafka-$i.log.new"
  [[ -f "$LOG_DIR/kafka-$i.log" ]] && cat "$LOG_DIR/kafka-$i.log" >> "$LOG_DIR/kafka-$i.log.old" 2>/dev/null
  mv "$LOG_DIR/kafka-$i.log.new" "$LOG_DIR/kafka-$i.log"
  nohup "$(java_bin)" -Xmx1g -Xms512m -XX:+UseG1GC -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$FUNNEL_ROOT/infra/local/log4j2.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" >> "$LOG_DIR/kafka-$i.log" 2>&1 &
  echo $! > "$pidf"
}

kafka_node_ready() { grep -q "Kafka Server started" "$LOG_DIR/kafka-$1.log"; }

kafka_up() {
  local n formatted i
  n=$(kafka_node_count); formatted=$(kafka_nodes_running_config)
  if [[ -n "$formatted" && "$formatted" != "$n" ]]; then
    die "the Kafka data in $FUNNEL_STACK_DIR/kafka was formatted for $formatted node(s), not $n; run 'make stack-clean' first (deletes the stack's data) or use KAFKA_NODES=$formatted"
  fi
  mkdir -p "$LOG_DIR" "$RUN_DIR" "$FUNNEL_STACK_DIR/kafka"
  if [[ -z "$formatted" ]]; then
    local cluster_id
    cluster_id=$(kafka_java 256m kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
    log "formatting a $n-node KRaft cluster ($cluster_id)"
    for ((i = 1; i <= n; i++)); do
      kafka_write_config "$i" "$n"
      if ((n == 1)); then
        kafka_java 256m kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$(kafka_dir "$i")/server.properties" >/dev/null
      else
        kafka_java 256m kafka.tools.StorageTool format -t "$cluster_id" -c "$(kafka_dir "$i")/server.properties" >/dev/null
      fi
    done
    echo "$n" > "$FUNNEL_STACK_DIR/kafka/nodes"
  fi
  for ((i = 1; i <= n; i++)); do
    if pid_alive "$RUN_DIR/kafka-$i.pid"; then
      log "kafka node $i already running on 127.0.0.1:$(kafka_broker_port "$i")"
    else
      log "starting kafka node $i on 127.0.0.1:$(kafka_broker_port "$i")"
      kafka_node_up "$i"
    fi
  done
  for ((i = 1; i <= n; i++)); do
    wait_for 120 "kafka node $i" kafka_node_ready "$i" \
      || die "kafka node $i did not start; see $LOG_DIR/kafka-$i.log"
  done
  create_topics "$n"
}

create_topics() {
  local n=$1 rf=1 topic
  ((n >= 3)) && rf=3
  for topic in "$TOPIC_MESSAGES" "$TOPIC_DLQ"; do
    # retention.ms=-1: the input topic is the replay log (docs/replay.md).
    "$FUNNEL_ROOT/infra/local/bin/kafka-topics" --bootstrap-server "$(kafka_bootstrap)" \
      --create --if-not-exists --topic "$topic" --partitions "$TOPIC_PARTITIONS" \
      --replication-factor "$rf" --config retention.ms=-1 >/dev/null 2>&1 \
      || die "could not create topic $topic; see $LOG_DIR/kafka-1.log"
  done
}

kafka_node_down() { stop_pidfile "$RUN_DIR/kafka-$1.pid" "${2:-TERM}"; } # NODE [SIGNAL]

kafka_down() {
  local n i
  n=$(kafka_node_count)
  for ((i = n; i >= 1; i--)); do
    pid_alive "$RUN_DIR/kafka-$i.pid" && log "stopping kafka node $i"
    kafka_node_down "$i"
  done
}

# ---------------------------------------------------------------- Apicurio Registry
registry_ready() { curl -fsS "$(registry_url)/subjects" >/dev/null; }

registry_up() {
  local pidf="$RUN_DIR/registry.pid"
  mkdir -p "$LOG_DIR" "$RUN_DIR"
  if pid_alive "$pidf"; then
    log "registry already running on 127.0.0.1:$REGISTRY_PORT"
  else
    log "starting Apicurio Registry on 127.0.0.1:$REGISTRY_PORT"
    (
      cd "$APICURIO_HOME"
      APICURIO_STORAGE_KIND=sql APICURIO_STORAGE_SQL_KIND=postgresql \
      APICURIO_DATASOURCE_URL="jdbc:postgresql://127.0.0.1:$PG_PORT/$REGISTRY_DB" \
      APICURIO_DATASOURCE_USERNAME=$REGISTRY_USER APICURIO_DATASOURCE_PASSWORD=$REGISTRY_PASSWORD \
      nohup "$(java_bin)" -Xmx512m -XX:+UseG1GC \
        -Dquarkus.http.host=127.0.0.1 "-Dquarkus.http.port=$REGISTRY_PORT" \
        -Dquarkus.management.host=127.0.0.1 "-Dquarkus.management.port=$REGISTRY_MGMT_PORT" \
        -Dquarkus.log.console.json=false \
        -jar quarkus-run.jar >> "$LOG_DIR/registry.log" 2>&1 &
      echo $! > "$pidf"
    )
  fi
  wait_for 180 registry registry_ready || die "registry did not answer; see $LOG_DIR/registry.log"
  # Schema changes must stay BACKWARD compatible (contract, Kafka section).
  curl -fsS -X PUT -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
    --data '{"compatibility":"BACKWARD"}' "$(registry_url)/config" >/dev/null \
    || die "could not set the registry's BACKWARD compatibility rule"
}

registry_down() {
  pid_alive "$RUN_DIR/registry.pid" && log "stopping registry"
  stop_pidfile "$RUN_DIR/registry.pid"
}

# ---------------------------------------------------------------- commands
status() {
  local n i state
  printf '%-12s %-8s %s\n' COMPONENT STATE ADDRESS
  if has postgres; then
    pg_running 2>/dev/null && state=running || state=stopped
    printf '%-12s %-8s %s\n' postgres "$state" "$(database_url)"
  fi
  if has kafka; then
    n=$(kafka_node_count)
    for ((i = 1; i <= n; i++)); do
      pid_alive "$RUN_DIR/kafka-$i.pid" && state=running || state=stopped
      printf '%-12s %-8s %s\n' "kafka-$i" "$state" "127.0.0.1:$(kafka_broker_port "$i") (SASL_SSL :$(kafka_sasl_port "$i"), controller :$(kafka_controller_port "$i"))"
    done
  fi
  if has registry; then
    pid_alive "$RUN_DIR/registry.pid" && state=running || state=stopped
    printf '%-12s %-8s %s\n' registry "$state" "$(registry_url)"
  fi
  for svc in ingest processor; do
    if [[ -f "$RUN_DIR/$svc.pid" ]]; then
      pid_alive "$RUN_DIR/$svc.pid" && state=running || state=stopped
      printf '%-12s %-8s %s\n' "$svc" "$state" "log: $LOG_DIR/$svc.log"
    fi
  done
  echo "data and logs: $FUNNEL_STACK_DIR"
}

case "${1:-}" in
  up)
    "$FUNNEL_ROOT/infra/local/install.sh"
    has postgres && pg_up
    has kafka && kafka_up
    has registry && registry_up
    status ;;
  down)
    has registry && registry_down
    has kafka && kafka_down
    has postgres && pg_down
    true ;;
  status) status ;;
  clean)
    "$0" down
    log "deleting $FUNNEL_STACK_DIR"
    rm -rf "$FUNNEL_STACK_DIR" ;;
  kafka-user) kafka_user "${2:?name}" "${3:?password}" ;;
  kafka-grant) kafka_grant "${2:?role}" "${3:?name}" "${4:?topic prefix}" "${5:-}" ;;
  kill-kafka-node) kafka_node_down "${2:?node}" KILL ;;
  start-kafka-node)
    kafka_node_up "${2:?node}"
    wait_for 120 "kafka node $2" kafka_node_ready "$2" || die "kafka node $2 did not start" ;;
  *) echo "usage: $0 up|down|status|clean|kafka-user NAME PASSWORD|kafka-grant ROLE NAME TOPICS [GROUPS]|kill-kafka-node N|start-kafka-node N" >&2; exit 2 ;;
esac
