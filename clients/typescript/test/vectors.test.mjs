// The shared vectors (tests/routing_vectors.json, written by `python -m tests.routing_vectors`):
// every pick Python's registry.routing makes, this client makes too.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { Ftdeploy, parseDocument, PRIME, Routing, subjectNumber } from "../dist/index.js";

const vectors = JSON.parse(
  readFileSync(new URL("../../../tests/routing_vectors.json", import.meta.url), "utf8"),
);

test("the vectors are substantial", () => {
  const picks = vectors.cases.reduce((n, c) => n + c.picks.length, 0);
  assert.ok(picks >= 10_000, `${picks} picks`);
  assert.ok(vectors.cases.length >= 8);
});

for (const vector of vectors.cases) {
  test(`every pick matches Python: ${vector.name}`, () => {
    const routing = new Routing(parseDocument(vector.document));
    const mismatches = [];
    for (const [subject, expected] of vector.picks) {
      if (routing.pick(subject) !== expected) mismatches.push(subject);
      if (expected !== null && routing.place(subject) !== expected) mismatches.push(subject);
    }
    assert.deepEqual(mismatches.slice(0, 10), [], `${mismatches.length} mismatches`);
    // Memoized picks answer the same the second time.
    for (const [subject, expected] of vector.picks.slice(0, 500)) {
      assert.equal(routing.pick(subject), expected);
    }
  });
}

test("intermediate numbers match Python's exactly (subject number, residues, float scores)", () => {
  const vector = vectors.cases.find((c) => c.intermediates);
  assert.ok(vector);
  const versions = parseDocument(vector.document).versions;
  for (const item of vector.intermediates) {
    const m = subjectNumber(item.subject);
    assert.equal(m.toString(), item.m, item.subject);
    versions.forEach((v, i) => {
      const residue = (BigInt(v.a) * m + BigInt(v.b)) % PRIME;
      assert.equal(residue.toString(), item.residues[i]);
      const score = Math.log((Number(residue) + 0.5) * (1 / Number(PRIME))) * (1 / v.traffic_percent);
      // ln is the one step IEEE 754 leaves open: V8's and the C library's may differ in the last
      // bit (docs/routing.md, "Floating point"); everything before it is exact.
      const ulp = 2 * Math.abs(item.scores[i]) * 2 ** -52; // one ulp of ln, then one rounding
      assert.ok(Math.abs(score - item.scores[i]) <= ulp, `score of ${JSON.stringify(item.subject)} for v${v.version}`);
    });
  }
});

test("through the client: resolve answers the vectors from bootstrap documents", async () => {
  const documents = vectors.cases.map((c) => c.document);
  // Each document has its own tenant except the canary steps, which share one: take its last.
  const byTenant = new Map(documents.map((d) => [d.tenant.slug, d]));
  const client = new Ftdeploy({ baseUrl: "http://127.0.0.1:9", apiKey: "k", bootstrap: [...byTenant.values()] });
  try {
    for (const vector of vectors.cases) {
      const { slug, id } = vector.document.tenant;
      if (byTenant.get(slug) !== vector.document) continue;
      for (const [subject, expected] of vector.picks) {
        assert.equal(client.resolve(slug, subject), expected);
        assert.equal(client.resolve(id, subject), expected);
      }
    }
  } finally {
    await client.close();
  }
});

test("a growing canary only moves subjects to the canary", () => {
  const steps = vectors.cases.filter((c) => c.name.startsWith("canary at "));
  assert.equal(steps.length, 4);
  const canary = steps.at(-1).document.versions[0].model_id;
  for (let i = 1; i < steps.length; i++) {
    const before = new Routing(parseDocument(steps[i - 1].document));
    const after = new Routing(parseDocument(steps[i].document));
    for (const [subject] of steps[i].picks) {
      const old = before.pick(subject);
      const now = after.pick(subject);
      assert.ok(now === old || now === canary, subject);
    }
  }
});

test("no vector pick hangs on the last bit of ln: the best score leads by far more than an ulp", () => {
  const inverse = 1 / Number(PRIME);
  let closest = Infinity;
  for (const vector of vectors.cases) {
    const versions = parseDocument(vector.document).versions;
    if (versions.length < 2) continue;
    const keys = versions.map((v) => [BigInt(v.a), BigInt(v.b), 1 / v.traffic_percent]);
    for (const [subject] of vector.picks) {
      const m = subjectNumber(subject);
      const scores = keys
        .map(([a, b, w]) => Math.log((Number((a * m + b) % PRIME) + 0.5) * inverse) * w)
        .sort((x, y) => y - x);
      closest = Math.min(closest, (scores[0] - scores[1]) / Math.abs(scores[1]));
    }
  }
  assert.ok(closest > 1e-12, `closest relative gap ${closest}`);
});
