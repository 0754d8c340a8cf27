/**
 * The change stream, `GET /v1/stream`: one Server-Sent Events connection, reopened with
 * exponential backoff and full jitter whenever it fails, ends, or stays silent (no event, no
 * heartbeat) for longer than `idleTimeoutMs`. What the events mean is the client's business.
 */

import { RequestError } from "./errors.js";
import { asError, statusError, type Http } from "./http.js";
import { backoff } from "./outcomes.js";
import { SseParser, type SseEvent } from "./sse.js";

const PATH = "/v1/stream";

export interface StreamHandlers {
  /** Connection number `connection` is open (numbers grow from 1). */
  opened(connection: number): void;
  /** Bytes arrived on it: it is alive. */
  alive(connection: number): void;
  event(event: SseEvent): void;
  /** The open connection is gone (a reconnection is scheduled). */
  down(): void;
  error(error: Error): void;
}

export interface StreamOptions {
  idleTimeoutMs: number;
  reconnectBaseMs: number;
  reconnectMaxMs: number;
}

export class ChangeStream {
  /** The current (or last) connection's number; 0 before the first. */
  connection = 0;
  up = false;
  readonly #http: Http;
  readonly #options: StreamOptions;
  readonly #on: StreamHandlers;
  #closed = false;
  #abort: AbortController | null = null;
  #wake: (() => void) | null = null;
  #lastEventId = "";

  constructor(http: Http, options: StreamOptions, handlers: StreamHandlers) {
    this.#http = http;
    this.#options = options;
    this.#on = handlers;
  }

  start(): void {
    void this.#loop();
  }

  close(): void {
    this.#closed = true;
    this.#abort?.abort();
    this.#wake?.();
  }

  async #loop(): Promise<void> {
    let failures = 0;
    while (!this.#closed) {
      const parser = new SseParser((event) => this.#on.event(event));
      let opened = false;
      try {
        opened = await this.#connect(parser);
      } catch (error) {
        if (!this.#closed) this.#on.error(asError(error, PATH));
      } finally {
        if (parser.lastEventId !== "") this.#lastEventId = parser.lastEventId;
        if (this.up) {
          this.up = false;
          if (!this.#closed) this.#on.down();
        }
      }
      if (this.#closed) break;
      failures = opened ? 0 : failures + 1;
      const base = Math.max(this.#options.reconnectBaseMs, parser.retry ?? 0);
      await this.#pause(backoff(failures, base, this.#options.reconnectMaxMs));
    }
  }

  /** One connection; resolves at its end (true: it had opened), rejects on failure. */
  async #connect(parser: SseParser): Promise<boolean> {
    const controller = new AbortController();
    this.#abort = controller;
    const headers: Record<string, string> = { accept: "text/event-stream", "cache-control": "no-cache" };
    if (this.#lastEventId !== "") headers["last-event-id"] = this.#lastEventId;
    let idled = false;
    const read = async (response: Response): Promise<boolean> => {
      if (!response.ok) throw statusError(PATH, response.status, null);
      const type = response.headers.get("content-type") ?? "";
      if (!type.startsWith("text/event-stream") || response.body === null) {
        throw new RequestError(PATH, response.status, `not an event stream (${type || "no type"})`);
      }
      this.up = true;
      const connection = ++this.connection;
      this.#on.opened(connection);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let idle: ReturnType<typeof setTimeout> | null = null;
      const watch = (): void => {
        if (idle) clearTimeout(idle);
        idle = setTimeout(() => {
          idled = true;
          controller.abort();
        }, this.#options.idleTimeoutMs);
        idle.unref?.();
      };
      watch();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) return true;
          watch();
          this.#on.alive(connection);
          parser.push(decoder.decode(value, { stream: true }));
        }
      } catch (error) {
        if (idled) throw new RequestError(PATH, null, "silent for longer than streamIdleTimeoutMs");
        throw error;
      } finally {
        if (idle) clearTimeout(idle);
      }
    };
    return this.#http.request(PATH, { headers }, read, controller, true);
  }

  #pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wake = done;
    });
  }
}
