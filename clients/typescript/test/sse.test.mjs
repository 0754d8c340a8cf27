// The event-stream parser, against the WHATWG "event stream interpretation" rules.
import assert from "node:assert/strict";
import { test } from "node:test";

import { SseParser } from "../dist/index.js";

function parse(chunks) {
  const events = [];
  const parser = new SseParser((e) => events.push(e));
  for (const chunk of chunks) parser.push(chunk);
  return { events, parser };
}

test("a routing event, and comments (heartbeats) ignored", () => {
  const { events } = parse([': hello\n\nevent: routing\ndata: {"tenant":"acme","etag":"\\"x\\""}\n\n:ping\n\n']);
  assert.deepEqual(events, [{ type: "routing", data: '{"tenant":"acme","etag":"\\"x\\""}', id: "" }]);
});

test("lines end in LF, CRLF or CR, even when a CRLF is split across chunks", () => {
  const { events } = parse(["data: one\r", "\n\r", "\ndata: two\r\rdata: three\n\n"]);
  assert.deepEqual(
    events.map((e) => e.data),
    ["one", "two", "three"],
  );
});

test("any chunking gives the same events", () => {
  const text = "event: routing\r\ndata: a\r\ndata: b\r\nid: 7\r\n\r\ndata:c\n\n";
  const whole = parse([text]).events;
  assert.deepEqual(whole, [
    { type: "routing", data: "a\nb", id: "7" },
    { type: "message", data: "c", id: "7" },
  ]);
  for (let size = 1; size < 6; size++) {
    const chunks = [];
    for (let i = 0; i < text.length; i += size) chunks.push(text.slice(i, i + size));
    assert.deepEqual(parse(chunks).events, whole, `chunks of ${size}`);
  }
});

test("one space after the colon is dropped, no more; a field without a colon has an empty value", () => {
  const { events } = parse(["data:  two spaces\n\ndata\n\ndata\ndata\n\n"]);
  assert.deepEqual(
    events.map((e) => e.data),
    [" two spaces", "", "\n"],
  );
});

test("an event without data is not dispatched; its type does not leak into the next", () => {
  const { events } = parse(["event: routing\n\ndata: x\n\n"]);
  assert.deepEqual(events, [{ type: "message", data: "x", id: "" }]);
});

test("unknown fields are ignored; 'data ' with a space is not the data field", () => {
  const { events } = parse(["foo: bar\ndata : no\ndata: yes\n\n"]);
  assert.deepEqual(
    events.map((e) => e.data),
    ["yes"],
  );
});

test("id: kept across events, not when it holds NUL; retry: digits only", () => {
  const { events, parser } = parse(["id: 1\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nretry: 2500\n\nretry: soon\n\n"]);
  assert.deepEqual(
    events.map((e) => e.id),
    ["1", "1", "1"],
  );
  assert.equal(parser.lastEventId, "1");
  assert.equal(parser.retry, 2500);
});

test("an event not closed by a blank line is not dispatched; reset() forgets it", () => {
  const { events, parser } = parse(["data: half"]);
  assert.deepEqual(events, []);
  parser.reset();
  parser.push("\n\n");
  assert.deepEqual(events, []);
});

test("a line longer than the bound is refused", () => {
  const parser = new SseParser(() => {});
  assert.throws(() => parser.push("data: " + "x".repeat(1 << 21)), RangeError);
});

test("a BOM at the start is the decoder's to strip", () => {
  const bytes = new TextEncoder().encode("\ufeffdata: x\n\n");
  const { events } = parse([new TextDecoder().decode(bytes)]);
  assert.deepEqual(
    events.map((e) => e.data),
    ["x"],
  );
});
