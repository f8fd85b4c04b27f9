#!/usr/bin/env bash
# The dependency rules of the workspace, checked in `make test` (before the stack is needed):
# - no crate declares a dependency it does not use (cargo-machete, installed into the cache);
# - the pure core, funnel-schemas, depends on no I/O crate;
# - the load tool depends on the pure core and the plumbing, never on a service crate.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FUNNEL_ROOT"

MACHETE_VERSION=0.9.2
tools="$FUNNEL_CACHE/tools"
machete="$tools/bin/cargo-machete"
if [[ ! -x "$machete" ]] || ! "$machete" --version 2>/dev/null | grep -q "$MACHETE_VERSION"; then
  log "installing cargo-machete $MACHETE_VERSION into $tools"
  cargo install --quiet --locked --root "$tools" --version "$MACHETE_VERSION" cargo-machete
fi
"$machete" --with-metadata || die "unused dependencies (above): remove them, or list a false positive under [package.metadata.cargo-machete] ignored"

io=$(cargo tree -p funnel-schemas -e normal --prefix none 2>/dev/null \
  | grep -E '^(rdkafka|rdkafka-sys|sqlx|sqlx-core|rocksdb|librocksdb-sys|poem|poem-openapi|tokio|reqwest|hyper) ' | sort -u || true)
[[ -z "$io" ]] || die "funnel-schemas (the pure core) depends on I/O crates: $(echo "$io" | tr '\n' ' ')"

services=$(cargo tree -p funnel-loadtest -e normal --prefix none 2>/dev/null \
  | grep -E '^(funnel-processor|funnel-http) ' | sort -u || true)
[[ -z "$services" ]] || die "funnel-loadtest depends on a service crate: $(echo "$services" | tr '\n' ' ')"
log "dependencies: none unused; funnel-schemas does no I/O; funnel-loadtest uses no service crate"
