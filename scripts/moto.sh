#!/usr/bin/env bash
# A local S3 API server for the S3 tests: moto in server mode on 127.0.0.1.
#
#   scripts/moto.sh start   create the venv and install moto[server] if missing, start the
#                           server in the background, wait until it answers, write the env
#   scripts/moto.sh stop    stop the server this script started
#   scripts/moto.sh env     print the env file's path (source it to reach the server)
#
# The env file ($CAIRN_MOTO_DIR/env, by default $HOME/.cache/cairn-moto/env) holds
# AWS_ENDPOINT=http://127.0.0.1:PORT, AWS_ALLOW_HTTP=true, dummy keys and AWS_REGION, as
# `export` lines; tests/s3_storage.rs reads it when AWS_ENDPOINT is not already set.
# PORT is $CAIRN_MOTO_PORT, or a free port chosen at start.
set -euo pipefail

dir="${CAIRN_MOTO_DIR:-$HOME/.cache/cairn-moto}"
venv="$dir/venv"
pidfile="$dir/moto.pid"
envfile="$dir/env"
log="$dir/moto.log"

free_port() {
  "$venv/bin/python" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

answers() {
  "$venv/bin/python" - "$1" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:%s/" % sys.argv[1], timeout=1).read()
except Exception:
    sys.exit(1)
EOF
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

start() {
  mkdir -p "$dir"
  if running; then
    echo "moto: already running (pid $(cat "$pidfile")); env in $envfile"
    return 0
  fi
  if [ ! -x "$venv/bin/moto_server" ]; then
    echo "moto: installing moto[server] into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]'
  fi
  local port="${CAIRN_MOTO_PORT:-$(free_port)}"
  # setsid: its own process group, so `stop` ends the server and nothing else.
  setsid "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if answers "$port"; then
      cat >"$envfile" <<EOF
export AWS_ENDPOINT=http://127.0.0.1:$port
export AWS_ALLOW_HTTP=true
export AWS_ACCESS_KEY_ID=cairn-test
export AWS_SECRET_ACCESS_KEY=cairn-test
export AWS_REGION=us-east-1
EOF
      echo "moto: listening on 127.0.0.1:$port (pid $(cat "$pidfile")); env in $envfile"
      return 0
    fi
    if ! running; then
      break
    fi
    sleep 0.2
  done
  echo "moto: the server did not start; its log ($log):" >&2
  tail -n 30 "$log" >&2 || true
  stop
  return 1
}

stop() {
  if running; then
    local pid
    pid="$(cat "$pidfile")"
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    echo "moto: stopped (pid $pid)"
  fi
  rm -f "$pidfile" "$envfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "$envfile" ;;
  *)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac
