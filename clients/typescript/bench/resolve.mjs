// `node bench/resolve.mjs [--quick] [--url URL]`: the client's resolve against a bare Map lookup
// (the floor of any in-memory answer), measured in the same run; prints one JSON object.
//
// Tenant split 90/10 (the shared vectors' document). Rows: a returning subject (a pool of 10,000,
// as a serving app sees returning users: memo hits), a subject seen for the first time (the
// BigInt placement), no subject (a weighted draw), and the baseline `Map.get(subject)`. calls/s
// from a tight loop; p50 from calls timed one by one with hrtime (the timer's own cost, some tens
// of ns, is included, not subtracted). With --url, also sequential HTTP GETs of that URL (with
// `Authorization: Bearer $FTDEPLOY_API_KEY` when set), e.g. the server's resolve endpoint.
// Needs the build (`npm run build`).
import { readFileSync } from "node:fs";

import { Ftdeploy } from "../dist/index.js";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const urlIndex = args.indexOf("--url");
const url = urlIndex >= 0 ? args[urlIndex + 1] : null;
if (urlIndex >= 0 && !url) throw new Error("--url needs a URL");

const vectors = JSON.parse(readFileSync(new URL("../../../tests/routing_vectors.json", import.meta.url), "utf8"));
const document = vectors.cases.find((c) => c.name === "90/10").document;
const tenant = document.tenant.slug;
const client = new Ftdeploy({ baseUrl: "http://127.0.0.1:9", apiKey: "bench", bootstrap: document });

const POOL = 10_000;
const calls = quick ? 200_000 : 2_000_000;
const timed = quick ? 50_000 : 300_000;
const pool = Array.from({ length: POOL }, (_, i) => `user-${i}`);
const map = new Map(pool.map((s) => [s, client.resolve(tenant, s)])); // also warms the memo
const fresh = Array.from({ length: timed + calls / 10 }, (_, i) => `new-user-${i}-${i * 7919}`);

let sink = 0; // keeps the JIT from dropping the calls
const keep = (value) => {
  sink += value === null ? 0 : value.length;
};

function measure(name, call, count = calls) {
  for (let i = 0; i < Math.min(count, 50_000); i++) keep(call(i)); // warm up
  const start = process.hrtime.bigint();
  for (let i = 0; i < count; i++) keep(call(i));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const samples = new Float64Array(Math.min(timed, count));
  for (let i = 0; i < samples.length; i++) {
    const t0 = process.hrtime.bigint();
    keep(call(i));
    samples[i] = Number(process.hrtime.bigint() - t0);
  }
  samples.sort();
  return {
    name,
    calls_per_s: Math.round(count / seconds),
    p50_ns: samples[samples.length >> 1],
    p99_ns: samples[Math.floor(samples.length * 0.99)],
  };
}

const rows = {
  map_get: measure("Map.get(subject) (baseline)", (i) => map.get(pool[i % POOL])),
  resolve_subject: measure("resolve(tenant, returning subject)", (i) => client.resolve(tenant, pool[i % POOL])),
  resolve_no_subject: measure("resolve(tenant)", () => client.resolve(tenant)),
};
// First-seen subjects: each string is used once (the memo never answers); fewer calls.
let next = 0;
rows.resolve_new_subject = measure("resolve(tenant, new subject)", () => client.resolve(tenant, fresh[next++ % fresh.length]), calls / 10);

async function http(target) {
  const headers = process.env.FTDEPLOY_API_KEY ? { authorization: `Bearer ${process.env.FTDEPLOY_API_KEY}` } : {};
  const count = quick ? 200 : 2000;
  const samples = [];
  const start = process.hrtime.bigint();
  for (let i = 0; i < count; i++) {
    const t0 = process.hrtime.bigint();
    const response = await fetch(target, { headers });
    await response.arrayBuffer();
    if (!response.ok) throw new Error(`${target}: HTTP ${response.status}`);
    samples.push(Number(process.hrtime.bigint() - t0));
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  samples.sort((a, b) => a - b);
  return { name: `HTTP GET ${target}`, calls_per_s: Math.round(count / seconds), p50_ns: samples[count >> 1], p99_ns: samples[Math.floor(count * 0.99)] };
}
if (url) rows.http = await http(url);
await client.close();

const result = {
  benchmark: "typescript client resolve",
  node: process.version,
  split: "90/10",
  quick,
  rows,
  ratios: {
    // How far resolve with a returning subject is from the floor (1.0 = as fast as Map.get).
    map_over_resolve_subject_calls: +(rows.map_get.calls_per_s / rows.resolve_subject.calls_per_s).toFixed(2),
    ...(url ? { http_p50_over_resolve_p50: +(rows.http.p50_ns / rows.resolve_subject.p50_ns).toFixed(1) } : {}),
  },
  sink: sink > 0,
};
console.log(JSON.stringify(result, null, 2));
