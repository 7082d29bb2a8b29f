#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need
# (PostgreSQL's server binaries; Chromium and playwright-core for the browser
# tests), then checks formatting and vet, and runs every Go test.
#
#   scripts/test.sh            everything (about 10 minutes on 2 cores)
#   FUZZ=30s scripts/test.sh   also fuzz each parser for 30 s
#   YIKATONG_BACKENDS=sqlite   limit store-backed tests to SQLite
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

need_apt=()
have_pg() {
  command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}
have_pg || need_apt+=(postgresql)
command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
if [ -d e2e ]; then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
  # (no pipe into grep -q here: with pipefail its early exit reads as failure)
  [ "$(dpkg-query -W -f='${Status}' fonts-noto-cjk 2>/dev/null)" = "install ok installed" ] || need_apt+=(fonts-noto-cjk)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [ -d e2e ] && [ ! -d e2e/node_modules/playwright-core ]; then
  log "installing playwright-core (npm)"
  (cd e2e && npm install --no-audit --no-fund --silent)
fi

log "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "not gofmt'ed:"; echo "$unformatted"; exit 1
fi

log "go vet"
go vet ./...

log "go test"
go test -count=1 -timeout 18m ./... 2>&1 | tee /tmp/yikatong-test.log
status=${PIPESTATUS[0]}
if [ "$status" != 0 ]; then exit "$status"; fi

if [ -n "${FUZZ:-}" ]; then
  log "fuzzing each target for $FUZZ"
  for pkg in $(go list ./...); do
    dir=$(go list -f '{{.Dir}}' "$pkg")
    for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
      echo "-- $pkg $f"
      go test -run '^$' -fuzz "^$f\$" -fuzztime "$FUZZ" "$pkg"
    done
  done
fi
log "all tests passed"
