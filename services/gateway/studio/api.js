// fetch() wrapper for the /v1 API: auth (401 -> ask for the key, retry), google.rpc.Status errors,
// Retry-After, Idempotency-Key, and a self-reconnecting SSE follower.

import { askForKey, getKey, setKey } from "./auth.js";
import { readSse } from "./sse.js";

/** An error answer of the API, from its google.rpc.Status body. */
export class ApiError extends Error {
  constructor(status, code, message, { field = "", retryAfter = 0, details = [] } = {}) {
    super(message);
    this.status = status; // HTTP status; 0 when the server could not be reached
    this.code = code; // google.rpc code (number) or a name
    this.field = field; // the BadRequest field violation, if any
    this.retryAfter = retryAfter; // seconds, from Retry-After
    this.details = details;
  }

  /** The server's message, plus when to try again if it said so. */
  describe() {
    return this.retryAfter ? `${this.message} (try again in ${this.retryAfter} s)` : this.message;
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

function retryAfterSeconds(res) {
  const value = res.headers.get("Retry-After");
  if (!value) return 0;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, Math.ceil((at - Date.now()) / 1000)) : 0;
}

async function errorFrom(res) {
  const retryAfter = retryAfterSeconds(res);
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON */
  }
  if (!body || typeof body.message !== "string") {
    return new ApiError(res.status, res.status, `HTTP ${res.status} ${res.statusText}`.trim(), { retryAfter });
  }
  const details = Array.isArray(body.details) ? body.details : [];
  const badRequest = details.find((d) => String(d["@type"] || "").endsWith("google.rpc.BadRequest"));
  const field = badRequest?.fieldViolations?.[0]?.field || "";
  return new ApiError(res.status, body.code, body.message, { field, retryAfter, details });
}

/** A fresh Idempotency-Key for one click. */
export function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Calls the API. `json` or `form` is the body; `idempotencyKey` goes out on every attempt of this
 * call (the automatic retries of one click). Resolves with the parsed JSON (or the Response when
 * `raw`); rejects with an ApiError carrying the server's message.
 */
export async function api(path, opts = {}) {
  const { method = "GET", json, form, idempotencyKey, signal, raw = false, headers: extra = {} } = opts;
  const canRetryNetwork = opts.retryNetwork ?? (method === "GET" || Boolean(idempotencyKey));
  let networkTries = 0;
  let authTries = 0;
  let busyTries = 0;
  for (;;) {
    const headers = { Accept: raw ? "text/event-stream" : "application/json", ...extra };
    const key = getKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form) {
      body = form;
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body, signal, cache: "no-store" });
    } catch (err) {
      if (signal?.aborted) throw err;
      if (canRetryNetwork && networkTries < 2) {
        await sleep(700 * 2 ** networkTries++, signal);
        continue;
      }
      throw new ApiError(0, "UNAVAILABLE", "Cannot reach the server (network error).");
    }
    if (res.status === 401 && authTries < 3) {
      authTries++;
      const err = await errorFrom(res);
      if (key) setKey("");
      try {
        await askForKey(key ? `That key was refused: ${err.message}` : "");
      } catch (dismissed) {
        throw new ApiError(401, 16, dismissed.message);
      }
      continue;
    }
    if (res.ok) {
      if (raw) return res;
      const text = await res.text();
      return text ? JSON.parse(text) : {};
    }
    const err = await errorFrom(res);
    // 503, and 409 with Retry-After (the same idempotent request still running), are worth a short wait;
    // a 409's key frees within 9 s even when the replica running the first try died, so wait that long.
    const running = res.status === 409 && err.retryAfter > 0;
    const transient = res.status === 503 || running;
    if (transient && busyTries < (running ? 12 : 3) && err.retryAfter <= 10) {
      busyTries++;
      await sleep(Math.max(1, err.retryAfter) * 1000, signal);
      if (signal?.aborted) throw err;
      continue;
    }
    throw err;
  }
}

const STALL_MS = 45_000; // the server sends a heartbeat every 15 s

/**
 * Follows an SSE route until it ends normally and `isFinished()` says so, or `signal` aborts.
 * A dropped connection (network error, or an early close) reconnects by itself with the last id
 * seen and backoff; `onConnection("reconnecting" | "reconnected")` reports it.
 * onEvent(name, data, id) gets each event's parsed JSON. Errors other than 5xx/429 end it (rejects).
 */
export async function followEvents(path, { lastEventId = "", onEvent, onConnection = () => {}, isFinished, signal }) {
  let lastId = lastEventId || "";
  let attempt = 0;
  let dropped = false;
  while (!signal?.aborted) {
    const conn = new AbortController();
    const abortConn = () => conn.abort();
    signal?.addEventListener("abort", abortConn, { once: true });
    let watchdog = null;
    const kick = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => conn.abort(), STALL_MS);
    };
    try {
      const headers = lastId ? { "Last-Event-ID": lastId } : {};
      kick();
      const res = await api(path, { raw: true, headers, signal: conn.signal, retryNetwork: false });
      if (dropped) onConnection("reconnected");
      dropped = false;
      attempt = 0;
      await readSse(res, (event) => {
        kick();
        if (event.id) lastId = event.id;
        let data = null;
        try {
          data = JSON.parse(event.data);
        } catch {
          return; // not one of ours
        }
        onEvent(event.event, data, event.id);
      }, kick);
      if (isFinished()) return;
    } catch (err) {
      if (signal?.aborted) return;
      const fatal = err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429;
      if (fatal) throw err;
    } finally {
      clearTimeout(watchdog);
      signal?.removeEventListener("abort", abortConn);
    }
    if (signal?.aborted) return;
    dropped = true;
    onConnection("reconnecting");
    await sleep(Math.min(10_000, 500 * 2 ** attempt++) * (0.75 + Math.random() * 0.5), signal);
  }
}
