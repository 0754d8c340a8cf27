/**
 * A Server-Sent Events parser (the WHATWG "event stream interpretation"): lines end in CRLF, LF
 * or CR; a blank line dispatches the event being built; a line starting with ":" is a comment
 * (the server's heartbeat); "field: value" loses one space after the colon; `data` lines join
 * with "\n"; an event without data is dropped; `id` without NUL sets the last event id; `retry`
 * takes digits only. An event not closed by a blank line when the stream ends is not dispatched.
 * Text in, events out: decoding (and the BOM) is the caller's `TextDecoder`.
 */

export interface SseEvent {
  /** The `event` field, "message" when absent or empty. */
  type: string;
  data: string;
  /** The last event id seen on this stream (not only this event's). */
  id: string;
}

/** Longest line kept while waiting for its end: a stream that exceeds it is broken. */
export const MAX_LINE = 1 << 20;

export class SseParser {
  lastEventId = "";
  /** The server's reconnection delay in ms (`retry:`), null until it sends one. */
  retry: number | null = null;
  readonly #onEvent: (event: SseEvent) => void;
  #partial = "";
  #skipLineFeed = false; // the previous chunk ended in CR: a leading LF belongs to that CRLF
  #type = "";
  #data = "";
  #hasData = false;

  constructor(onEvent: (event: SseEvent) => void) {
    this.#onEvent = onEvent;
  }

  /** Feeds decoded text; dispatches every event it completes. Throws on a line over MAX_LINE. */
  push(text: string): void {
    let start = 0;
    if (this.#skipLineFeed && text.length > 0) {
      if (text.charCodeAt(0) === 10) start = 1;
      this.#skipLineFeed = false;
    }
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 10 && c !== 13) continue;
      const line = this.#partial === "" ? text.slice(start, i) : this.#partial + text.slice(start, i);
      this.#partial = "";
      if (c === 13) {
        if (i + 1 < text.length) {
          if (text.charCodeAt(i + 1) === 10) i++;
        } else {
          this.#skipLineFeed = true;
        }
      }
      start = i + 1;
      this.#line(line);
    }
    if (start < text.length) {
      this.#partial += text.slice(start);
      if (this.#partial.length > MAX_LINE) {
        throw new RangeError(`event stream line longer than ${MAX_LINE} characters`);
      }
    }
  }

  /** Forgets a half-received event (after a disconnect); keeps the last event id and retry. */
  reset(): void {
    this.#partial = "";
    this.#skipLineFeed = false;
    this.#type = "";
    this.#data = "";
    this.#hasData = false;
  }

  #line(line: string): void {
    if (line === "") {
      this.#dispatch();
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ":" comment
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(line.charCodeAt(colon + 1) === 32 ? colon + 2 : colon + 1);
    }
    switch (field) {
      case "event":
        this.#type = value;
        break;
      case "data":
        this.#data = this.#hasData ? `${this.#data}\n${value}` : value;
        this.#hasData = true;
        break;
      case "id":
        if (!value.includes("\0")) this.lastEventId = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  #dispatch(): void {
    const type = this.#type;
    const data = this.#data;
    const hasData = this.#hasData;
    this.#type = "";
    this.#data = "";
    this.#hasData = false;
    if (!hasData) return;
    this.#onEvent({ type: type === "" ? "message" : type, data, id: this.lastEventId });
  }
}
