#!/usr/bin/env bash
# `make demo`: start every service in one process on the embedded defaults (in-process store,
# models/philip-tiny), generate one batch, run a scripted 3-round session (like/dislike, upscale
# the choice) through the gateway's gRPC edge, then a 2-round session through its HTTP/JSON + SSE
# edge with curl, stop the server cleanly, and say how to open the studio.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
PORT="${PHILIP_DEMO_PORT:-50051}"
OUT="${PHILIP_DEMO_OUT:-out/demo}"
PROMPT="${PHILIP_DEMO_PROMPT:-a yellow triangle on a blue background}"
HTTP_PROMPT="${PHILIP_DEMO_HTTP_PROMPT:-a red circle on a blue background}"
LOG="$OUT/server.log"
mkdir -p "$OUT"

# The HTTP edge: 8080 (the studio's usual port) when it is free, else any free loopback port.
HTTP_PORT="${PHILIP_DEMO_HTTP_PORT:-$("$PY" -c '
import socket
for port in (8080, 0):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
')}"
API="http://127.0.0.1:$HTTP_PORT"

PHILIP_LOG_FORMAT=json .venv/bin/philip serve all --port "$PORT" --http-port "$HTTP_PORT" > "$LOG" 2>&1 &
SERVER=$!
VIEWER=""
stop_server() {
  if [ -n "$VIEWER" ] && kill -0 "$VIEWER" 2>/dev/null; then
    kill "$VIEWER" 2>/dev/null || true
  fi
  if kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER"   # graceful: NOT_SERVING, event streams end, drain, stop
    wait "$SERVER" || true
  fi
}
trap stop_server EXIT

echo "starting philip serve all: gRPC on 127.0.0.1:$PORT, HTTP on $API (log: $LOG)"
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

# ---- the same kind of session over HTTP/JSON + Server-Sent Events, with curl ----------------------
echo
echo "over HTTP/JSON + SSE on $API with curl: a session, like 1 / dislike 2, round 2, finalize image 1"
for _ in $(seq 1 60); do
  curl -fsS "$API/readyz" > /dev/null 2>&1 && break
  sleep 0.5
done
curl -fsS "$API/readyz" > /dev/null

# json FIELD.PATH...: read a JSON body on stdin, print the value at the path (numbers index lists).
json() { "$PY" -c '
import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1:]:
    value = value[int(key)] if isinstance(value, list) else value[key]
print(value)' "$@"; }

# The SSE stream, one line per event as it arrives: the event name, then its data with every base64 PNG
# replaced by its size and the repeated session id left out; the event names also go to $EVENTS.
EVENTS="$OUT/http_events.txt"
: > "$EVENTS"
SSE_FILTER='
import re, sys
names = open(sys.argv[1], "a")
event = ""
for line in sys.stdin:
    line = line.rstrip("\n")
    if line.startswith("event: "):
        event = line[7:]
    elif line.startswith("data: "):
        data = re.sub(r"\"png\":\"([^\"]*)\"", lambda m: "\"png\":\"<%.1f kB base64>\"" % (len(m[1]) / 1024),
                      line[6:])
        data = re.sub(r"\"sessionId\":\"[^\"]*\",", "", data)
        data = data if len(data) <= 84 else data[:83] + "\u2026"
        print(f"  event: {event:<17} data: {data}", flush=True)
        names.write(event + "\n")
        names.flush()
'
wait_for() {  # wait_for EVENT N: until the stream has shown EVENT N times (at most 120 s)
  for _ in $(seq 1 600); do
    [ "$(grep -cx "$1" "$EVENTS" || true)" -ge "$2" ] && return 0
    if grep -qx -e error -e cancelled -e stream_error "$EVENTS"; then
      echo "the session failed (see the stream above)" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "no $1 event #$2 within 120 s" >&2
  return 1
}

BODY=$(printf '{"params": {"prompt": "%s", "numImages": 4, "previewEvery": 1, "seed": "7"}}' "$HTTP_PROMPT")
echo "\$ curl -X POST $API/v1/sessions -d '$BODY'"
SID=$(curl -fsS -X POST "$API/v1/sessions" -H 'Content-Type: application/json' -d "$BODY" | json sessionId)
echo "  -> 201, session $SID"
echo "\$ curl -N $API/v1/sessions/$SID/events   (in the background, until the session ends)"
curl -sSN --max-time 300 "$API/v1/sessions/$SID/events" | "$PY" -u -c "$SSE_FILTER" "$EVENTS" &
VIEWER=$!
wait_for round_images 1

LIKED=$(curl -fsS "$API/v1/sessions/$SID" | json rounds 0 images 0 image id)
DISLIKED=$(curl -fsS "$API/v1/sessions/$SID" | json rounds 0 images 1 image id)
echo "\$ curl -X POST $API/v1/sessions/$SID/feedback -d '{\"likedImageIds\": [\"$LIKED\"], \"dislikedImageIds\": [\"$DISLIKED\"]}'"
curl -fsS -X POST "$API/v1/sessions/$SID/feedback" -H 'Content-Type: application/json' \
  -d "{\"likedImageIds\": [\"$LIKED\"], \"dislikedImageIds\": [\"$DISLIKED\"]}" \
  | json runningRound | sed 's/^/  -> 200, running round /'
wait_for round_images 2

CHOSEN=$(curl -fsS "$API/v1/sessions/$SID" | json rounds 1 images 0 image id)
echo "\$ curl -X POST $API/v1/sessions/$SID/finalize -d '{\"imageId\": \"$CHOSEN\"}'"
curl -fsS -X POST "$API/v1/sessions/$SID/finalize" -H 'Content-Type: application/json' \
  -d "{\"imageId\": \"$CHOSEN\"}" | json phase | sed 's/^/  -> 202, /'
wait_for final 1
wait "$VIEWER" || true   # the stream ends with the session
VIEWER=""

FINAL=$(curl -fsS "$API/v1/sessions/$SID" | json final image id)
FINAL_PNG="$OUT/http_${SID}_final.png"
echo "\$ curl -o $FINAL_PNG $API/v1/images/$FINAL.png"
curl -fsS -o "$FINAL_PNG" "$API/v1/images/$FINAL.png"
"$PY" -c '
import os, sys
from PIL import Image
path = sys.argv[1]
with Image.open(path) as image:
    print(f"  -> {path}: {image.width}x{image.height} PNG, {os.path.getsize(path) / 1024:.1f} kB")' "$FINAL_PNG"

stop_server
trap - EXIT
echo
echo "demo done: images, contact sheets and the final x4 images are in $OUT/"
echo "the studio (the same sessions in the browser): run \`make serve\` and open http://127.0.0.1:8080/"
