/**
 * Errors of the client: one base class, one subclass per failure. Messages name tenants, paths and
 * HTTP statuses, never the API key.
 */

export class FtdeployError extends Error {
  override name = "FtdeployError";
}

/** The tenant has no routing document here yet (it is being loaded now: retry shortly). */
export class TenantNotLoadedError extends FtdeployError {
  override name = "TenantNotLoadedError";
  constructor(readonly tenant: string) {
    super(`no routing document for tenant ${JSON.stringify(tenant)} yet (loading it now)`);
  }
}

/** The server answered 404 for the tenant: unknown, or outside the key's scope. */
export class TenantNotFoundError extends FtdeployError {
  override name = "TenantNotFoundError";
  constructor(readonly tenant: string) {
    super(`tenant ${JSON.stringify(tenant)} not found (or not visible to this key)`);
  }
}

/** A routing document that this client cannot use: it keeps the one it had. */
export class InvalidDocumentError extends FtdeployError {
  override name = "InvalidDocumentError";
  constructor(readonly problem: string) {
    super(`invalid routing document: ${problem}`);
  }
}

/** The server refused the key (401) or the key may not do this (403). */
export class AuthError extends FtdeployError {
  override name = "AuthError";
  constructor(
    readonly status: number,
    readonly path: string,
  ) {
    super(`${path}: HTTP ${status} (${status === 401 ? "key refused" : "key not allowed"})`);
  }
}

/** Any other failed request: network error, timeout or unexpected status. */
export class RequestError extends FtdeployError {
  override name = "RequestError";
  constructor(
    readonly path: string,
    readonly status: number | null,
    detail: string,
  ) {
    super(`${path}: ${detail}`);
  }
}

/** `ready()` gave up waiting: these tenants still have no document. */
export class NotReadyError extends FtdeployError {
  override name = "NotReadyError";
  constructor(
    readonly tenants: readonly string[],
    readonly lastError?: Error,
  ) {
    super(
      `no routing document yet for ${tenants.map((t) => JSON.stringify(t)).join(", ")}` +
        (lastError ? ` (last error: ${lastError.message})` : ""),
    );
  }
}
