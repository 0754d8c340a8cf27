/**
 * Outcomes batched in memory and sent per tenant as `{batch_id, records}`.
 *
 * A batch is cut once (its records fixed, its id drawn) and then only ever sent as it is: a batch
 * that failed is retried with the same id and the same records, so the server, which counts a
 * batch id once, counts it once however many attempts reach it. Outcomes without a score or a
 * latency are folded into one record per (model, success) with a `count`. Memory is bounded: past
 * `maxQueuedRecords` the oldest waiting batches are dropped (and counted in `stats.dropped`).
 */

import { randomUUID } from "node:crypto";

export interface Outcome {
  success: boolean;
  /** The request's quality score, if the app has one. */
  score?: number;
  latencyMs?: number;
}

export interface OutcomeRecord {
  model: string;
  success: boolean;
  score?: number;
  latency_ms?: number;
  /** How many identical outcomes this record stands for (absent: 1). */
  count?: number;
  /** When it happened (the first of them for a count), ISO 8601 UTC. */
  at?: string;
}

export interface OutcomeBatch {
  batch_id: string;
  records: OutcomeRecord[];
}

/** What one attempt came to: done, worth another attempt with the same id, or refused for good. */
export type SendResult = "sent" | "retry" | "drop";
export type Send = (tenant: string, batch: OutcomeBatch) => Promise<SendResult>;

export interface OutboxOptions {
  flushIntervalMs: number;
  maxBatchRecords: number;
  maxQueuedRecords: number;
  retryBaseMs: number;
  retryMaxMs: number;
  onDrop?: (tenant: string, outcomes: number, reason: string) => void;
}

export interface OutboxStats {
  /** Outcomes recorded and not yet acknowledged by the server. */
  pending: number;
  /** Outcomes the server acknowledged. */
  sent: number;
  /** Outcomes given up: refused by the server, over the memory bound, or unsent at close. */
  dropped: number;
  /** Batches sent again after a failed attempt. */
  retries: number;
}

interface Open {
  records: OutcomeRecord[];
  folded: Map<string, OutcomeRecord>;
  outcomes: number;
}

interface Queued {
  tenant: string;
  batch: OutcomeBatch;
  outcomes: number;
  attempts: number;
  dueAt: number;
  sending: boolean;
}

export class Outbox {
  readonly #send: Send;
  readonly #options: OutboxOptions;
  readonly #open = new Map<string, Open>();
  #queue: Queued[] = [];
  readonly #inFlight = new Map<string, Promise<void>>(); // tenant -> its one attempt under way
  #queuedRecords = 0;
  #flushTimer: ReturnType<typeof setInterval> | null = null;
  #retryTimer: ReturnType<typeof setTimeout> | null = null;
  #closed = false;
  readonly stats: OutboxStats = { pending: 0, sent: 0, dropped: 0, retries: 0 };

  constructor(send: Send, options: OutboxOptions) {
    this.#send = send;
    this.#options = options;
  }

  /** Notes one outcome; throws TypeError on a malformed one (nothing is recorded then). */
  record(tenant: string, model: string, outcome: Outcome): void {
    if (this.#closed) throw new Error("the client is closed: outcomes are no longer accepted");
    if (typeof tenant !== "string" || tenant === "") throw new TypeError("tenant must be a non-empty string");
    if (typeof model !== "string" || model === "") throw new TypeError("model must be a non-empty string");
    if (outcome === null || typeof outcome !== "object" || typeof outcome.success !== "boolean") {
      throw new TypeError("outcome.success must be a boolean");
    }
    const { success, score, latencyMs } = outcome;
    if (score !== undefined && !Number.isFinite(score)) throw new TypeError("outcome.score must be a finite number");
    if (latencyMs !== undefined && !(Number.isFinite(latencyMs) && latencyMs >= 0)) {
      throw new TypeError("outcome.latencyMs must be a finite number >= 0");
    }
    let open = this.#open.get(tenant);
    if (open === undefined) {
      open = { records: [], folded: new Map(), outcomes: 0 };
      this.#open.set(tenant, open);
    }
    open.outcomes++;
    this.stats.pending++;
    if (score === undefined && latencyMs === undefined) {
      const key = `${success ? 1 : 0}${model}`;
      const record = open.folded.get(key);
      if (record !== undefined) {
        record.count = (record.count ?? 1) + 1;
        return;
      }
      const first: OutcomeRecord = { model, success, count: 1, at: new Date().toISOString() };
      open.folded.set(key, first);
      open.records.push(first);
    } else {
      const record: OutcomeRecord = { model, success, at: new Date().toISOString() };
      if (score !== undefined) record.score = score;
      if (latencyMs !== undefined) record.latency_ms = latencyMs;
      open.records.push(record);
    }
    if (open.records.length >= this.#options.maxBatchRecords) {
      this.#cut(tenant, open);
      this.#pump();
    }
    this.#startTimer();
  }

  /**
   * Cuts every open batch and sends every waiting batch now (retries too); resolves when each
   * has had one attempt, whatever its result.
   */
  async flush(): Promise<void> {
    for (const [tenant, open] of this.#open) this.#cut(tenant, open);
    const targets = this.#queue.map((item) => ({ item, attempts: item.attempts }));
    for (;;) {
      const waiting = targets.some(
        ({ item, attempts }) => this.#queue.includes(item) && (item.attempts === attempts || item.sending),
      );
      if (!waiting) return;
      this.#pump(true);
      if (this.#inFlight.size === 0) return;
      await Promise.race(this.#inFlight.values());
    }
  }

  /**
   * Stops taking outcomes, cuts and sends everything once more (failed batches too, with their
   * ids), waits up to `timeoutMs`, then counts what is left as dropped.
   */
  async close(timeoutMs: number): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#flushTimer) clearInterval(this.#flushTimer);
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    const deadline = Date.now() + timeoutMs;
    for (const [tenant, open] of this.#open) this.#cut(tenant, open);
    // One more attempt per batch (a failure now is final), tenant by tenant in order.
    while (this.#queue.length > 0 && Date.now() < deadline) {
      this.#pump(true);
      const left = deadline - Date.now();
      await Promise.race([Promise.all(this.#inFlight.values()), sleep(Math.max(0, left))]);
    }
    for (const item of this.#queue) this.#drop(item, "unsent when the client closed");
    this.#queue = [];
  }

  #startTimer(): void {
    if (this.#flushTimer !== null || this.#closed) return;
    this.#flushTimer = setInterval(() => {
      for (const [tenant, open] of this.#open) this.#cut(tenant, open);
      this.#pump();
    }, this.#options.flushIntervalMs);
    this.#flushTimer.unref?.();
  }

  #cut(tenant: string, open: Open): void {
    if (open.records.length === 0) return;
    this.#open.delete(tenant);
    this.#queue.push({
      tenant,
      batch: { batch_id: randomUUID(), records: open.records },
      outcomes: open.outcomes,
      attempts: 0,
      dueAt: 0,
      sending: false,
    });
    this.#queuedRecords += open.records.length;
    // Bounded memory: the oldest batches not under way go first.
    while (this.#queuedRecords > this.#options.maxQueuedRecords) {
      const index = this.#queue.findIndex((q) => !q.sending);
      if (index < 0) break;
      const [oldest] = this.#queue.splice(index, 1);
      this.#drop(oldest!, "over the memory bound (maxQueuedRecords)");
    }
  }

  /** Starts one attempt per tenant for its first batch that is due (all of them when `now`). */
  #pump(now = false): void {
    const time = Date.now();
    let nextDue = Infinity;
    const started = new Set<string>();
    for (const item of this.#queue) {
      if (this.#inFlight.has(item.tenant) || started.has(item.tenant)) continue;
      if (!now && item.dueAt > time) {
        nextDue = Math.min(nextDue, item.dueAt);
        started.add(item.tenant); // keep a tenant's batches in order
        continue;
      }
      started.add(item.tenant);
      item.sending = true;
      this.#inFlight.set(item.tenant, this.#attempt(item));
    }
    if (nextDue < Infinity && !this.#closed) {
      if (this.#retryTimer) clearTimeout(this.#retryTimer);
      this.#retryTimer = setTimeout(() => this.#pump(), Math.max(0, nextDue - Date.now()));
      this.#retryTimer.unref?.();
    }
  }

  async #attempt(item: Queued): Promise<void> {
    let result: SendResult;
    try {
      if (item.attempts > 0) this.stats.retries++;
      item.attempts++;
      result = await this.#send(item.tenant, item.batch);
    } catch {
      result = "retry";
    }
    this.#inFlight.delete(item.tenant);
    item.sending = false;
    const index = this.#queue.indexOf(item);
    if (index < 0) return; // dropped meanwhile
    if (result === "retry" && !this.#closed) {
      const { retryBaseMs, retryMaxMs } = this.#options;
      item.dueAt = Date.now() + backoff(item.attempts, retryBaseMs, retryMaxMs);
      this.#pump();
      return;
    }
    this.#queue.splice(index, 1);
    if (result === "sent") {
      this.#queuedRecords -= item.batch.records.length;
      this.stats.sent += item.outcomes;
      this.stats.pending -= item.outcomes;
    } else {
      this.#drop(item, result === "drop" ? "refused by the server" : "failed when the client closed");
    }
    if (!this.#closed) this.#pump();
  }

  #drop(item: Queued, reason: string): void {
    this.#queuedRecords -= item.batch.records.length;
    this.stats.dropped += item.outcomes;
    this.stats.pending -= item.outcomes;
    this.#options.onDrop?.(item.tenant, item.outcomes, reason);
  }
}

/** Exponential backoff with full jitter: uniform in [0, min(max, base * 2^attempt)). */
export function backoff(attempt: number, baseMs: number, maxMs: number): number {
  return Math.random() * Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    timer.unref?.();
  });
}
