/**
 * Requests to the ftdeploy HTTP API. The API key lives here only: it goes into the
 * `Authorization` header of each request and nowhere else (no message, no log, no inspectable
 * property).
 */

import { AuthError, FtdeployError, RequestError, TenantNotFoundError } from "./errors.js";

export interface RequestInit {
  method?: string;
  headers: Record<string, string>;
  body?: string;
}

export class Http {
  readonly #baseUrl: string;
  readonly #apiKey: string;
  readonly #fetch: typeof fetch;
  readonly #timeoutMs: number;
  readonly #requests = new Set<AbortController>();
  #closed = false;

  constructor(baseUrl: string, apiKey: string, fetchImpl: typeof fetch, timeoutMs: number) {
    if (typeof fetchImpl !== "function") throw new TypeError("no fetch: Node >= 18 is needed");
    this.#baseUrl = baseUrl.replace(/\/+$/, "");
    this.#apiKey = apiKey;
    this.#fetch = fetchImpl;
    this.#timeoutMs = timeoutMs;
  }

  /**
   * A request with the key, read by `read` under one timeout (a stream's: until its headers).
   * Whatever happens, the request is over when this settles. Failures are FtdeployErrors.
   */
  async request<T>(
    path: string,
    init: RequestInit,
    read: (response: Response) => Promise<T>,
    controller = new AbortController(),
    streaming = false,
  ): Promise<T> {
    this.#requests.add(controller);
    const timer = setTimeout(() => controller.abort(), this.#timeoutMs);
    timer.unref?.();
    try {
      let response: Response;
      try {
        response = await this.#fetch(this.#baseUrl + path, {
          method: init.method ?? "GET",
          headers: { ...init.headers, authorization: `Bearer ${this.#apiKey}` },
          ...(init.body === undefined ? {} : { body: init.body }),
          signal: controller.signal,
        });
      } catch (error) {
        throw controller.signal.aborted ? this.#aborted(path) : asError(error, path);
      }
      if (streaming) clearTimeout(timer);
      try {
        return await read(response);
      } catch (error) {
        if (error instanceof FtdeployError) throw error;
        throw controller.signal.aborted ? this.#aborted(path) : asError(error, path);
      }
    } finally {
      clearTimeout(timer);
      controller.abort(); // releases the connection if the body was not read to its end
      this.#requests.delete(controller);
    }
  }

  /** Aborts every request under way; later ones fail as "the client closed". */
  close(): void {
    this.#closed = true;
    for (const request of this.#requests) request.abort();
  }

  #aborted(path: string): RequestError {
    return new RequestError(path, null, this.#closed ? "aborted: the client closed" : "timed out");
  }
}

export function statusError(path: string, status: number, tenant: string | null): Error {
  if (status === 401 || status === 403) return new AuthError(status, path);
  if (status === 404 && tenant !== null) return new TenantNotFoundError(tenant);
  return new RequestError(path, status, `HTTP ${status}`);
}

export function asError(error: unknown, path: string): Error {
  if (error instanceof FtdeployError) return error;
  // fetch's TypeError("fetch failed") hides the reason in its cause (ECONNREFUSED, …).
  const cause = (error as { cause?: { code?: unknown; message?: unknown } } | null)?.cause;
  const detail = typeof cause?.code === "string" ? cause.code : error instanceof Error ? error.message : String(error);
  return new RequestError(path, null, detail);
}

/** Entity tags compare by their opaque part: W/ and the quotes are ignored. */
export function sameTag(a: string, b: string): boolean {
  const bare = (t: string): string => t.replace(/^W\//, "").replace(/^"(.*)"$/, "$1");
  return bare(a) === bare(b);
}
