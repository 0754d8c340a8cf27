/**
 * The client: routing documents kept fresh in memory, picks answered synchronously from them,
 * outcomes batched to the server.
 *
 * Freshness: one Server-Sent Events stream (`GET /v1/stream`) announces `routing` events
 * `{tenant, etag}`; a tenant whose etag differs from ours is refetched
 * (`GET /v1/tenants/{tenant}/routing`, with `If-None-Match`). Each time the stream (re)opens,
 * every tenant is revalidated, so nothing announced while it was down is missed, and so on a
 * `resync` event (the server may have missed changes). While the stream
 * is down the client polls every tenant instead, and reconnects with exponential backoff and
 * full jitter. Whatever fails, the last document each tenant had keeps serving.
 */

import { performance } from "node:perf_hooks";

import {
  AuthError,
  FtdeployError,
  NotReadyError,
  RequestError,
  TenantNotFoundError,
  TenantNotLoadedError,
} from "./errors.js";
import { asError, Http, sameTag, statusError } from "./http.js";
import { backoff, Outbox, type Outcome, type OutboxStats, type SendResult } from "./outcomes.js";
import { DEFAULT_MEMO_LIMIT, parseDocument, Routing, type RoutingDocument } from "./routing.js";
import type { SseEvent } from "./sse.js";
import { ChangeStream } from "./stream.js";

export type ClientState = "starting" | "ready" | "stale" | "error" | "closed";

export interface FtdeployOptions {
  /** The ftdeploy HTTP API, e.g. "https://ftdeploy.internal:8000". */
  baseUrl: string;
  /** A key with the `serve` role. Sent as `Authorization: Bearer …`, never logged. */
  apiKey: string;
  /** Tenants (slugs or ids) to load at `ready()`; others are loaded at their first `resolve`. */
  tenants?: readonly string[];
  /**
   * Documents to serve before (or without) the server: documents, or the path of a JSON file
   * holding one document or a list of them (read at `ready()`).
   */
  bootstrap?: string | URL | RoutingDocument | readonly RoutingDocument[];
  /** Subscribe to the change stream (default true); false: poll only. */
  stream?: boolean;
  /** Polling period while the stream is down or off (default 10 s; ±10% jitter). */
  pollIntervalMs?: number;
  /** A document not confirmed for this long makes the state "stale" (default 60 s). */
  staleAfterMs?: number;
  /** No byte (event or heartbeat) for this long: the stream is taken as dead (default 45 s). */
  streamIdleTimeoutMs?: number;
  /** Reconnection backoff: first delay bound and ceiling (defaults 500 ms, 30 s). */
  reconnectBaseMs?: number;
  reconnectMaxMs?: number;
  /** Per request (the stream: until its headers) (default 10 s). */
  requestTimeoutMs?: number;
  /** How long `ready()` waits for the tenants' documents (default 10 s). */
  readyTimeoutMs?: number;
  /** Outcomes: flush period, records per batch, bound of outcomes kept in memory. */
  flushIntervalMs?: number;
  maxBatchRecords?: number;
  maxQueuedRecords?: number;
  /** How long `close()` spends sending the last outcomes (default 5 s). */
  closeTimeoutMs?: number;
  /** Subjects remembered per tenant document (default 100,000). */
  memoLimit?: number;
  /** Tenants tracked at most (lazily loaded ones included; default 10,000). */
  maxTenants?: number;
  /** Called on every background failure; default: one console.warn per distinct message. */
  onError?: (error: Error) => void;
  /** A fetch implementation (default: the global one). */
  fetch?: typeof fetch;
}

interface Entry {
  /** The name the tenant is fetched by (as configured, or its id). */
  name: string;
  routing: Routing | null;
  /** The ETag the server sent with the document (or the document's own), for If-None-Match. */
  etag: string | null;
  /** performance.now() when the document was last confirmed current; null: never. */
  confirmedAt: number | null;
  /** The stream connection (number) during which the document was last confirmed; -1: none. */
  confirmedOn: number;
  inFlight: Promise<void> | null;
  again: boolean;
  /** The last attempt's failure; null after a success. */
  error: Error | null;
  attempted: boolean;
  failures: number;
  retryTimer: ReturnType<typeof setTimeout> | null;
}

const defaults = {
  stream: true,
  pollIntervalMs: 10_000,
  staleAfterMs: 60_000,
  streamIdleTimeoutMs: 45_000,
  reconnectBaseMs: 500,
  reconnectMaxMs: 30_000,
  requestTimeoutMs: 10_000,
  readyTimeoutMs: 10_000,
  flushIntervalMs: 1_000,
  maxBatchRecords: 500,
  maxQueuedRecords: 100_000,
  closeTimeoutMs: 5_000,
  memoLimit: DEFAULT_MEMO_LIMIT,
  maxTenants: 10_000,
};

export class Ftdeploy {
  readonly #http: Http;
  readonly #options: typeof defaults;
  readonly #onError: (error: Error) => void;
  readonly #bootstrap: FtdeployOptions["bootstrap"];
  readonly #entries = new Set<Entry>();
  readonly #byName = new Map<string, Entry>(); // configured names, ids and slugs
  readonly #outbox: Outbox;
  readonly #waiters = new Set<() => void>();
  #started: Promise<void> | null = null;
  #closed = false;
  #closing: Promise<void> | null = null;
  #stream: ChangeStream | null = null;
  #pollTimer: ReturnType<typeof setTimeout> | null = null;
  #lastError: Error | null = null;

  constructor(options: FtdeployOptions) {
    if (typeof options?.baseUrl !== "string" || !/^https?:\/\//.test(options.baseUrl)) {
      throw new TypeError("baseUrl must be an http(s) URL");
    }
    if (typeof options.apiKey !== "string" || options.apiKey === "") {
      throw new TypeError("apiKey must be a non-empty string");
    }
    const merged = { ...defaults };
    for (const key of Object.keys(defaults) as (keyof typeof defaults)[]) {
      const value = options[key];
      if (value !== undefined) (merged as Record<string, unknown>)[key] = value;
    }
    this.#options = merged;
    this.#http = new Http(options.baseUrl, options.apiKey, options.fetch ?? globalThis.fetch, merged.requestTimeoutMs);
    this.#onError = options.onError ?? warnOnce();
    this.#bootstrap = options.bootstrap;
    this.#outbox = new Outbox((tenant, batch) => this.#sendBatch(tenant, batch), {
      flushIntervalMs: merged.flushIntervalMs,
      maxBatchRecords: merged.maxBatchRecords,
      maxQueuedRecords: merged.maxQueuedRecords,
      retryBaseMs: merged.reconnectBaseMs,
      retryMaxMs: merged.reconnectMaxMs,
      onDrop: (tenant, count, reason) =>
        this.#report(new FtdeployError(`dropped ${count} outcomes of ${JSON.stringify(tenant)}: ${reason}`)),
    });
    for (const tenant of options.tenants ?? []) this.#entry(tenant);
    const given = options.bootstrap;
    if (given !== undefined && typeof given !== "string" && !(given instanceof URL)) {
      this.#loadBootstrap(given);
    }
  }

  /**
   * Starts keeping documents fresh and waits until every tenant named so far has one (from the
   * server, or from the bootstrap when the server cannot be reached). Rejects with AuthError
   * (401/403), TenantNotFoundError (404 for a tenant without a document) or NotReadyError after
   * `readyTimeoutMs`; the client goes on trying in the background either way.
   */
  async ready(): Promise<void> {
    await this.#start();
    const deadline = performance.now() + this.#options.readyTimeoutMs;
    for (;;) {
      const pending: Entry[] = [];
      for (const entry of this.#entries) {
        if (entry.error instanceof AuthError) throw entry.error;
        if (entry.routing === null && entry.error instanceof TenantNotFoundError) throw entry.error;
        if (entry.routing === null || !entry.attempted) pending.push(entry);
      }
      if (pending.length === 0) return;
      const left = deadline - performance.now();
      if (left <= 0 || this.#closed) {
        throw new NotReadyError(
          pending.map((e) => e.name),
          pending.find((e) => e.error)?.error ?? undefined,
        );
      }
      await this.#changed(left);
    }
  }

  /**
   * The model for this request, from the tenant's local document: null when the tenant has
   * nothing in production. Sticky per subject (the same pick as the Python resolve); without a
   * subject, a weighted random draw. Synchronous. Throws TenantNotLoadedError (and starts loading
   * the tenant) when it has no document yet, TenantNotFoundError when the server said 404.
   */
  resolve(tenant: string, subject?: string | null): string | null {
    const entry = this.#byName.get(tenant);
    const routing = entry?.routing;
    if (routing) return routing.pick(subject);
    return this.#unresolved(tenant, entry);
  }

  /** Loads one tenant's document now (resolves when it has one; rejects like `ready`). */
  async load(tenant: string): Promise<void> {
    const entry = this.#entry(tenant);
    await this.#start();
    if (entry.routing === null) await this.#refresh(entry);
    if (entry.routing === null) throw entry.error ?? new TenantNotLoadedError(tenant);
  }

  /**
   * Notes the outcome of a request served by `model`, for the canary's online metrics. Batched in
   * memory and sent within `flushIntervalMs` (`POST /v1/tenants/{tenant}/outcomes`); a failed
   * batch is retried with the same batch id. Throws TypeError on a malformed outcome.
   */
  recordOutcome(tenant: string, model: string, outcome: Outcome): void {
    this.#outbox.record(tenant, model, outcome);
  }

  /** Sends the outcomes recorded so far now; resolves when those attempts ended. */
  flush(): Promise<void> {
    return this.#outbox.flush();
  }

  /**
   * Stops the stream and the timers, sends the last outcomes (up to `closeTimeoutMs`). `resolve`
   * goes on answering from the last documents; `recordOutcome` throws.
   */
  close(): Promise<void> {
    if (this.#closing) return this.#closing;
    this.#closed = true;
    this.#closing = (async () => {
      if (this.#pollTimer) clearTimeout(this.#pollTimer);
      for (const entry of this.#entries) if (entry.retryTimer) clearTimeout(entry.retryTimer);
      this.#stream?.close();
      this.#notify();
      await this.#outbox.close(this.#options.closeTimeoutMs);
      this.#http.close();
    })();
    return this.#closing;
  }

  /**
   * "ready": every tenant's document confirmed within `staleAfterMs`; "stale": some document is
   * older (the server unreachable, say), still served; "error": a tenant has no document and its
   * load failed; "starting": a first load is under way; "closed".
   */
  get state(): ClientState {
    if (this.#closed) return "closed";
    let state: ClientState = "ready";
    const now = performance.now();
    for (const entry of this.#entries) {
      if (entry.routing === null) {
        if (entry.attempted && entry.error !== null) return "error"; // even while it retries
        state = "starting";
      } else if (state === "ready") {
        const age = entry.confirmedAt === null ? Infinity : now - entry.confirmedAt;
        if (age > this.#options.staleAfterMs) state = "stale";
      }
    }
    if (state === "ready" && this.#started === null && this.#entries.size === 0) return "starting";
    return state;
  }

  /**
   * Milliseconds since the tenant's document (the oldest of all, without a tenant) was last
   * confirmed current by the server; Infinity when never (a bootstrap document, or none).
   */
  dataAgeMs(tenant?: string): number {
    const now = performance.now();
    const age = (e: Entry): number =>
      e.routing === null || e.confirmedAt === null ? Infinity : now - e.confirmedAt;
    if (tenant !== undefined) {
      const entry = this.#byName.get(tenant);
      return entry ? age(entry) : Infinity;
    }
    let oldest = 0;
    for (const entry of this.#entries) oldest = Math.max(oldest, age(entry));
    return oldest;
  }

  /** The document a tenant is served from now, or null. */
  document(tenant: string): RoutingDocument | null {
    return this.#byName.get(tenant)?.routing?.document ?? null;
  }

  /** Whether the change stream is open now (else the client polls). */
  get streaming(): boolean {
    return this.#stream?.up ?? false;
  }

  /** The last background failure, or null. */
  get lastError(): Error | null {
    return this.#lastError;
  }

  get outcomeStats(): Readonly<OutboxStats> {
    return { ...this.#outbox.stats };
  }

  // -- tenants and documents -----------------------------------------------------------------

  #entry(name: string): Entry {
    if (typeof name !== "string" || name === "") throw new TypeError("tenant must be a non-empty string");
    let entry = this.#byName.get(name);
    if (entry === undefined) {
      entry = {
        name,
        routing: null,
        etag: null,
        confirmedAt: null,
        confirmedOn: -1,
        inFlight: null,
        again: false,
        error: null,
        attempted: false,
        failures: 0,
        retryTimer: null,
      };
      this.#entries.add(entry);
      this.#byName.set(name, entry);
    }
    return entry;
  }

  #unresolved(tenant: string, entry: Entry | undefined): never {
    if (entry === undefined) {
      if (this.#entries.size >= this.#options.maxTenants) throw new TenantNotLoadedError(tenant);
      entry = this.#entry(tenant);
    }
    if (entry.error instanceof TenantNotFoundError) throw entry.error;
    if (!this.#closed) {
      if (this.#started === null) void this.#start().catch(() => {});
      else if (entry.inFlight === null && entry.retryTimer === null) void this.#refresh(entry);
    }
    throw new TenantNotLoadedError(tenant);
  }

  #install(entry: Entry, document: RoutingDocument, etag: string | null): void {
    // Same content: keep the Routing object, and with it the memo of subjects already placed.
    if (entry.routing === null || entry.routing.etag !== document.etag) {
      entry.routing = new Routing(document, this.#options.memoLimit);
    }
    entry.etag = etag ?? document.etag;
    for (const alias of [document.tenant.id, document.tenant.slug]) {
      if (alias !== "" && !this.#byName.has(alias)) this.#byName.set(alias, entry);
    }
  }

  #loadBootstrap(given: RoutingDocument | readonly RoutingDocument[] | unknown): void {
    const list = Array.isArray(given) ? given : [given];
    for (const raw of list) {
      const document = parseDocument(raw);
      const entry =
        this.#byName.get(document.tenant.slug) ??
        this.#byName.get(document.tenant.id) ??
        this.#entry(document.tenant.id);
      if (entry.routing === null) this.#install(entry, document, null);
    }
  }

  async #start(): Promise<void> {
    if (this.#started === null) {
      this.#started = (async () => {
        const file = this.#bootstrap;
        if (typeof file === "string" || file instanceof URL) {
          const { readFile } = await import("node:fs/promises");
          this.#loadBootstrap(JSON.parse(await readFile(file, "utf8")));
        }
        if (this.#closed) return;
        if (this.#options.stream) {
          this.#stream = new ChangeStream(
            this.#http,
            {
              idleTimeoutMs: this.#options.streamIdleTimeoutMs,
              reconnectBaseMs: this.#options.reconnectBaseMs,
              reconnectMaxMs: this.#options.reconnectMaxMs,
            },
            {
              // Opened: whatever changed while we were not listening is found by revalidating.
              opened: () => {
                for (const entry of this.#entries) void this.#refresh(entry);
              },
              // Still connected: the documents confirmed on this connection are still current.
              alive: (connection) => {
                const now = performance.now();
                for (const entry of this.#entries) {
                  if (entry.confirmedOn === connection && !entry.inFlight) entry.confirmedAt = now;
                }
              },
              event: (event) => this.#onEvent(event),
              down: () => this.#schedulePoll(0), // poll from now on
              error: (error) => this.#report(error),
            },
          );
          this.#stream.start();
        }
        for (const entry of this.#entries) void this.#refresh(entry);
        this.#schedulePoll();
      })();
    }
    return this.#started;
  }

  /** One fetch of the tenant's document at a time; a request for another while one runs makes
   * it run once more after (the event may announce a newer document than the one under way). */
  #refresh(entry: Entry): Promise<void> {
    if (entry.inFlight) {
      entry.again = true;
      return entry.inFlight;
    }
    if (entry.retryTimer) {
      clearTimeout(entry.retryTimer);
      entry.retryTimer = null;
    }
    entry.inFlight = (async () => {
      try {
        do {
          entry.again = false;
          await this.#fetchDocument(entry);
        } while (entry.again && !this.#closed);
      } finally {
        entry.inFlight = null;
        this.#notify();
      }
      if (entry.routing === null && entry.error && !this.#closed) {
        // No document at all: retry sooner than the polling period.
        const delay = backoff(++entry.failures, this.#options.reconnectBaseMs, this.#options.reconnectMaxMs);
        entry.retryTimer = setTimeout(() => {
          entry.retryTimer = null;
          void this.#refresh(entry);
        }, delay);
        entry.retryTimer.unref?.();
      }
    })();
    return entry.inFlight;
  }

  async #fetchDocument(entry: Entry): Promise<void> {
    const path = `/v1/tenants/${encodeURIComponent(entry.name)}/routing`;
    const connection = this.#stream?.up ? this.#stream.connection : -1;
    const headers: Record<string, string> = { accept: "application/json" };
    if (entry.routing !== null && entry.etag !== null) headers["if-none-match"] = entry.etag;
    try {
      await this.#http.request(path, { headers }, async (response) => {
        if (response.status === 304) return;
        if (!response.ok) throw statusError(path, response.status, entry.name);
        const document = parseDocument(await response.json());
        this.#install(entry, document, response.headers.get("etag"));
      });
      entry.confirmedAt = performance.now();
      entry.confirmedOn = connection;
      entry.error = null;
      entry.failures = 0;
    } catch (error) {
      entry.error = asError(error, path);
      this.#report(entry.error);
    } finally {
      entry.attempted = true;
    }
  }

  // -- the change stream's events and the fallback polling -----------------------------------

  #onEvent(event: SseEvent): void {
    if (event.type === "resync") {
      // The server may have missed changes: revalidate everything, as when the stream opens.
      for (const entry of this.#entries) void this.#refresh(entry);
      return;
    }
    if (event.type !== "routing") return;
    let tenant: unknown;
    let etag: unknown;
    try {
      ({ tenant, etag } = JSON.parse(event.data) as { tenant?: unknown; etag?: unknown });
    } catch {
      this.#report(new RequestError("/v1/stream", null, "a routing event whose data is not JSON"));
      return;
    }
    if (typeof tenant !== "string") return;
    const entry = this.#byName.get(tenant);
    if (entry === undefined) return; // a tenant this client does not serve
    if (entry.routing !== null && typeof etag === "string" && sameTag(etag, entry.routing.etag)) {
      return;
    }
    void this.#refresh(entry);
  }

  #schedulePoll(delay?: number): void {
    if (this.#closed) return;
    if (this.#pollTimer) clearTimeout(this.#pollTimer);
    const period = this.#options.pollIntervalMs;
    this.#pollTimer = setTimeout(() => this.#poll(), delay ?? period * (0.9 + 0.2 * Math.random()));
    this.#pollTimer.unref?.();
  }

  #poll(): void {
    this.#pollTimer = null;
    if (this.#closed) return;
    for (const entry of this.#entries) {
      // With the stream up only the tenants that have no document yet need asking.
      if (!this.streaming || entry.routing === null) void this.#refresh(entry);
    }
    this.#schedulePoll();
  }

  // -- outcomes ------------------------------------------------------------------------------

  async #sendBatch(tenant: string, batch: { batch_id: string }): Promise<SendResult> {
    const path = `/v1/tenants/${encodeURIComponent(tenant)}/outcomes`;
    const init = {
      method: "POST",
      headers: { "content-type": "application/json", "idempotency-key": batch.batch_id },
      body: JSON.stringify(batch),
    };
    try {
      const status = await this.#http.request(path, init, async (response) => response.status);
      if (status >= 200 && status < 300) return "sent";
      this.#report(statusError(path, status, tenant));
      // Worth another try with the same batch id: the server may be down or busy, or get the key.
      if (status === 408 || status === 425 || status === 429 || status >= 500) return "retry";
      if (status === 401 || status === 403) return "retry";
      return "drop";
    } catch (error) {
      this.#report(asError(error, path));
      return "retry";
    }
  }

  // -- plumbing ------------------------------------------------------------------------------

  #report(error: Error): void {
    this.#lastError = error;
    try {
      this.#onError(error);
    } catch {
      // the app's handler failing must not stop the client
    }
  }

  #notify(): void {
    for (const wake of this.#waiters) wake();
    this.#waiters.clear();
  }

  #changed(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const waiters = this.#waiters;
      function done(): void {
        clearTimeout(timer);
        waiters.delete(done);
        resolve();
      }
      waiters.add(done);
    });
  }
}

function warnOnce(): (error: Error) => void {
  let last = "";
  return (error) => {
    if (error.message === last) return;
    last = error.message;
    console.warn(`[ftdeploy] ${error.message}`);
  };
}
