// Server-Sent Events over fetch(): EventSource cannot send Authorization, so the stream is parsed here.

/**
 * Incremental SSE parser. Feed it text chunks; it calls onEvent({id, event, data}) for each event
 * (blank line ends one). Comment lines (":" heartbeats) are ignored. The id is the last `id:` seen.
 */
export class SseParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = null;
  }

  feed(text) {
    this.buffer += text;
    // Lines end with \n, \r\n or \r; keep a trailing partial line (and a lone trailing \r) for later.
    const lines = this.buffer.split(/\r\n|\n|\r(?!$)/);
    this.buffer = lines.pop();
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.data.length || this.event) {
        this.onEvent({ id: this.id, event: this.event || "message", data: this.data.join("\n") });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return; // heartbeat / comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id") this.id = value;
  }
}

/** Reads a fetch Response body as SSE until it ends; resolves when the server closes it. */
export async function readSse(response, onEvent, onChunk = () => {}) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new SseParser(onEvent);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    onChunk();
    parser.feed(decoder.decode(value, { stream: true }));
  }
  parser.feed(decoder.decode()); // an event cut off by the end of the stream is dropped, as EventSource does
}
