/**
 * `mimeo serve DIR`: every folder directly inside DIR is a replica, reached as
 * `http(s)://HOST:PORT/NAME`, with its manifest beside it in DIR (`NAME.mimeo.json`) and
 * its content store in `DIR/.mimeo/NAME/`. The server runs the local replica side
 * (`replica/local/replica.ts`: scan, apply, record) for each client; the planner stays on
 * the client.
 *
 * Safe to expose:
 * - a bearer token, compared in constant time, is checked before anything else: without
 *   it every request gets the same 401, whatever it names;
 * - every path a request names is validated (`protocol.ts`) and every write goes through
 *   the replica's `FsTarget`, which never writes through a symlink; a replica name is one
 *   component and must be a real folder in DIR (a symlink planted there is refused);
 * - bodies are bounded, malformed input is a 400, and an error sent to a client never
 *   holds a server path or a stack: the detail goes to the server's own log.
 *
 * @module
 */
import { timingSafeEqual } from "node:crypto";
import { type OpFailure } from "../apply.ts";
import { filterOf } from "../filter.ts";
import { BusyError, errorCode, errorMessage, MimeoError } from "../errors.ts";
import { lockReplica } from "../lock.ts";
import { type EventTap, logEvent, withEventTap } from "../log.ts";
import { type CopyOp, countOps } from "../plan.ts";
import { type PathFilter } from "../scan.ts";
import {
  applyAndRecord,
  type ApplyRecordResult,
  readReplicaState,
  type ReplicaState,
} from "../replica/local/replica.ts";
import {
  type ApplyLine,
  type ApplyRequest,
  type ApplyResult,
  decodeOps,
  decodeTree,
  encodeTree,
  isReplicaName,
  isSha256,
  isWirePath,
  LIMITS,
  type NeedAnswer,
  type NeedItem,
  type OpenRequest,
  type OpenState,
  PROTOCOL_HEADER,
  PROTOCOL_VERSION,
  ProtocolError,
  type Recipe,
  SESSION_HEADER,
  type StateAnswer,
} from "../replica/remote/protocol.ts";
import { CHUNKED_MIN_BYTES, packChunks } from "../source/chunker.ts";
import { applyRootOps, rootOps, rootStat } from "../sync.ts";
import type { FileNode, Tree } from "../types.ts";
import { verify } from "../verify.ts";
import { ContentMismatchError, ContentStore } from "./store.ts";
import { VERSION } from "../cli.ts";

/** Options for {@linkcode serve}. */
export interface ServeOptions {
  /** The folder whose sub-folders are served (absolute). */
  dir: string;
  hostname: string;
  /** 0: a free port. */
  port: number;
  /** The bearer token clients must send; none: no authentication (loopback only). */
  token?: string;
  /** PEM certificate and key: serve HTTPS. */
  tls?: { cert: string; key: string };
  /** Stops the server: sessions are stopped cleanly (an apply in flight records what it did). */
  signal?: AbortSignal;
  /** Called with the server's URL once it listens. */
  onListen?: (url: string) => void;
}

/** An HTTP error with a status and a one-line message for the client. */
class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly code = "bad-request") {
    super(message);
  }
}

const isUint = (v: unknown): v is number =>
  typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/** How often an open session's stream sends a keep-alive line. */
const KEEPALIVE_MS = 5000;
/** Sessions at once (more get 503: each holds a scanned tree in memory). */
const MAX_SESSIONS = 64;
/** A session that makes no request for this long is closed (a client stuck, not gone). */
const IDLE_MS = 60 * 60 * 1000;

/** One client's run into one replica, from `open` until its stream closes. */
class Session {
  readonly id = crypto.randomUUID();
  readonly ac = new AbortController();
  /** The apply in flight, if any. */
  applying?: Promise<void>;
  /** What `state` answers (made when the session opens). */
  answer?: StateAnswer;
  state?: ReplicaState;
  exclude?: PathFilter;
  patterns: string[] = [];
  #closed = false;
  #onClose: (() => void)[] = [];
  /** When the session last made a request. */
  lastSeen = Date.now();

  constructor(
    readonly name: string,
    readonly root: string,
    readonly manifestPath: string,
    readonly store: ContentStore,
    readonly dryRun: boolean,
    readonly lock: Disposable | undefined,
  ) {}

  onClose(fn: () => void): void {
    this.#onClose.push(fn);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Stop what runs (an apply stops between operations and records), then let go of the lock. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.ac.abort(new Error("session closed"));
    await this.applying?.catch(() => {});
    this.lock?.[Symbol.dispose]();
    for (const fn of this.#onClose) fn();
  }
}

/** Read a request body as JSON, within `limit` bytes. */
async function readJson(req: Request, limit: number = LIMITS.jsonBytes): Promise<unknown> {
  const bytes = await readBody(req, limit);
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new HttpError(400, "request body is not valid JSON");
  }
}

/**
 * A request body within `limit` bytes; a gzip body (`content-encoding: gzip`, how the
 * client sends trees and plans) is inflated, and the limit is on what it inflates to.
 */
async function readBody(req: Request, limit: number): Promise<Uint8Array> {
  const gzip = req.headers.get("content-encoding") === "gzip";
  const len = Number(req.headers.get("content-length") ?? "NaN");
  if (!gzip && Number.isFinite(len) && len > limit) {
    throw new HttpError(413, "request body is too large");
  }
  if (!req.body) return new Uint8Array();
  const parts: Uint8Array[] = [];
  let size = 0;
  const body = gzip ? req.body.pipeThrough(new DecompressionStream("gzip")) : req.body;
  try {
    for await (const b of body) {
      size += b.length;
      if (size > limit) throw new HttpError(413, "request body is too large");
      parts.push(b);
    }
  } catch (e) {
    if (e instanceof HttpError) throw e;
    if (gzip) throw new HttpError(400, "request body is not valid gzip");
    throw e;
  }
  const out = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: {
      "content-type": "application/json",
      [PROTOCOL_HEADER]: String(PROTOCOL_VERSION),
    },
  });
}

/** A JSON answer, gzip-compressed when the client accepts it (a tree shrinks fivefold or more). */
function gzipJson(req: Request, body: unknown): Response {
  if (!/\bgzip\b/.test(req.headers.get("accept-encoding") ?? "")) return json(body);
  const stream = new Blob([JSON.stringify(body)]).stream().pipeThrough(
    new CompressionStream("gzip"),
  );
  return new Response(stream, {
    headers: {
      "content-type": "application/json",
      "content-encoding": "gzip",
      [PROTOCOL_HEADER]: String(PROTOCOL_VERSION),
    },
  });
}

/** Replace the server's own paths in a client-bound message. */
function scrubber(dir: string, root: string): (s: string) => string {
  return (s) => s.split(`${root}/`).join("").split(root).join(".").split(dir).join("<served>");
}

function scrubDeep(v: unknown, scrub: (s: string) => string): unknown {
  if (typeof v === "string") return scrub(v);
  if (Array.isArray(v)) return v.map((x) => scrubDeep(x, scrub));
  if (v && typeof v === "object") {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) o[k] = scrubDeep(x, scrub);
    return o;
  }
  return v;
}

function sameToken(given: string, want: string): boolean {
  const h = (s: string) =>
    new Uint8Array(process.getBuiltinModule("node:crypto").createHash("sha256").update(s).digest());
  return timingSafeEqual(h(given), h(want));
}

/**
 * Serve the replicas in `o.dir` until `o.signal` aborts. Resolves once every session has
 * stopped and the listener is closed.
 *
 * @example
 * ```ts
 * const ac = new AbortController();
 * await serve({ dir: "/srv/mirrors", hostname: "127.0.0.1", port: 8730, token: "s3cret", signal: ac.signal });
 * ```
 */
export async function serve(o: ServeOptions): Promise<void> {
  const sessions = new Map<string, Session>();
  const dir = o.dir;

  const replicaPaths = (name: string) => {
    if (!isReplicaName(name)) throw new HttpError(404, "no such replica", "not-found");
    return {
      root: `${dir}/${name}`,
      manifestPath: `${dir}/${name}.mimeo.json`,
      storeDir: `${dir}/.mimeo/${name}`,
    };
  };

  /** The replica folder, checked to be a real folder directly in DIR (not a symlink). */
  const checkRoot = (root: string): boolean => {
    try {
      const st = Deno.lstatSync(root);
      if (!st.isDirectory) {
        throw new HttpError(409, "that replica name is not a folder on the server", "not-a-folder");
      }
      return true;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return false;
      throw e;
    }
  };

  const sessionFor = (req: Request, name: string): Session => {
    const s = sessions.get(req.headers.get(SESSION_HEADER) ?? "");
    if (!s || s.name !== name || s.closed) {
      throw new HttpError(409, "no such session (it ended: start the run again)", "no-session");
    }
    s.lastSeen = Date.now();
    return s;
  };

  async function open(req: Request, name: string): Promise<Response> {
    const { root, manifestPath, storeDir } = replicaPaths(name);
    if (sessions.size >= MAX_SESSIONS) {
      throw new HttpError(
        503,
        "the server is serving too many runs; try again later",
        "busy-server",
      );
    }
    const body = await readJson(req, 1 << 20) as Partial<OpenRequest>;
    if (typeof body !== "object" || body === null) throw new HttpError(400, "bad open request");
    const dryRun = body.dryRun === true;
    const exclude = Array.isArray(body.exclude) ? body.exclude : [];
    if (exclude.some((p) => typeof p !== "string") || exclude.length > 10000) {
      throw new HttpError(400, "bad exclude patterns");
    }
    const rootMode =
      typeof body.rootMode === "number" && body.rootMode >= 0 && body.rootMode <= 0o7777
        ? body.rootMode
        : 0o755;
    let existed = checkRoot(root);
    if (!existed && !dryRun) {
      try {
        Deno.mkdirSync(root, { mode: (rootMode & 0o777) | 0o700 });
      } catch (e) {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
        existed = checkRoot(root);
      }
    }
    const lock = dryRun ? undefined : lockReplica(root, "sync");
    let store: ContentStore;
    try {
      store = new ContentStore(storeDir);
    } catch (e) {
      lock?.[Symbol.dispose]();
      throw e;
    }
    const s = new Session(name, root, manifestPath, store, dryRun, lock);
    sessions.set(s.id, s);
    s.onClose(() => sessions.delete(s.id));
    // (A client that goes away is seen when the session's stream is cancelled.)
    try {
      s.patterns = exclude as string[];
      s.exclude = await filterOf(s.patterns);
      const state = existed || !dryRun
        ? await readReplicaState(root, manifestPath, {
          exclude: s.exclude,
          checksum: body.checksum === true,
          signal: s.ac.signal,
        })
        : { tree: new Map(), issues: [], hashed: 0 } as ReplicaState;
      s.state = state;
      const sourceCache: StateAnswer["sourceCache"] = [];
      if (state.old) {
        for (const [p, c] of state.old.cache) {
          const e = state.old.entries.get(p);
          if (c.src && e?.type === "file") {
            sourceCache.push([p, e.size, e.mtime, e.sha256!, c.src[0], c.src[1]]);
          }
        }
      }
      const st = existed || !dryRun ? rootStat(root) : undefined;
      const first: OpenState = {
        session: s.id,
        existed,
        manifest: state.old !== undefined,
        entries: state.tree.size,
        root: st,
        digest: state.old?.digest,
      };
      s.answer = scrubDeep(
        { tree: encodeTree(state.tree), issues: state.issues, sourceCache },
        scrubber(dir, root),
      ) as StateAnswer;
      logEvent("info", {
        event: "session-open",
        replica: name,
        dryRun,
        entries: state.tree.size,
        hashed: state.hashed,
        message: `${name}: session opened${dryRun ? " (dry run)" : ""}, ${state.tree.size} entries${
          state.hashed ? `, ${state.hashed} files hashed` : ""
        }`,
      });
      const enc = new TextEncoder();
      let timer: ReturnType<typeof setInterval> | undefined;
      const scrub = scrubber(dir, root);
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(enc.encode(JSON.stringify(scrubDeep(first, scrub)) + "\n"));
          timer = setInterval(() => {
            try {
              c.enqueue(enc.encode("\n"));
            } catch { /* closed */ }
          }, KEEPALIVE_MS);
          s.onClose(() => {
            clearInterval(timer);
            try {
              c.close();
            } catch { /* already closed */ }
          });
        },
        cancel() {
          clearInterval(timer);
          logEvent("info", {
            event: "session-close",
            replica: name,
            message: `${name}: session closed`,
          });
          s.close();
        },
      });
      return new Response(stream, {
        headers: {
          "content-type": "application/x-ndjson",
          [PROTOCOL_HEADER]: String(PROTOCOL_VERSION),
        },
      });
    } catch (e) {
      await s.close();
      throw e;
    }
  }

  async function need(req: Request, name: string): Promise<Response> {
    const s = sessionFor(req, name);
    const body = await readJson(req) as { items?: NeedItem[] };
    if (!Array.isArray(body?.items) || body.items.length > LIMITS.entries) {
      throw new HttpError(400, "bad need request");
    }
    const tree = s.state!.tree;
    const held = new Set<string>();
    for (const n of tree.values()) if (n.type === "file" && n.sha256) held.add(n.sha256);
    const answer: NeedAnswer = { whole: [], basis: [] };
    const asked = new Set<string>();
    for (const it of body.items) {
      if (!isSha256(it?.sha256) || !isUint(it.size) || !isWirePath(it.path)) {
        throw new HttpError(400, "bad need item");
      }
      if (asked.has(it.sha256) || held.has(it.sha256) || s.store.has(it.sha256)) continue;
      asked.add(it.sha256);
      answer.whole.push({ sha256: it.sha256, have: s.store.partSize(it.sha256) });
      // The file it replaces, if large, is a basis: its chunk list goes back to the client.
      const old = it.delta ? tree.get(it.path) : undefined;
      if (old?.type === "file" && old.sha256 && old.size >= CHUNKED_MIN_BYTES) {
        try {
          const list = s.store.chunkList(old.sha256, `${s.root}/${it.path}`);
          if (list) {
            answer.basis.push({ sha256: it.sha256, base: old.sha256, chunks: packChunks(list) });
          }
        } catch (e) {
          logEvent("debug", {
            event: "basis-failed",
            path: it.path,
            error: errorMessage(e),
            message: `no basis for '${it.path}': ${errorMessage(e)}`,
          });
        }
      }
    }
    return json(answer);
  }

  async function pack(req: Request, name: string): Promise<Response> {
    const s = sessionFor(req, name);
    if (s.dryRun) throw new HttpError(409, "a dry run sends no content");
    const bytes = await readBody(req, LIMITS.packBytes);
    const rejected: string[] = [];
    let stored = 0;
    let off = 0;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    while (off < bytes.length) {
      if (off + 36 > bytes.length) throw new HttpError(400, "truncated pack frame");
      const sha = [...bytes.subarray(off, off + 32)].map((b) => b.toString(16).padStart(2, "0"))
        .join("");
      const len = view.getUint32(off + 32);
      off += 36;
      if (off + len > bytes.length) throw new HttpError(400, "truncated pack frame");
      if (s.store.put(sha, bytes.subarray(off, off + len))) stored++;
      else rejected.push(sha);
      off += len;
    }
    return json({ stored, rejected });
  }

  async function blob(req: Request, name: string, sha: string, url: URL): Promise<Response> {
    const s = sessionFor(req, name);
    if (s.dryRun) throw new HttpError(409, "a dry run sends no content");
    if (!isSha256(sha)) throw new HttpError(400, "bad content hash");
    const size = Number(url.searchParams.get("size"));
    const offset = Number(url.searchParams.get("offset") ?? "0");
    if (
      !Number.isSafeInteger(size) || size < 0 || !Number.isSafeInteger(offset) || offset < 0 ||
      offset > size
    ) {
      throw new HttpError(400, "bad size or offset");
    }
    if (!req.body) throw new HttpError(400, "no content");
    try {
      const have = await s.store.receive(sha, size, offset, req.body);
      return json({ have });
    } catch (e) {
      if (e instanceof ContentMismatchError) throw new HttpError(422, e.message, "mismatch");
      if (e instanceof ProtocolError) throw new HttpError(409, e.message, "offset");
      // A body cut short (the client went away) keeps what arrived for the next run.
      throw e;
    }
  }

  async function apply(req: Request, name: string): Promise<Response> {
    const s = sessionFor(req, name);
    if (s.dryRun) throw new HttpError(409, "a dry run applies nothing");
    if (s.applying) throw new HttpError(409, "this session is applying already");
    const body = await readJson(req) as Partial<ApplyRequest>;
    if (typeof body !== "object" || body === null) throw new HttpError(400, "bad apply request");
    let ops, src: Tree;
    try {
      ops = decodeOps(body.ops);
      src = decodeTree(body.source);
    } catch (e) {
      if (e instanceof ProtocolError) throw new HttpError(400, e.message);
      throw e;
    }
    const recipes = new Map<string, Recipe>();
    for (const [sha, r] of Object.entries(body.recipes ?? {})) {
      if (!isSha256(sha)) throw new HttpError(400, "bad recipe");
      recipes.set(sha, validRecipe(r));
    }
    const rootWant = body.root;
    if (
      !rootWant || typeof rootWant.mode !== "number" || typeof rootWant.mtime !== "number"
    ) throw new HttpError(400, "bad root");
    for (const op of ops) {
      if (op.op !== "copy" && op.op !== "update") continue;
      const n = src.get(op.path);
      if (n?.type !== "file" || n.sha256 !== op.sha256) {
        throw new HttpError(400, `operation on '${op.path}' does not match the source entries`);
      }
    }
    const state = s.state!;
    const scrub = scrubber(dir, s.root);
    const enc = new TextEncoder();
    let ctl!: ReadableStreamDefaultController<Uint8Array>;
    const send = (line: ApplyLine) => {
      try {
        ctl.enqueue(enc.encode(JSON.stringify(scrubDeep(line, scrub)) + "\n"));
      } catch { /* the client went away: the run goes on to a clean stop */ }
    };
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        ctl = c;
      },
      cancel() {
        s.close();
      },
    });
    const tap: EventTap = (level, ev) => send({ log: level, ev });
    s.applying = withEventTap(tap, async () => {
      let result: ApplyResult;
      try {
        prepareContents(
          s,
          ops.filter((o): o is CopyOp => o.op === "copy" || o.op === "update"),
          recipes,
        );
        const exclude = s.exclude;
        const r: ApplyRecordResult = await applyAndRecord(
          { ops, deletesSkipped: [], bytesToCopy: 0 },
          {
            root: s.root,
            manifestPath: s.manifestPath,
            state,
            src,
            exclude,
            signal: s.ac.signal,
            copy: (path, target) => placeContent(s, src, path, target, s.ac.signal),
          },
        );
        const done = r.applied.counts;
        const failures: OpFailure[] = r.applied.failures;
        const rOps = r.applied.stopped
          ? []
          : rootOps(rootWant, rootStat(s.root), false, body.dirTimes !== false, []);
        applyRootOps(rOps, s.root, done, failures);
        const keep = new Set<string>();
        for (const n of r.recorded.entries.values()) {
          if (n.type === "file" && n.size >= CHUNKED_MIN_BYTES && n.sha256) keep.add(n.sha256);
        }
        s.store.prune(keep);
        s.state = { ...state, tree: r.recorded.entries };
        result = {
          done,
          failures,
          bytesCopied: r.applied.bytesCopied,
          stopped: r.applied.stopped,
          digest: r.digest,
          manifestWritten: r.manifestWritten,
          rootOps: rOps,
        };
      } catch (e) {
        logEvent("error", {
          event: "apply-failed",
          replica: name,
          error: errorMessage(e),
          message: `${name}: apply failed: ${errorMessage(e)}`,
        });
        result = {
          done: countOps([]),
          failures: [{ op: "manifest", path: ".", code: errorCode(e), message: errorMessage(e) }],
          bytesCopied: 0,
          stopped: false,
          manifestWritten: false,
          rootOps: [],
        };
      }
      send({ result });
      try {
        ctl.close();
      } catch { /* gone */ }
    }).finally(() => {
      s.applying = undefined;
    });
    return new Response(stream, {
      headers: {
        "content-type": "application/x-ndjson",
        [PROTOCOL_HEADER]: String(PROTOCOL_VERSION),
      },
    });
  }

  async function runVerify(name: string): Promise<Response> {
    const { root, manifestPath } = replicaPaths(name);
    if (!checkRoot(root)) throw new HttpError(404, "no such replica", "not-found");
    const r = await verify(root, { manifest: manifestPath });
    const scrub = scrubber(dir, root);
    return json(scrubDeep({ ...r, manifest: `${name}.mimeo.json` }, scrub));
  }

  async function route(req: Request): Promise<Response> {
    if (o.token !== undefined) {
      const auth = req.headers.get("authorization") ?? "";
      const m = /^Bearer (.+)$/.exec(auth);
      if (!m || !sameToken(m[1], o.token)) {
        return json({ error: "unauthorized: a valid token is needed", code: "unauthorized" }, 401);
      }
    }
    const v = req.headers.get(PROTOCOL_HEADER);
    const url = new URL(req.url);
    if (v !== null && v !== String(PROTOCOL_VERSION)) {
      throw new HttpError(
        400,
        `protocol version ${v} is not spoken here (this server speaks ${PROTOCOL_VERSION}: use mimeo ${VERSION} on both sides)`,
        "protocol",
      );
    }
    // Names are decoded once, here; a decoded '/' or '..' is refused as a name, never split.
    let parts: string[];
    try {
      parts = url.pathname.split("/").slice(1).map(decodeURIComponent);
    } catch {
      throw new HttpError(400, "bad path encoding");
    }
    if (parts[0] !== "v1") {
      throw new HttpError(404, "not found (this is a mimeo server: use mimeo sync)", "not-found");
    }
    if (parts.length === 1 || (parts.length === 2 && parts[1] === "")) {
      return json({ server: "mimeo", version: VERSION, protocol: PROTOCOL_VERSION });
    }
    const [, name, action, arg] = parts;
    if (!isReplicaName(name)) throw new HttpError(404, "no such replica", "not-found");
    if (v === null) throw new HttpError(400, `missing ${PROTOCOL_HEADER} header`, "protocol");
    const m = req.method;
    if (m === "POST" && action === "open" && parts.length === 3) return await open(req, name);
    if (m === "GET" && action === "state" && parts.length === 3) {
      const s = sessionFor(req, name);
      return gzipJson(req, s.answer);
    }
    if (m === "POST" && action === "need" && parts.length === 3) return await need(req, name);
    if (m === "POST" && action === "pack" && parts.length === 3) return await pack(req, name);
    if (m === "PUT" && action === "blob" && parts.length === 4) {
      return await blob(req, name, arg, url);
    }
    if (m === "POST" && action === "apply" && parts.length === 3) return await apply(req, name);
    if (m === "POST" && action === "verify" && parts.length === 3) return await runVerify(name);
    throw new HttpError(404, "not found", "not-found");
  }

  async function handler(req: Request): Promise<Response> {
    try {
      return await route(req);
    } catch (e) {
      if (e instanceof HttpError) return json({ error: e.message, code: e.code }, e.status);
      if (e instanceof BusyError) {
        return json({
          error:
            "another mimeo run is using this replica; nothing was done (try again when it ends)",
          code: "busy",
        }, 409);
      }
      if (e instanceof MimeoError) {
        const root = `${dir}/`;
        return json({ error: e.message.split(root).join(""), code: e.constructor.name }, 409);
      }
      logEvent("error", {
        event: "request-failed",
        url: req.url,
        error: errorMessage(e),
        message: `request ${req.method} ${new URL(req.url).pathname} failed: ${errorMessage(e)}`,
      });
      return json(
        { error: "internal error (the server's log has the details)", code: "internal" },
        500,
      );
    }
  }

  const ac = new AbortController();
  const server = Deno.serve({
    hostname: o.hostname,
    port: o.port,
    signal: ac.signal,
    ...(o.tls ? { cert: o.tls.cert, key: o.tls.key } : {}),
    onListen: (addr) => {
      const host = addr.hostname.includes(":") ? `[${addr.hostname}]` : addr.hostname;
      o.onListen?.(`${o.tls ? "https" : "http"}://${host}:${addr.port}`);
    },
    onError: (e) => {
      logEvent("error", {
        event: "request-failed",
        error: errorMessage(e),
        message: `request failed: ${errorMessage(e)}`,
      });
      return json({ error: "internal error", code: "internal" }, 500);
    },
  }, handler);
  const sweep = setInterval(() => {
    for (const s of sessions.values()) {
      if (!s.applying && Date.now() - s.lastSeen > IDLE_MS) {
        logEvent("warning", {
          event: "session-idle",
          replica: s.name,
          message: `${s.name}: session closed after an hour without a request`,
        });
        s.close();
      }
    }
  }, 60_000);
  Deno.unrefTimer(sweep);
  const stop = async () => {
    clearInterval(sweep);
    await Promise.all([...sessions.values()].map((s) => s.close()));
    ac.abort();
  };
  if (o.signal?.aborted) await stop();
  else o.signal?.addEventListener("abort", () => stop(), { once: true });
  await server.finished;
}

/** Validate a recipe from a client (pieces within bounds). */
function validRecipe(raw: unknown): Recipe {
  const r = raw as Partial<Recipe>;
  if (!r || !isSha256(r.base) || !Array.isArray(r.pieces) || r.pieces.length > 1 << 24) {
    throw new HttpError(400, "bad recipe");
  }
  for (const p of r.pieces) {
    if (
      !Array.isArray(p) || p.length !== 2 || !isUint(p[1]) || p[1] === 0 || p[1] > 1 << 30 ||
      !(isUint(p[0]) || isSha256(p[0]))
    ) throw new HttpError(400, "bad recipe");
  }
  return r as Recipe;
}

/**
 * Before the plan runs (while the replica is as scanned): stage every content the
 * operations place, from the store, from chunks, or from the replica's own copy. A content
 * that cannot be staged is left out: its operation fails, with the reason in the log.
 */
function prepareContents(s: Session, copies: CopyOp[], recipes: Map<string, Recipe>): void {
  const tree = s.state!.tree;
  const pathOfSha = new Map<string, string>();
  for (const [p, n] of tree) {
    if (n.type === "file" && n.sha256 && !pathOfSha.has(n.sha256)) pathOfSha.set(n.sha256, p);
  }
  for (const op of copies) {
    const sha = op.sha256!;
    if (s.store.has(sha)) continue;
    try {
      const held = pathOfSha.get(sha);
      if (held !== undefined) {
        s.store.adopt(sha, `${s.root}/${held}`);
        continue;
      }
      const recipe = recipes.get(sha);
      const basePath = recipe && pathOfSha.get(recipe.base);
      if (recipe && basePath !== undefined) s.store.assemble(sha, recipe, `${s.root}/${basePath}`);
    } catch (e) {
      logEvent("debug", {
        event: "stage-failed",
        path: op.path,
        error: errorMessage(e),
        message: `cannot stage the content of '${op.path}': ${errorMessage(e)}`,
      });
    }
  }
}

/** The `copy` of an apply on the server: the staged content, checked as it is copied into place. */
async function placeContent(
  s: Session,
  src: Tree,
  path: string,
  target: import("../target_fs.ts").Target,
  signal: AbortSignal,
): Promise<FileNode> {
  const n = src.get(path) as FileNode;
  const sha = n.sha256!;
  if (!s.store.has(sha)) {
    throw Object.assign(
      new Error("its content did not reach the server (it goes in the next run)"),
      { code: "MISSING" },
    );
  }
  const w = await target.writeFile(path, s.store.blob(sha), {
    mode: n.mode,
    mtime: n.mtime,
    size: n.size,
  }, signal);
  if (w.sha256 !== sha || w.size !== n.size) {
    w.discard();
    throw Object.assign(new Error("content does not match the hash the client announced"), {
      code: "MISMATCH",
    });
  }
  const fp = w.commit();
  return {
    type: "file",
    size: n.size,
    mtime: n.mtime,
    mode: n.mode,
    sha256: sha,
    fp,
    hashedAt: Date.now(),
    bornAt: w.bornAt,
  };
}
