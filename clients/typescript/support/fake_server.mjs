// A small stand-in for the ftdeploy HTTP API, for the client's tests: routing documents with
// ETag / If-None-Match, the change stream, outcome batches counted once per batch id. Each test
// script starts its own on a free port; knobs let a test make it fail in the ways a real one can.
import http from "node:http";

export class FakeServer {
  constructor({ key = "test-key-123", heartbeatMs = 0 } = {}) {
    this.key = key;
    this.heartbeatMs = heartbeatMs;
    this.documents = new Map(); // name (slug or id) -> document
    this.requests = []; // {method, path, headers}
    this.streamEnabled = true;
    this.streams = new Set();
    this.streamConnections = 0;
    this.documentFailures = 0; // the next N document requests answer 503
    this.outcomeFailures = []; // per POST, in order: a status to answer, or "lost" (kept, no answer)
    this.attempts = []; // every outcome POST: {tenant, body, headers}
    this.accepted = new Map(); // batch id -> {tenant, body}: what the server counted
    this.sockets = new Set();
    this.port = 0;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Listens (again, on the same port after a stop, when it had one). */
  async start() {
    this.server = http.createServer((req, res) => this.#handle(req, res));
    this.server.on("connection", (socket) => {
      this.sockets.add(socket);
      socket.on("close", () => this.sockets.delete(socket));
    });
    await new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(this.port, "127.0.0.1", resolve);
    });
    this.port = this.server.address().port;
    return this;
  }

  /** Unreachable from now on: connections cut, port closed. */
  async stop() {
    for (const res of this.streams) clearInterval(res.heartbeat);
    this.streams.clear();
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  setDocument(document) {
    this.documents.set(document.tenant.slug, document);
    this.documents.set(document.tenant.id, document);
  }

  announce(tenant, etag) {
    for (const res of this.streams) res.write(`event: routing\ndata: ${JSON.stringify({ tenant, etag })}\n\n`);
  }

  /** Tells every open stream that changes may have been missed. */
  resync() {
    for (const res of this.streams) res.write("event: resync\ndata: {}\n\n");
  }

  /** Ends every open stream (the connection drops, the server stays up). */
  dropStreams() {
    for (const res of this.streams) {
      clearInterval(res.heartbeat);
      res.destroy();
    }
    this.streams.clear();
  }

  count(method, prefix) {
    return this.requests.filter((r) => r.method === method && r.path.startsWith(prefix)).length;
  }

  #handle(req, res) {
    const path = decodeURI(req.url);
    this.requests.push({ method: req.method, path, headers: req.headers });
    if (req.headers.authorization !== `Bearer ${this.key}`) {
      return this.#json(res, 401, { title: "key refused" });
    }
    let match;
    if (req.method === "GET" && path === "/v1/stream") return this.#stream(req, res);
    if (req.method === "GET" && (match = /^\/v1\/tenants\/([^/]+)\/routing$/.exec(path))) {
      if (this.documentFailures > 0) {
        this.documentFailures--;
        return this.#json(res, 503, { title: "busy" });
      }
      const document = this.documents.get(match[1]);
      if (!document) return this.#json(res, 404, { title: "no such tenant" });
      if (req.headers["if-none-match"] === document.etag) {
        res.writeHead(304, { etag: document.etag });
        return res.end();
      }
      return this.#json(res, 200, document, { etag: document.etag });
    }
    if (req.method === "POST" && (match = /^\/v1\/tenants\/([^/]+)\/outcomes$/.exec(path))) {
      let text = "";
      req.setEncoding("utf8");
      req.on("data", (chunk) => (text += chunk));
      req.on("end", () => {
        const body = JSON.parse(text);
        const tenant = match[1];
        this.attempts.push({ tenant, body, headers: req.headers });
        const failure = this.outcomeFailures.shift();
        if (typeof failure === "number") return this.#json(res, failure, { title: "failure" });
        if (!this.accepted.has(body.batch_id)) this.accepted.set(body.batch_id, { tenant, body });
        if (failure === "lost") return res.socket.destroy(); // counted, but the answer never arrives
        return this.#json(res, 202, { batch_id: body.batch_id, accepted: body.records.length });
      });
      return undefined;
    }
    return this.#json(res, 404, { title: "no such route" });
  }

  #stream(req, res) {
    if (!this.streamEnabled) return this.#json(res, 404, { title: "no stream here" });
    this.streamConnections++;
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    res.write(": connected\n\n");
    if (this.heartbeatMs > 0) res.heartbeat = setInterval(() => res.write(": ping\n\n"), this.heartbeatMs);
    this.streams.add(res);
    req.on("close", () => {
      clearInterval(res.heartbeat);
      this.streams.delete(res);
    });
    return undefined;
  }

  #json(res, status, body, headers = {}) {
    res.writeHead(status, { "content-type": "application/json", ...headers });
    res.end(JSON.stringify(body));
  }
}

/** Resolves when `condition()` holds; rejects after `ms`. */
export async function until(condition, ms = 3000, what = "condition") {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
