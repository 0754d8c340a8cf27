// The client against a real `ftdeploy serve` (PostgreSQL, a Celery worker with beat), driven by
// tests/clients/test_typescript_e2e.py, which owns the server and the stack. Needs the build.
//
// Talks to its driver in JSON lines: it writes `{"ask": STEP, ...}` on stdout when it needs the
// Python side to act (promote through the CLI, kill the server), and reads the answer
// `{"done": STEP, ...}` on stdin; it ends with one `{"result": {...}}` line and exit status 0
// when every check passed, 1 when one failed (the failures are in the result).
//
// Environment: FTDEPLOY_URL, FTDEPLOY_API_KEY (a serve key), E2E_SPLIT and E2E_CANARY (tenant
// slugs: one with a multi-version split, one with a live auto-promoting canary).
import { createInterface } from "node:readline";
import { performance } from "node:perf_hooks";

import { Ftdeploy } from "../dist/index.js";

const { FTDEPLOY_URL: baseUrl, FTDEPLOY_API_KEY: apiKey, E2E_SPLIT: split, E2E_CANARY: canary } =
  process.env;
const STALE_AFTER_MS = 1500;
const BOUND_MS = 1000; // the serving plane's propagation bound (routing staleness, 1 s)
const result = { checks: {}, failures: [], errors: [] };
const now = () => performance.timeOrigin + performance.now(); // epoch ms, sub-ms resolution
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const answers = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(step, fields = {}) {
  process.stdout.write(`${JSON.stringify({ ask: step, ...fields })}\n`);
  const { value, done } = await answers.next();
  if (done) throw new Error(`the driver closed stdin while we waited for ${step}`);
  const answer = JSON.parse(value);
  if (answer.done !== step) throw new Error(`asked ${step}, got ${value}`);
  return answer;
}

function check(name, ok, detail) {
  result.checks[name] = ok ? "ok" : `FAILED: ${detail}`;
  if (!ok) result.failures.push(`${name}: ${detail}`);
}

async function until(condition, timeoutMs, what) {
  const deadline = now() + timeoutMs;
  while (!condition()) {
    if (now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await sleep(5);
  }
}

// Subjects of every kind a serving app sends: ids, emails, numbers, unicode, the empty string.
const subjects = [
  "",
  "0",
  "ß",
  "用户-7",
  "😀 emoji",
  "a\u0000",
  "x".repeat(400),
  ...Array.from({ length: 150 }, (_, i) => `user-${i}`),
  ...Array.from({ length: 60 }, (_, i) => `user${i}@example.com`),
  ...Array.from({ length: 40 }, (_, i) => String(10_000_000 + i * 7919)),
  ...Array.from({ length: 40 }, (_, i) => `session:${(i * 2654435761) % 2 ** 32}`),
];

async function serverPick(tenant, subject) {
  const path = `/v1/tenants/${encodeURIComponent(tenant)}/resolve?subject=${encodeURIComponent(subject)}`;
  const response = await fetch(`${baseUrl}${path}`, { headers: { authorization: `Bearer ${apiKey}` } });
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return (await response.json()).model;
}

/** Subjects where the client's local pick differs from the server's /resolve. */
async function disagreements(tenant) {
  const wrong = [];
  for (let i = 0; i < subjects.length; i += 25) {
    const chunk = subjects.slice(i, i + 25);
    const remote = await Promise.all(chunk.map((s) => serverPick(tenant, s)));
    chunk.forEach((s, j) => {
      const local = ftdeploy.resolve(tenant, s);
      if (local !== remote[j]) wrong.push({ subject: s.slice(0, 40), local, remote: remote[j] });
    });
  }
  return wrong;
}

const picks = (tenant) => new Map(subjects.map((s) => [s, ftdeploy.resolve(tenant, s)]));
const modelOf = (tenant, version) =>
  ftdeploy.document(tenant).versions.find((v) => v.version === version)?.model_id;

const ftdeploy = new Ftdeploy({
  baseUrl,
  apiKey,
  tenants: [split, canary],
  staleAfterMs: STALE_AFTER_MS,
  streamIdleTimeoutMs: 5000,
  reconnectBaseMs: 100,
  reconnectMaxMs: 500,
  requestTimeoutMs: 2000,
  flushIntervalMs: 200,
  closeTimeoutMs: 500,
  onError: (error) => result.errors.length < 20 && result.errors.push(String(error.message)),
});

async function main() {
  await ftdeploy.ready();
  await until(() => ftdeploy.streaming, 5000, "the change stream to open");

  // (a) Local picks are the server's, for every kind of subject.
  const wrongBefore = await disagreements(split);
  check("a_local_matches_server", wrongBefore.length === 0, JSON.stringify(wrongBefore.slice(0, 5)));
  result.subjects = subjects.length;
  result.split_before = ftdeploy.document(split).versions.map((v) => [v.version, v.traffic_percent]);

  // (b) A promote through the CLI reaches the client's answers within the bound.
  const before = picks(split);
  const etag = ftdeploy.document(split).etag;
  let changedAt = null;
  const watch = setInterval(() => {
    if (changedAt === null && ftdeploy.document(split).etag !== etag) changedAt = now();
  }, 1);
  const promoted = await ask("promote", { tenant: split, version: 1, traffic: 20 });
  await until(() => changedAt !== null, 5000, "the client to see the promote").finally(() =>
    clearInterval(watch),
  );
  const after = picks(split);
  const moved = subjects.filter((s) => before.get(s) !== after.get(s));
  const v1 = modelOf(split, 1);
  result.split_after = ftdeploy.document(split).versions.map((v) => [v.version, v.traffic_percent]);
  result.propagation_ms = Math.round((changedAt - promoted.written_at * 1000) * 10) / 10;
  result.cli_returned_after_ms = Math.round((promoted.returned_at * 1000 - promoted.written_at * 1000) * 10) / 10;
  result.moved_subjects = moved.length;
  check(
    "b_propagation_within_bound",
    result.propagation_ms >= 0 && result.propagation_ms < BOUND_MS,
    `${result.propagation_ms} ms`,
  );
  check("b_subjects_moved_only_to_the_promoted_version", moved.length > 0 && moved.every((s) => after.get(s) === v1),
    `${moved.length} moved, to ${[...new Set(moved.map((s) => after.get(s)))]}`); // prettier-ignore
  const wrongAfter = await disagreements(split);
  check("b_local_matches_server_after", wrongAfter.length === 0, JSON.stringify(wrongAfter.slice(0, 5)));

  // (d) Outcomes from the client move a canary through the real auto-promotion sweep.
  const baseline = modelOf(canary, 1);
  const candidate = modelOf(canary, 2);
  const shares = [ftdeploy.document(canary).versions.find((v) => v.version === 2)?.traffic_percent];
  const started = now();
  let request = 0;
  for (;;) {
    const document = ftdeploy.document(canary);
    const share = document.versions.find((v) => v.version === 2)?.traffic_percent ?? 0;
    if (share !== shares.at(-1)) shares.push(share);
    if (document.versions.length === 1 && document.versions[0].model_id === candidate) break;
    if (now() - started > 60_000) throw new Error(`the canary was not promoted; shares seen ${shares}`);
    for (let i = 0; i < 100; i++) {
      const model = ftdeploy.resolve(canary, `shopper-${request++}`);
      ftdeploy.recordOutcome(canary, model, { success: true, latencyMs: 80 + (i % 40) });
    }
    await ftdeploy.flush();
    await sleep(100);
  }
  result.canary_shares_seen = shares;
  result.canary_promoted_after_s = Math.round(now() - started) / 1000;
  result.outcomes = { requests: request, ...ftdeploy.outcomeStats };
  check("d_canary_promoted_by_the_sweep", shares.at(-1) === 100, `shares seen ${shares}`);
  check("d_outcomes_all_sent", ftdeploy.outcomeStats.dropped === 0, JSON.stringify(ftdeploy.outcomeStats));
  check("d_baseline_was_served", baseline !== undefined && baseline !== candidate, `${baseline}`);

  // (c) The server killed: the last documents keep serving, the state turns stale.
  const held = picks(split);
  const killed = await ask("kill");
  await until(() => ftdeploy.state === "stale", STALE_AFTER_MS + 10_000, "the state to turn stale");
  result.stale_after_kill_ms = Math.round(now() - killed.killed_at * 1000);
  const still = picks(split);
  const differ = subjects.filter((s) => held.get(s) !== still.get(s));
  check("c_answers_kept_after_kill", differ.length === 0 && still.get("user-1") !== null, `${differ.length} differ`);
  check("c_state_stale", ftdeploy.state === "stale", ftdeploy.state);
  check("c_data_age_reported", ftdeploy.dataAgeMs(split) >= STALE_AFTER_MS, `${ftdeploy.dataAgeMs(split)}`);
  check("c_last_error_reported", ftdeploy.lastError !== null, "no lastError");
  result.last_error = ftdeploy.lastError?.message ?? null;
  ftdeploy.recordOutcome(split, still.get("user-1"), { success: true });
  check("c_outcomes_wait_in_memory", ftdeploy.outcomeStats.pending >= 1, JSON.stringify(ftdeploy.outcomeStats));
}

const overall = setTimeout(() => {
  result.failures.push("the script's own deadline (150 s) passed");
  finish(1);
}, 150_000);

function finish(code) {
  clearTimeout(overall);
  result.ok = code === 0 && result.failures.length === 0;
  process.stdout.write(`${JSON.stringify({ result })}\n`);
  process.exit(result.ok ? 0 : 1);
}

try {
  await main();
} catch (error) {
  result.failures.push(`exception: ${error?.stack ?? error}`);
}
await ftdeploy.close().catch(() => {});
finish(result.failures.length === 0 ? 0 : 1);
