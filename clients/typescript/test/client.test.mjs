// The client against a local stand-in of the HTTP API (support/fake_server.mjs): loading,
// conditional requests, the change stream and its fallback, staleness, bootstrap, keys.
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { inspect } from "node:util";

import {
  AuthError,
  Ftdeploy,
  NotReadyError,
  TenantNotFoundError,
  TenantNotLoadedError,
} from "../dist/index.js";
import { FakeServer, until } from "../support/fake_server.mjs";

const vectors = (await import("node:fs")).readFileSync(
  new URL("../../../tests/routing_vectors.json", import.meta.url),
  "utf8",
);
const cases = JSON.parse(vectors).cases;
const byName = (name) => cases.find((c) => c.name === name);
const canary10 = byName("canary at 10");
const canary25 = byName("canary at 25");
const halves = byName("50/50");
const SLUG = canary10.document.tenant.slug;
const KEY = "test-key-123";

const fast = {
  reconnectBaseMs: 10,
  reconnectMaxMs: 50,
  requestTimeoutMs: 1000,
  readyTimeoutMs: 2000,
  onError: () => {},
};

async function setup(t, options = {}, serverOptions = {}) {
  const server = await new FakeServer({ key: KEY, ...serverOptions }).start();
  server.setDocument(canary10.document);
  server.setDocument(halves.document);
  const client = new Ftdeploy({ baseUrl: server.url, apiKey: KEY, tenants: [SLUG], ...fast, ...options });
  t.after(async () => {
    await client.close();
    await server.stop().catch(() => {});
  });
  return { server, client };
}

function agrees(client, tenant, vector, count = 300) {
  for (const [subject, expected] of vector.picks.slice(0, count)) {
    assert.equal(client.resolve(tenant, subject), expected, subject);
  }
}

test("ready() loads the configured tenants; resolve answers from memory, as Python would", async (t) => {
  const { server, client } = await setup(t);
  assert.equal(client.state, "starting");
  await client.ready();
  assert.equal(client.state, "ready");
  const requests = server.requests.length;
  agrees(client, SLUG, canary10, 2000);
  assert.equal(server.requests.length, requests, "no request per resolve");
  assert.ok(client.dataAgeMs(SLUG) < 1000);
  assert.equal(client.document(SLUG).etag, canary10.document.etag);
  // Also by id, once the document told it.
  agrees(client, canary10.document.tenant.id, canary10, 50);
  for (const r of server.requests) assert.equal(r.headers.authorization, `Bearer ${KEY}`);
});

test("an announced change is fetched; an announcement of the etag we have is not", async (t) => {
  const { server, client } = await setup(t);
  await client.ready();
  await until(() => client.streaming, 2000, "the stream");
  await until(() => server.streams.size === 1);
  const before = server.count("GET", `/v1/tenants/${SLUG}/routing`);
  server.announce(SLUG, canary10.document.etag);
  server.announce("some-other-tenant", '"zzz"');
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(server.count("GET", `/v1/tenants/${SLUG}/routing`), before);

  server.setDocument(canary25.document);
  server.announce(canary25.document.tenant.id, canary25.document.etag); // by id works too
  await until(() => client.document(SLUG).etag === canary25.document.etag, 2000, "the new document");
  agrees(client, SLUG, canary25);
  const last = server.requests.filter((r) => r.path.endsWith("/routing")).at(-1);
  assert.equal(last.headers["if-none-match"], canary10.document.etag);
});

test("a resync event revalidates every document, announced or not", async (t) => {
  const { server, client } = await setup(t, { pollIntervalMs: 60_000 });
  await client.ready();
  await until(() => server.streams.size === 1, 2000, "the stream");
  await until(() => server.count("GET", `/v1/tenants/${SLUG}/routing`) >= 2, 2000, "the first loads");
  server.setDocument(canary25.document); // changed, never announced
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(client.document(SLUG).etag, canary10.document.etag);
  server.resync();
  await until(() => client.document(SLUG).etag === canary25.document.etag, 2000, "revalidation");
  agrees(client, SLUG, canary25);
  assert.equal(server.streamConnections, 1); // on the same connection
});

test("the same document again keeps its memo (304)", async (t) => {
  const { server, client } = await setup(t, { stream: false, pollIntervalMs: 20 });
  await client.ready();
  const document = client.document(SLUG);
  const polls = server.count("GET", `/v1/tenants/${SLUG}/routing`);
  await until(() => server.count("GET", `/v1/tenants/${SLUG}/routing`) >= polls + 3, 2000, "polls");
  assert.equal(client.document(SLUG), document);
  const conditional = server.requests.filter((r) => r.headers["if-none-match"] === canary10.document.etag);
  assert.ok(conditional.length >= 3);
});

test("no stream on the server: polling with If-None-Match picks up changes", async (t) => {
  const { server, client } = await setup(t, { pollIntervalMs: 30 });
  server.streamEnabled = false;
  await client.ready();
  server.setDocument(canary25.document);
  await until(() => client.document(SLUG).etag === canary25.document.etag, 2000, "the polled change");
  assert.equal(client.streaming, false);
  assert.equal(client.state, "ready");
  agrees(client, SLUG, canary25);
});

test("a dropped stream reconnects, and what changed meanwhile is found at once", async (t) => {
  const { server, client } = await setup(t, { pollIntervalMs: 60_000 });
  await client.ready();
  await until(() => server.streams.size === 1, 2000, "the stream");
  server.streamEnabled = false;
  server.dropStreams();
  server.setDocument(canary25.document); // changed while nobody listens, never announced
  await new Promise((r) => setTimeout(r, 80));
  server.streamEnabled = true;
  await until(() => server.streams.size === 1, 3000, "the reconnection");
  await until(() => client.document(SLUG).etag === canary25.document.etag, 2000, "revalidation");
  assert.ok(server.streamConnections >= 2);
});

test("a silent stream is taken as dead and reopened; heartbeats keep it", async (t) => {
  const silent = await setup(t, { streamIdleTimeoutMs: 150, pollIntervalMs: 60_000 });
  await silent.client.ready();
  await until(() => silent.server.streamConnections >= 3, 3000, "reconnections of a silent stream");

  const beating = await setup(t, { streamIdleTimeoutMs: 150, pollIntervalMs: 60_000 }, { heartbeatMs: 30 });
  await beating.client.ready();
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(beating.server.streamConnections, 1);
  assert.ok(beating.client.dataAgeMs() < 150, "heartbeats confirm the documents");
});

test("server unreachable: the last documents keep serving, the state turns stale, then recovers", async (t) => {
  const { server, client } = await setup(t, { staleAfterMs: 150, pollIntervalMs: 40 });
  await client.ready();
  await server.stop();
  await new Promise((r) => setTimeout(r, 250));
  assert.equal(client.state, "stale");
  assert.ok(client.dataAgeMs(SLUG) >= 150);
  agrees(client, SLUG, canary10);
  assert.ok(client.lastError);
  await server.start();
  await until(() => client.state === "ready", 3000, "recovery");
  assert.ok(client.dataAgeMs(SLUG) < 150);
});

test("bootstrap file: ready() with the server down, state stale, age unknown", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "ftdeploy-client-"));
  const file = join(dir, "routing.json");
  writeFileSync(file, JSON.stringify([canary10.document, halves.document]));
  const client = new Ftdeploy({ baseUrl: "http://127.0.0.1:9", apiKey: KEY, tenants: [SLUG], bootstrap: file, ...fast });
  t.after(() => client.close());
  await client.ready();
  assert.equal(client.state, "stale");
  assert.equal(client.dataAgeMs(), Infinity);
  agrees(client, SLUG, canary10);
  agrees(client, halves.document.tenant.slug, halves);
});

test("bootstrap object: resolve works before ready(), and the server's newer document replaces it", async (t) => {
  const { server, client } = await setup(t, { bootstrap: canary10.document });
  agrees(client, SLUG, canary10);
  server.setDocument(canary25.document);
  await client.ready();
  assert.equal(client.document(SLUG).etag, canary25.document.etag);
});

test("a tenant not configured: loaded at its first resolve; a 404 one is reported as such", async (t) => {
  const { client } = await setup(t);
  await client.ready();
  const other = halves.document.tenant.slug;
  assert.throws(() => client.resolve(other, "u"), TenantNotLoadedError);
  await until(() => client.document(other) !== null, 2000, "the lazy load");
  agrees(client, other, halves);
  await assert.rejects(client.load("nobody"), TenantNotFoundError);
  assert.throws(() => client.resolve("nobody"), TenantNotFoundError);
});

test("a refused key: ready() rejects with AuthError; the key appears nowhere", async (t) => {
  const server = await new FakeServer({ key: KEY }).start();
  server.setDocument(canary10.document);
  const secret = "sk-this-must-never-show-up";
  const errors = [];
  const client = new Ftdeploy({
    baseUrl: server.url,
    apiKey: secret,
    tenants: [SLUG],
    ...fast,
    onError: (e) => errors.push(e),
  });
  t.after(async () => {
    await client.close();
    await server.stop();
  });
  const error = await client.ready().then(
    () => null,
    (e) => e,
  );
  assert.ok(error instanceof AuthError);
  assert.equal(error.status, 401);
  client.recordOutcome(SLUG, "ft:x", { success: true });
  await client.flush();
  const seen = [error, ...errors, client.lastError].map((e) => `${e?.message} ${e?.stack} ${inspect(e)}`);
  seen.push(inspect(client, { showHidden: true, depth: 5 }), JSON.stringify(client));
  for (const text of seen) assert.ok(!text.includes(secret), text);
  assert.equal(client.state, "error");
});

test("nothing reachable and no bootstrap: ready() gives up with NotReadyError", async (t) => {
  const client = new Ftdeploy({ baseUrl: "http://127.0.0.1:9", apiKey: KEY, tenants: [SLUG], ...fast, readyTimeoutMs: 300 });
  t.after(() => client.close());
  await assert.rejects(client.ready(), NotReadyError);
  assert.equal(client.state, "error");
  assert.throws(() => client.resolve(SLUG, "u"), TenantNotLoadedError);
});

test("a transient failure of the first load is retried without waiting for a poll", async (t) => {
  const { server, client } = await setup(t, { pollIntervalMs: 60_000, stream: false });
  server.documentFailures = 2;
  await client.ready();
  agrees(client, SLUG, canary10);
});

test("bad options are refused up front", () => {
  assert.throws(() => new Ftdeploy({ baseUrl: "ftp://x", apiKey: KEY }), TypeError);
  assert.throws(() => new Ftdeploy({ baseUrl: "http://x", apiKey: "" }), TypeError);
});
