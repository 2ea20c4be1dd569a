#!/usr/bin/env bash
# `make demo`: start every service in one process on the embedded defaults (in-process store,
# models/philip-tiny), generate one batch, run a scripted 3-round session (like/dislike, upscale
# the choice) through the gateway, stop the server cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${PHILIP_DEMO_PORT:-50051}"
OUT="${PHILIP_DEMO_OUT:-out/demo}"
PROMPT="${PHILIP_DEMO_PROMPT:-a yellow triangle on a blue background}"
LOG="$OUT/server.log"
mkdir -p "$OUT"

PHILIP_LOG_FORMAT=json .venv/bin/philip serve all --port "$PORT" > "$LOG" 2>&1 &
SERVER=$!
stop_server() {
  if kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER"   # graceful: NOT_SERVING, drain, stop
    wait "$SERVER" || true
  fi
}
trap stop_server EXIT

echo "starting philip serve all on 127.0.0.1:$PORT (log: $LOG)"
if ! .venv/bin/philip health --gateway "127.0.0.1:$PORT" --wait 180 > /dev/null; then
  echo "server did not become healthy; last log lines:" >&2
  tail -n 20 "$LOG" >&2
  exit 1
fi

.venv/bin/philip generate "$PROMPT" -n 4 --seed 7 --out "$OUT" --gateway "127.0.0.1:$PORT"
echo
echo "a scripted session: round 1, like 1 / dislike 2, round 2, like 1, round 3, upscale the best"
.venv/bin/philip session "${PHILIP_DEMO_SESSION_PROMPT:-a circle}" --seed 7 --rounds 3 \
  --like 1 --dislike 2 --like 1 --finalize best --out "$OUT" --gateway "127.0.0.1:$PORT"
stop_server
trap - EXIT
echo
echo "demo done: images, contact sheets and the final x4 image are in $OUT/"
