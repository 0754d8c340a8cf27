/**
 * The routing document and the pick made from it: exactly `registry.routing`'s, so a subject gets
 * the same model here as in the Python process (the shared vectors in tests/routing_vectors.json
 * hold both to it). The format and the algorithm are specified in docs/routing.md.
 *
 * With a subject: weighted rendezvous hashing. m = the subject's UTF-8 bytes read as a
 * little-endian integer, mod p = 2^61 - 1; per version u = ((a*m + b) mod p + 0.5) / p and
 * score = ln(u) * (1 / weight); the highest score wins, ties to the first version in version
 * order. Without a subject: a weighted random draw. The 61-bit products need BigInt; a and b are
 * parsed once per document, and each subject's pick is remembered in a bounded memo.
 */

import { InvalidDocumentError } from "./errors.js";

export const SCHEMA_VERSION = 1;
export const ALGORITHM = "ftdeploy-rendezvous-cw61-v1";
export const PRIME = (1n << 61n) - 1n;
const PRIME_TEXT = PRIME.toString();
// 1 / float(p): p rounds to 2^61 as a double, so this is 2^-61 exactly, as in Python.
const INVERSE_PRIME = 1 / Number(PRIME);
export const DEFAULT_MEMO_LIMIT = 100_000;

export interface RoutingVersion {
  version: number;
  version_id: string;
  model_id: string;
  traffic_percent: number;
  /** Decimal string: 1 <= a < p. */
  a: string;
  /** Decimal string: 0 <= b < p. */
  b: string;
}

export interface RoutingDocument {
  schema_version: number;
  tenant: { id: string; slug: string };
  algorithm: string;
  prime: string;
  /** Production versions, ascending `version`; empty when nothing is in production. */
  versions: RoutingVersion[];
  /** Strong entity tag of the content, quotes included, as in the `ETag` header. */
  etag: string;
}

const DECIMAL = /^(0|[1-9][0-9]*)$/;

/** Checks a parsed JSON value against the format; returns it with its versions in version order. */
export function parseDocument(value: unknown): RoutingDocument {
  const fail = (problem: string): never => {
    throw new InvalidDocumentError(problem);
  };
  if (!isObject(value)) return fail("not a JSON object");
  if (value.schema_version !== SCHEMA_VERSION) {
    return fail(`schema_version ${JSON.stringify(value.schema_version)} (this client reads 1)`);
  }
  if (value.algorithm !== ALGORITHM) {
    return fail(`algorithm ${JSON.stringify(value.algorithm)} (this client knows ${ALGORITHM})`);
  }
  if (value.prime !== PRIME_TEXT) return fail(`prime ${JSON.stringify(value.prime)}`);
  const tenant = value.tenant;
  if (!isObject(tenant) || typeof tenant.id !== "string" || typeof tenant.slug !== "string") {
    return fail("tenant must be {id, slug} strings");
  }
  if (typeof value.etag !== "string" || value.etag === "") return fail("etag must be a string");
  if (!Array.isArray(value.versions)) return fail("versions must be a list");
  const versions: RoutingVersion[] = [];
  const seen = new Set<number>();
  let total = 0;
  for (const item of value.versions as unknown[]) {
    if (!isObject(item)) return fail("a version is not an object");
    const { version, version_id, model_id, traffic_percent, a, b } = item;
    if (!Number.isSafeInteger(version) || seen.has(version as number)) {
      return fail(`version ${JSON.stringify(version)}: not a unique integer`);
    }
    seen.add(version as number);
    if (typeof model_id !== "string" || model_id === "") return fail(`v${version}: model_id`);
    if (typeof version_id !== "string") return fail(`v${version}: version_id`);
    const share = traffic_percent as number;
    if (!Number.isInteger(share) || share < 1 || share > 100) {
      return fail(`v${version}: traffic_percent ${JSON.stringify(traffic_percent)}`);
    }
    if (typeof a !== "string" || !DECIMAL.test(a) || BigInt(a) < 1n || BigInt(a) >= PRIME) {
      return fail(`v${version}: a must be a decimal string in [1, p)`);
    }
    if (typeof b !== "string" || !DECIMAL.test(b) || BigInt(b) >= PRIME) {
      return fail(`v${version}: b must be a decimal string in [0, p)`);
    }
    total += share;
    versions.push({ version: version as number, version_id, model_id, traffic_percent: share, a, b });
  }
  if (versions.length > 0 && total !== 100) return fail(`traffic sums to ${total}, not 100`);
  versions.sort((x, y) => x.version - y.version);
  return {
    schema_version: SCHEMA_VERSION,
    tenant: { id: tenant.id, slug: tenant.slug },
    algorithm: ALGORITHM,
    prime: PRIME_TEXT,
    versions,
    etag: value.etag,
  };
}

/** One tenant's document, ready for picks. Immutable but for its memo. */
export class Routing {
  readonly document: RoutingDocument;
  readonly etag: string;
  /** The only model when one version serves everything (the common case), else null. */
  readonly #only: string | null;
  readonly #models: readonly string[];
  readonly #a: readonly bigint[];
  readonly #b: readonly bigint[];
  readonly #inverseWeights: readonly number[];
  /** 100 entries, each model repeated by its share: a draw is one index. */
  readonly #table: readonly string[];
  readonly #memo = new Map<string, string>();
  readonly #memoLimit: number;

  /** From a checked document (`parseDocument`). */
  constructor(document: RoutingDocument, memoLimit: number = DEFAULT_MEMO_LIMIT) {
    this.document = document;
    this.etag = document.etag;
    this.#memoLimit = memoLimit;
    const versions = document.versions;
    this.#models = versions.map((v) => v.model_id);
    this.#a = versions.map((v) => BigInt(v.a));
    this.#b = versions.map((v) => BigInt(v.b));
    // Python multiplies by 1.0 / weight (not divides): the same two roundings here.
    this.#inverseWeights = versions.map((v) => 1 / v.traffic_percent);
    this.#only = versions.length === 1 ? versions[0]!.model_id : null;
    this.#table = versions.flatMap((v) => Array<string>(v.traffic_percent).fill(v.model_id));
  }

  /** The model for one request: null when nothing is in production. */
  pick(subject?: string | null): string | null {
    if (this.#only !== null) return this.#only;
    if (this.#models.length === 0) return null;
    if (subject === undefined || subject === null) {
      return this.#table[Math.floor(Math.random() * 100)]!;
    }
    const key = typeof subject === "string" ? subject : String(subject);
    let chosen = this.#memo.get(key);
    if (chosen === undefined) {
      chosen = this.place(key);
      if (this.#memo.size >= this.#memoLimit) this.#memo.clear();
      this.#memo.set(key, chosen);
    }
    return chosen;
  }

  /** Rendezvous: the version with the highest u ** (1 / weight), compared as logs; no memo. */
  place(subject: string): string {
    const models = this.#models;
    if (models.length === 0) throw new RangeError("nothing in production");
    const m = subjectNumber(subject);
    let best = models[0]!;
    let bestScore = -Infinity;
    for (let i = 0; i < models.length; i++) {
      const residue = (this.#a[i]! * m + this.#b[i]!) % PRIME;
      // u in (0, 1]: never 0, so the log is finite.
      const score = Math.log((Number(residue) + 0.5) * INVERSE_PRIME) * this.#inverseWeights[i]!;
      if (score > bestScore) {
        best = models[i]!;
        bestScore = score;
      }
    }
    return best;
  }

  /** Subjects remembered now (bounded by the memo limit). */
  get memoSize(): number {
    return this.#memo.size;
  }
}

const encoder = new TextEncoder();
let scratch = new Uint8Array(1024);
const POW2 = Array.from({ length: 61 }, (_, i) => 2 ** i);
const TWO30 = 2 ** 30;
const TWO31 = 2 ** 31;

/**
 * The subject's UTF-8 bytes read as a little-endian integer, mod p.
 *
 * Computed in doubles, not BigInt (a first-seen subject's cost is mostly here): since
 * 2^61 = 1 mod p, byte i counts as its value times 2^(8i mod 61), a rotation within 61 bits.
 * The sum is kept as hi * 2^31 + lo, every term exact (under 2^31 each, and normalized long
 * before 2^53), then reduced once.
 */
export function subjectNumber(subject: string): bigint {
  const length = subject.length;
  let ascii = true;
  for (let i = 0; i < length; i++) {
    if (subject.charCodeAt(i) > 0x7f) {
      ascii = false;
      break;
    }
  }
  foldHi = 0;
  foldLo = 0;
  let offset = 0;
  if (ascii) {
    for (let i = 0; i < length; i++) {
      fold(subject.charCodeAt(i), offset);
      offset += 8;
      if (offset >= 61) offset -= 61;
      if ((i & 0xfffff) === 0xfffff) normalize();
    }
  } else {
    // UTF-8 takes at most 3 bytes per UTF-16 code unit (a surrogate pair: 4 bytes for 2 units).
    if (length * 3 > scratch.length) scratch = new Uint8Array(length * 3);
    const bytes = scratch;
    const size = encoder.encodeInto(subject, bytes).written;
    for (let i = 0; i < size; i++) {
      fold(bytes[i]!, offset);
      offset += 8;
      if (offset >= 61) offset -= 61;
      if ((i & 0xfffff) === 0xfffff) normalize();
    }
  }
  normalize();
  if (foldHi === TWO30 - 1 && foldLo === TWO31 - 1) return 0n; // exactly p
  return (BigInt(foldHi) << 31n) + BigInt(foldLo);
}

let foldHi = 0; // bits 31..60 of the running sum (may exceed 2^30 until normalized)
let foldLo = 0; // bits 0..30 (may exceed 2^31 until normalized)

/** Adds byte * 2^offset mod p: the byte's bits at [offset, offset + 8), those past 61 wrapped. */
function fold(byte: number, offset: number): void {
  if (offset <= 23) {
    foldLo += byte * POW2[offset]!;
  } else if (offset < 31) {
    const k = 31 - offset; // bits that stay under bit 31
    foldLo += (byte & ((1 << k) - 1)) * POW2[offset]!;
    foldHi += byte >>> k;
  } else if (offset <= 53) {
    foldHi += byte * POW2[offset - 31]!;
  } else {
    const k = 61 - offset; // bits that stay under bit 61; the rest wrap to bit 0
    foldHi += (byte & ((1 << k) - 1)) * POW2[offset - 31]!;
    foldLo += byte >>> k;
  }
}

/** Carries lo into hi and hi's overflow (2^61 = 1 mod p) back into lo, until both fit. */
function normalize(): void {
  while (foldLo >= TWO31 || foldHi >= TWO30) {
    const carry = Math.floor(foldLo / TWO31);
    foldLo -= carry * TWO31;
    foldHi += carry;
    const wrap = Math.floor(foldHi / TWO30);
    foldHi -= wrap * TWO30;
    foldLo += wrap;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
