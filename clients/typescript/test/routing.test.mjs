// Document handling: what a document must hold, the pick without a subject, the memo.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { InvalidDocumentError, parseDocument, Routing } from "../dist/index.js";

const vectors = JSON.parse(readFileSync(new URL("../../../tests/routing_vectors.json", import.meta.url), "utf8"));
const ninety = vectors.cases.find((c) => c.name === "90/10").document;
const three = vectors.cases.find((c) => c.name === "three versions 70/20/10").document;
const empty = vectors.cases.find((c) => c.name === "nothing in production").document;

const broken = (change) => {
  const doc = structuredClone(ninety);
  change(doc);
  return doc;
};

test("a valid document parses to itself", () => {
  assert.deepEqual(parseDocument(structuredClone(ninety)), ninety);
});

test("versions are put in version order (the tie-break order)", () => {
  const doc = broken((d) => d.versions.reverse());
  assert.deepEqual(
    parseDocument(doc).versions.map((v) => v.version),
    [1, 2],
  );
  const picks = vectors.cases.find((c) => c.name === "90/10").picks;
  const routing = new Routing(parseDocument(doc));
  for (const [subject, expected] of picks.slice(0, 300)) assert.equal(routing.pick(subject), expected);
});

for (const [what, change] of [
  ["another schema version", (d) => (d.schema_version = 2)],
  ["an unknown algorithm", (d) => (d.algorithm = "md5-mod-100")],
  ["another prime", (d) => (d.prime = "2147483647")],
  ["shares not summing to 100", (d) => (d.versions[1].traffic_percent = 20)],
  ["a share of 0", (d) => ((d.versions[0].traffic_percent = 100), (d.versions[1].traffic_percent = 0))],
  ["a as a number", (d) => (d.versions[0].a = 12345)],
  ["a = 0", (d) => (d.versions[0].a = "0")],
  ["b >= p", (d) => (d.versions[0].b = "2305843009213693951")],
  ["a duplicate version", (d) => (d.versions[1].version = 1)],
  ["no model id", (d) => (d.versions[0].model_id = "")],
  ["no etag", (d) => delete d.etag],
  ["no tenant", (d) => delete d.tenant],
]) {
  test(`refused: ${what}`, () => {
    assert.throws(() => parseDocument(broken(change)), InvalidDocumentError);
  });
}

test("nothing in production: null, with or without a subject", () => {
  const routing = new Routing(parseDocument(empty));
  assert.equal(routing.pick("someone"), null);
  assert.equal(routing.pick(""), null);
  assert.equal(routing.pick(), null);
});

test("one version: its model for everyone", () => {
  const one = vectors.cases.find((c) => c.name === "one version").document;
  const routing = new Routing(parseDocument(one));
  assert.equal(routing.pick(), one.versions[0].model_id);
  assert.equal(routing.pick("x"), one.versions[0].model_id);
});

test("the empty string is a subject (sticky), unlike no subject", () => {
  const expected = vectors.cases.find((c) => c.name === "90/10").picks.find(([s]) => s === "")[1];
  const routing = new Routing(parseDocument(ninety));
  for (let i = 0; i < 50; i++) assert.equal(routing.pick(""), expected);
});

test("without a subject: a weighted draw per request", () => {
  const routing = new Routing(parseDocument(three));
  const counts = new Map();
  const n = 50_000;
  for (let i = 0; i < n; i++) {
    const model = routing.pick();
    counts.set(model, (counts.get(model) ?? 0) + 1);
  }
  for (const v of three.versions) {
    const share = (counts.get(v.model_id) ?? 0) / n;
    assert.ok(Math.abs(share - v.traffic_percent / 100) < 0.015, `${v.model_id}: ${share}`);
  }
});

test("with subjects: each version's share of subjects is its weight", () => {
  const picks = vectors.cases.find((c) => c.name === "three versions 70/20/10").picks;
  const counts = new Map();
  for (const [, model] of picks) counts.set(model, (counts.get(model) ?? 0) + 1);
  for (const v of three.versions) {
    const share = counts.get(v.model_id) / picks.length;
    assert.ok(Math.abs(share - v.traffic_percent / 100) < 0.04, `${v.model_id}: ${share}`);
  }
});

test("the memo is bounded and never changes an answer", () => {
  const routing = new Routing(parseDocument(ninety), 100);
  const picks = vectors.cases.find((c) => c.name === "90/10").picks;
  for (const [subject, expected] of picks.slice(0, 1000)) assert.equal(routing.pick(subject), expected);
  assert.ok(routing.memoSize <= 100);
  for (const [subject, expected] of picks.slice(0, 1000)) assert.equal(routing.pick(subject), expected);
});

test("a non-string subject is read as its String()", () => {
  const routing = new Routing(parseDocument(ninety));
  assert.equal(routing.pick(12345), routing.pick("12345"));
});

test("subjectNumber equals the plain BigInt reading of the UTF-8 bytes, mod p", async () => {
  const { subjectNumber, PRIME } = await import("../dist/index.js");
  const reference = (s) => {
    let n = 0n;
    const bytes = new TextEncoder().encode(s);
    for (let i = bytes.length - 1; i >= 0; i--) n = ((n << 8n) | BigInt(bytes[i])) % PRIME;
    return n;
  };
  let seed = 15;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const alphabet = ["a", "Z", "0", "\x7f", "\x80", "é", "ÿ", "ユ", "\uffff", "🙂", "\0"];
  for (let i = 0; i < 3000; i++) {
    let s = "";
    const length = Math.floor(random() * 90);
    for (let j = 0; j < length; j++) s += alphabet[Math.floor(random() * alphabet.length)];
    assert.equal(subjectNumber(s), reference(s), JSON.stringify(s));
  }
  // Long enough to pass the periodic normalization (every 2^20 bytes), ASCII and not.
  for (const s of ["\xff".repeat(600_000), "z".repeat(1_100_001)]) {
    assert.equal(subjectNumber(s), reference(s));
  }
  assert.equal(subjectNumber(""), 0n);
});
