#!/usr/bin/env bash
# Three Palisade nodes and one Redis on this machine, all on loopback (docs/cluster.md).
#
#   scripts/local-cluster.sh            # build, start, wait for Ctrl-C, stop everything
#
# Ports: Redis $REDIS_PORT (default 6390); node N (1..3) serves echo 876N, secure 888N and
# admin 910N. The JWT secret is .dev/jwt-secret (created by `cargo xtask run`, or here).
# Redis keeps nothing on disk (--save '' --appendonly no). Needs redis-server in PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_PORT="${REDIS_PORT:-6390}"
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 1; }

cargo build -p palisade-server
BIN="$PWD/target/debug/palisade"

DIR="$PWD/.dev/cluster"
mkdir -p "$DIR"
if [ ! -s .dev/jwt-secret ]; then
    umask 077
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > .dev/jwt-secret
fi

PIDS=()
stop() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "stopped"
}
trap stop EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    >"$DIR/redis.log" 2>&1 &
PIDS+=($!)

for n in 1 2 3; do
    mkdir -p "$DIR/node-$n"
    cat >"$DIR/node-$n/palisade.toml" <<EOF
[echo]
listen = "127.0.0.1:876$n"
[secure]
listen = "127.0.0.1:888$n"
[admin]
listen = "127.0.0.1:910$n"
[auth]
secret_file = "$PWD/.dev/jwt-secret"
[log]
dir = "$DIR/node-$n"
[cluster]
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
node_id = "node-$n"
EOF
    "$BIN" --config "$DIR/node-$n/palisade.toml" >"$DIR/node-$n/stdout.log" 2>"$DIR/node-$n/console.log" &
    PIDS+=($!)
done

sleep 1
cat <<EOF
Redis on 127.0.0.1:$REDIS_PORT; nodes node-1..3 (logs in $DIR):
  secure  ws://127.0.0.1:8881/  ws://127.0.0.1:8882/  ws://127.0.0.1:8883/
  admin   http://127.0.0.1:9101/  http://127.0.0.1:9102/  http://127.0.0.1:9103/

Try:
  TOKEN=\$($BIN --config $DIR/node-1/palisade.toml token --user-id 42)
  # connect two clients as user 42 to 8881 and 8882, send \$TOKEN first, then:
  curl -s http://127.0.0.1:9103/sessions
  curl -s -X POST -d '{"user_id": "42", "data": "hello"}' -H 'Content-Type: application/json' http://127.0.0.1:9101/publish
  curl -s -X POST -d '{"ip": "192.0.2.1", "secs": 60}' -H 'Content-Type: application/json' http://127.0.0.1:9101/bans
  curl -s http://127.0.0.1:9102/bans
  curl -s http://127.0.0.1:9102/readyz     # stop Redis to see the outage
Ctrl-C stops everything.
EOF
wait
