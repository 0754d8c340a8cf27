// Outcome batches: their shape, their size, retries with the same batch id, what close() sends,
// and the memory bound.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Ftdeploy } from "../dist/index.js";
import { FakeServer, until } from "../support/fake_server.mjs";

const KEY = "test-key-123";
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

async function setup(t, options = {}) {
  const server = await new FakeServer({ key: KEY }).start();
  const errors = [];
  const client = new Ftdeploy({
    baseUrl: server.url,
    apiKey: KEY,
    stream: false,
    flushIntervalMs: 60_000, // tests flush by hand unless they say otherwise
    reconnectBaseMs: 5,
    reconnectMaxMs: 20,
    onError: (e) => errors.push(e),
    ...options,
  });
  t.after(async () => {
    await client.close();
    await server.stop();
  });
  return { server, client, errors };
}

const counted = (server) =>
  [...server.accepted.values()].flatMap((a) => a.body.records).reduce((n, r) => n + (r.count ?? 1), 0);

test("a batch: its id, identical outcomes folded into a count, scores and latencies kept", async (t) => {
  const { server, client } = await setup(t);
  client.recordOutcome("acme", "ft:a", { success: true });
  client.recordOutcome("acme", "ft:a", { success: true });
  client.recordOutcome("acme", "ft:a", { success: true });
  client.recordOutcome("acme", "ft:a", { success: false });
  client.recordOutcome("acme", "ft:b", { success: true, score: 0.75 });
  client.recordOutcome("acme", "ft:b", { success: false, latencyMs: 812.5 });
  client.recordOutcome("globex", "ft:g", { success: true, score: 1, latencyMs: 3 });
  await client.flush();
  assert.equal(server.attempts.length, 2);
  const acme = server.attempts.find((a) => a.tenant === "acme").body;
  assert.match(acme.batch_id, UUID);
  assert.deepEqual(Object.keys(acme).sort(), ["batch_id", "records"]);
  const strip = ({ at, ...rest }) => {
    assert.ok(!Number.isNaN(Date.parse(at)) && at.endsWith("Z"), at);
    return rest;
  };
  assert.deepEqual(acme.records.map(strip), [
    { model: "ft:a", success: true, count: 3 },
    { model: "ft:a", success: false, count: 1 },
    { model: "ft:b", success: true, score: 0.75 },
    { model: "ft:b", success: false, latency_ms: 812.5 },
  ]);
  const attempt = server.attempts[0];
  assert.equal(attempt.headers["content-type"], "application/json");
  assert.equal(attempt.headers.authorization, `Bearer ${KEY}`);
  assert.deepEqual(client.outcomeStats, { pending: 0, sent: 7, dropped: 0, retries: 0 });
});

test("batches are cut at maxBatchRecords and sent without waiting for the timer", async (t) => {
  const { server, client } = await setup(t, { maxBatchRecords: 5 });
  for (let i = 0; i < 12; i++) client.recordOutcome("acme", "ft:a", { success: true, score: i });
  await until(() => server.attempts.length === 2, 2000, "two full batches");
  await client.flush();
  assert.deepEqual(
    server.attempts.map((a) => a.body.records.length),
    [5, 5, 2],
  );
  assert.deepEqual(
    server.attempts.flatMap((a) => a.body.records.map((r) => r.score)),
    [...Array(12).keys()],
  );
});

test("the flush timer sends on its own", async (t) => {
  const { server, client } = await setup(t, { flushIntervalMs: 30 });
  client.recordOutcome("acme", "ft:a", { success: true });
  await until(() => server.accepted.size === 1, 2000, "the timed flush");
});

test("a failed batch is retried with the same id and the same records; counted once", async (t) => {
  const { server, client, errors } = await setup(t, { flushIntervalMs: 20 });
  server.outcomeFailures = [503, 500, 429];
  client.recordOutcome("acme", "ft:a", { success: true });
  client.recordOutcome("acme", "ft:a", { success: false, score: 0.1 });
  await until(() => client.outcomeStats.sent === 2, 3000, "the batch to get through");
  assert.equal(server.attempts.length, 4);
  const ids = new Set(server.attempts.map((a) => a.body.batch_id));
  assert.equal(ids.size, 1);
  for (const attempt of server.attempts) assert.deepEqual(attempt.body, server.attempts[0].body);
  assert.equal(counted(server), 2);
  assert.equal(client.outcomeStats.retries, 3);
  assert.equal(client.outcomeStats.sent, 2);
  assert.ok(errors.some((e) => e.message.includes("HTTP 503")));
});

test("an answer lost after the server counted the batch: the retry has the same id, no double count", async (t) => {
  const { server, client } = await setup(t, { flushIntervalMs: 20 });
  server.outcomeFailures = ["lost"];
  for (let i = 0; i < 10; i++) client.recordOutcome("acme", "ft:a", { success: true });
  await until(() => server.attempts.length >= 2 && client.outcomeStats.sent === 10, 3000, "the retry");
  assert.equal(new Set(server.attempts.map((a) => a.body.batch_id)).size, 1);
  assert.equal(server.accepted.size, 1);
  assert.equal(counted(server), 10);
});

test("a batch the server refuses (422) is dropped and reported, not retried", async (t) => {
  const { server, client, errors } = await setup(t);
  server.outcomeFailures = [422];
  client.recordOutcome("acme", "ft:a", { success: true });
  await client.flush();
  await until(() => client.outcomeStats.dropped === 1, 2000, "the drop");
  assert.equal(server.attempts.length, 1);
  assert.ok(errors.some((e) => e.message.includes("dropped 1 outcomes")));
});

test("a tenant's batches go in order, one at a time", async (t) => {
  const { server, client } = await setup(t, { maxBatchRecords: 1 });
  server.outcomeFailures = [503];
  for (let i = 0; i < 4; i++) client.recordOutcome("acme", "ft:a", { success: true, score: i });
  await client.flush();
  await until(() => server.accepted.size === 4, 3000, "all four");
  const firstAccepted = [...server.accepted.values()].map((a) => a.body.records[0].score);
  assert.deepEqual(firstAccepted, [0, 1, 2, 3]);
});

test("close() sends what is left", async (t) => {
  const { server, client } = await setup(t);
  client.recordOutcome("acme", "ft:a", { success: true });
  client.recordOutcome("globex", "ft:a", { success: false });
  await client.close();
  assert.equal(server.accepted.size, 2);
  assert.throws(() => client.recordOutcome("acme", "ft:a", { success: true }));
});

test("memory is bounded while the server is down: the oldest batches go first", async (t) => {
  const { server, client } = await setup(t, { maxBatchRecords: 10, maxQueuedRecords: 30, closeTimeoutMs: 200 });
  await server.stop();
  for (let i = 0; i < 100; i++) client.recordOutcome("acme", "ft:a", { success: true, score: i });
  await until(() => client.outcomeStats.dropped >= 60, 2000, "drops");
  assert.ok(client.outcomeStats.pending <= 40, JSON.stringify(client.outcomeStats));
  await server.start();
  await until(() => client.outcomeStats.pending === 0, 3000, "the rest sent");
  const scores = [...server.accepted.values()].flatMap((a) => a.body.records.map((r) => r.score));
  assert.ok(scores.includes(99), "the newest kept");
  assert.ok(scores.length <= 40);
  assert.equal(scores.length + client.outcomeStats.dropped, 100);
});

test("malformed outcomes are refused at once", async (t) => {
  const { client } = await setup(t);
  assert.throws(() => client.recordOutcome("", "ft:a", { success: true }), TypeError);
  assert.throws(() => client.recordOutcome("acme", "", { success: true }), TypeError);
  assert.throws(() => client.recordOutcome("acme", "ft:a", { success: "yes" }), TypeError);
  assert.throws(() => client.recordOutcome("acme", "ft:a", { success: true, score: NaN }), TypeError);
  assert.throws(() => client.recordOutcome("acme", "ft:a", { success: true, latencyMs: -1 }), TypeError);
  assert.equal(client.outcomeStats.pending, 0);
});
