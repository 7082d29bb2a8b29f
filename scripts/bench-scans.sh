#!/usr/bin/env bash
# Reproduces the "Scans" figures of docs/benchmarks.md in one run on this
# machine: starts a demo node (SQLite, temp dir) and a bare HTTP endpoint,
# measures the ceilings (bare HTTP, bare SM2 verify) and the load mixes,
# prints one table, and stops everything it started.
#   DURATION=10s CONC=64 scripts/bench-scans.sh
# The timed requests go over the load generator's wire client (each worker
# writes HTTP/1.1 on its own connection); CLIENT=std uses net/http's:
#   CLIENT=std scripts/bench-scans.sh
# An aged database instead of a fresh one (scripts/prefill; the node is
# started once to create the demo city, stopped, filled, and started again):
#   PREFILL_SCANS=5000000 PREFILL_ACCOUNTS=2000000 PREFILL_JOURNAL=5000000 scripts/bench-scans.sh
# Scans spread over N terminals per mix (the demo's and new ones):
#   TERMINALS=2000 scripts/bench-scans.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONC=${CONC:-64}
SPREAD=()
[ -n "${TERMINALS:-}" ] && SPREAD=(--terminals "$TERMINALS")
BIN=$(mktemp -d)/yikatong
go build -o "$BIN" ./cmd/yikatong
DATA=$(mktemp -d)
PORT=${PORT:-18480}
BARE=${BARE_PORT:-18481}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$DATA"; }
trap cleanup EXIT
if [ -n "${PREFILL_SCANS:-}${PREFILL_ACCOUNTS:-}${PREFILL_JOURNAL:-}" ]; then
  "$BIN" serve --demo --data "$DATA" --addr 127.0.0.1:$PORT --log-level warn 2>"$DATA/node.log" & p=$!
  for _ in $(seq 1 60); do
    [ -f "$DATA/demo.json" ] && curl -sf 127.0.0.1:$PORT/healthz >/dev/null && break
    sleep 0.5
  done
  kill "$p"; wait "$p" 2>/dev/null || true
  go run ./scripts/prefill --db "$DATA/yikatong.db" --scans "${PREFILL_SCANS:-0}" --accounts "${PREFILL_ACCOUNTS:-0}" --journal "${PREFILL_JOURNAL:-0}"
  echo "database: $(du -h "$DATA/yikatong.db" | cut -f1)" >&2
  sync # the filled file's dirty pages reach the disk now, not during the runs
fi
"$BIN" serve --demo --data "$DATA" --addr 127.0.0.1:$PORT --log-level warn 2>>"$DATA/node.log" & pids+=($!)
"$BIN" load --serve-bare 127.0.0.1:$BARE 2>/dev/null & pids+=($!)
for _ in $(seq 1 60); do
  [ -f "$DATA/demo.json" ] && curl -sf 127.0.0.1:$PORT/healthz >/dev/null && curl -sf 127.0.0.1:$BARE/healthz >/dev/null && break
  sleep 0.5
done
run() { # name, args...
  local name=$1; shift
  local j; j=$("$BIN" load --json --duration "$DURATION" --client "${CLIENT:-wire}" "$@" 2>/dev/null)
  python3 - "$name" "$j" <<'PY'
import json, sys
name, r = sys.argv[1], json.loads(sys.argv[2])
ms = lambda k: r[k] / 1e6
dec = ", ".join(f"{k} {v}" for k, v in sorted(r.get("reasons", {}).items(), key=lambda kv: -kv[1])) or "-"
# Scans that found the code pool dry used a card (no SM2 verify): shown,
# since they make a code mix's figure a different mix's.
print(f"| {name} | {r['concurrency']} | {r['rate_per_s']:,.0f} | {ms('p50_ns'):.2f} | {ms('p90_ns'):.2f} | {ms('p99_ns'):.2f} | {ms('max_ns'):.1f} | {r['errors']} | {dec} | {r.get('card_fallbacks', 0)} |")
PY
}
echo "| run | conc. | scans/s | p50 ms | p90 ms | p99 ms | max ms | errors | declines | pool dry |"
echo "|---|---|---|---|---|---|---|---|---|---|"
run "ceiling: SM2 verify (all cores)" --mix sm2
run "ceiling: bare HTTP" --mix bare --node http://127.0.0.1:$BARE --concurrency "$CONC"
run "identify (YK1 codes)" --mix identify --demo "$DATA/demo.json" "${SPREAD[@]}" --concurrency "$CONC"
run "charge (cards)" --mix charge --demo "$DATA/demo.json" "${SPREAD[@]}" --concurrency "$CONC"
run "charge (cards)" --mix charge --demo "$DATA/demo.json" "${SPREAD[@]}" --concurrency 128
run "charge (cards)" --mix charge --demo "$DATA/demo.json" "${SPREAD[@]}" --concurrency 256
run "peak" --mix peak --demo "$DATA/demo.json" "${SPREAD[@]}" --concurrency "$CONC"
run "offline batches (1000 records)" --mix offline --demo "$DATA/demo.json" "${SPREAD[@]}" --concurrency 4 --batch 1000
