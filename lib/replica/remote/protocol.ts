/**
 * The wire protocol between `mimeo sync` and `mimeo serve`: versioned JSON requests and
 * NDJSON streams over HTTP(S), plus framed binary "packs" of content. Both sides import
 * this one module, so a message has one definition; the server validates everything it
 * decodes as hostile input (see {@linkcode decodeTree}, {@linkcode decodeOps}).
 *
 * A run is one *session*:
 *
 * 1. `POST /v1/NAME/open` → an NDJSON stream whose first line names the session. The
 *    server holds the replica's lock while the stream is open: a client that dies closes
 *    it, and the lock goes with it. `GET /v1/NAME/state` → the replica's tree with hashes,
 *    checked against the folder, and the source fingerprints its manifest recorded (for
 *    the client's stat cache), compressed.
 * 2. `POST /v1/NAME/need` → which contents (by SHA-256) and which chunks of large files the
 *    server holds nowhere.
 * 3. `POST /v1/NAME/pack` (small files and chunks, framed) and `PUT /v1/NAME/blob/SHA`
 *    (a large file, resumable from an offset) → staged beside the replica, each checked
 *    against its hash before it is kept.
 * 4. `POST /v1/NAME/apply` → the plan and the source's entries; an NDJSON stream of the
 *    operations' events, then the result (the manifest is recorded by then).
 *
 * @module
 */
import { isSafeRelativePath } from "../../manifest.ts";
import type { Op } from "../../plan.ts";
import type { FileNode, Node, ScanIssue, Tree } from "../../types.ts";

/** The protocol version; a client and a server of different versions refuse each other. */
export const PROTOCOL_VERSION = 1;
/** Header carrying {@linkcode PROTOCOL_VERSION} on every request and response. */
export const PROTOCOL_HEADER = "mimeo-protocol";
/** Header naming the session (from `open`) on every later request of a run. */
export const SESSION_HEADER = "mimeo-session";

/** Limits on what one request may carry (the server refuses more, with 413). */
export const LIMITS = {
  /** A JSON request body (a 200,000-entry tree is about 40 MB). */
  jsonBytes: 512 * 1024 * 1024,
  /** Entries in one tree or plan. */
  entries: 10_000_000,
  /** One pack request's body. */
  packBytes: 64 * 1024 * 1024,
  /** A path's length in bytes (PATH_MAX) and a name's (NAME_MAX). */
  pathBytes: 4096,
  nameBytes: 255,
} as const;

/** A replica's name: one path component, never one of the server's own files. */
const NAME = /^[A-Za-z0-9_][A-Za-z0-9._@+-]{0,127}$/;

/** Whether `name` may name a served replica (not `..`, no `/`, not mimeo's own files). */
export function isReplicaName(name: string): boolean {
  return NAME.test(name) && !/\.mimeo\.(json|idx)$/.test(name) && !name.startsWith(".");
}

/** Where a remote replica is: the server's base URL and the replica's name. */
export interface RemoteLocation {
  /** `http(s)://host:port`, no trailing slash. */
  base: string;
  name: string;
  /** The URL as given, for messages. */
  url: string;
}

/** Whether a replica argument names a remote replica (`http://` or `https://`). */
export function isRemoteUrl(s: string): boolean {
  return /^https?:\/\//i.test(s);
}

/** Parse `https://HOST:PORT/NAME`; throws an Error with a one-line reason. */
export function parseRemote(url: string): RemoteLocation {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`'${url}' is not a valid URL`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new Error(`'${url}': only http:// and https:// replicas are served by mimeo`);
  }
  if (u.username || u.password) {
    throw new Error(`'${url}': put the token in --token-file or MIMEO_TOKEN, not in the URL`);
  }
  if (u.search || u.hash) throw new Error(`'${url}': a replica URL has no query or fragment`);
  const name = decodeURIComponent(u.pathname.replace(/^\/+|\/+$/g, ""));
  if (!isReplicaName(name)) {
    throw new Error(
      `'${url}' names no replica: the path must be one name (letters, digits, '.', '_', '-'), as in https://host:port/NAME`,
    );
  }
  return { base: `${u.protocol}//${u.host}`, name, url };
}

// ---------------------------------------------------------------------------------------
// Trees on the wire: [path, node] pairs with compact nodes.

/** A node on the wire: `["f", size, mtime, mode, sha256|null, ino?, ctime?, hashedAt?]`, `["d", mode, mtime?]`, `["l", target]`. */
export type WireNode =
  | ["f", number, number, number, string | null, number?, number?, number?]
  | ["d", number, number?]
  | ["l", string];

/** A node for the wire. */
export function encodeNode(n: Node): WireNode {
  if (n.type === "file") {
    const w: WireNode = ["f", n.size, n.mtime, n.mode, n.sha256 ?? null];
    if (n.fp) w.push(n.fp[0], n.fp[1], n.hashedAt ?? 0);
    return w;
  }
  if (n.type === "dir") return n.mtime === undefined ? ["d", n.mode] : ["d", n.mode, n.mtime];
  return ["l", n.target];
}

/** A tree for the wire. */
export function encodeTree(t: Tree): [string, WireNode][] {
  const out: [string, WireNode][] = [];
  for (const [p, n] of t) out.push([p, encodeNode(n)]);
  return out;
}

/** Raised for a malformed or out-of-bounds message (the server answers 400). */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

const HEX64 = /^[0-9a-f]{64}$/;
const isUint = (v: unknown): v is number =>
  typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
const isTime = (v: unknown): v is number =>
  typeof v === "number" && Number.isSafeInteger(v) && Math.abs(v) < 8.64e15;
const isMode = (v: unknown): v is number => isUint(v) && v <= 0o7777;

/** Whether `s` is a lowercase hex SHA-256. */
export function isSha256(s: unknown): s is string {
  return typeof s === "string" && HEX64.test(s);
}

const utf8 = new TextEncoder();

/** Whether `p` is a relative path the server may act on (see `isSafeRelativePath`). */
export function isWirePath(p: unknown): p is string {
  if (typeof p !== "string" || !isSafeRelativePath(p) || p.length > LIMITS.pathBytes) {
    return false;
  }
  if (utf8.encode(p).length > LIMITS.pathBytes) return false;
  for (const seg of p.split("/")) if (utf8.encode(seg).length > LIMITS.nameBytes) return false;
  return true;
}

/** Decode and validate one wire node; throws {@linkcode ProtocolError}. */
export function decodeNode(w: unknown, path: string): Node {
  if (!Array.isArray(w)) throw new ProtocolError(`entry '${path}' is not an array`);
  switch (w[0]) {
    case "f": {
      const [, size, mtime, mode, sha, ino, ctime, hashedAt] = w;
      if (!isUint(size) || !isTime(mtime) || !isMode(mode) || (sha !== null && !isSha256(sha))) {
        throw new ProtocolError(`entry '${path}': bad file fields`);
      }
      const n: FileNode = { type: "file", size, mtime, mode, sha256: sha ?? undefined };
      if (ino !== undefined) {
        if (!isUint(ino) || !isUint(ctime) || !isUint(hashedAt)) {
          throw new ProtocolError(`entry '${path}': bad fingerprint`);
        }
        n.fp = [ino, ctime];
        if (hashedAt) n.hashedAt = hashedAt;
      }
      return n;
    }
    case "d":
      if (!isMode(w[1]) || (w[2] !== undefined && !isTime(w[2]))) {
        throw new ProtocolError(`entry '${path}': bad folder fields`);
      }
      return w[2] === undefined
        ? { type: "dir", mode: w[1] }
        : { type: "dir", mode: w[1], mtime: w[2] };
    case "l":
      if (typeof w[1] !== "string" || w[1] === "" || w[1].includes("\0") || w[1].length > 4096) {
        throw new ProtocolError(`entry '${path}': bad symlink target`);
      }
      return { type: "symlink", target: w[1] };
    default:
      throw new ProtocolError(`entry '${path}': unknown type`);
  }
}

/** Decode and validate a wire tree (paths safe, parents present as folders). */
export function decodeTree(raw: unknown): Tree {
  if (!Array.isArray(raw)) throw new ProtocolError("tree is not an array");
  if (raw.length > LIMITS.entries) throw new ProtocolError("too many entries");
  const t: Tree = new Map();
  for (const item of raw) {
    if (!Array.isArray(item) || item.length !== 2 || !isWirePath(item[0])) {
      throw new ProtocolError("tree entry with a bad path");
    }
    const p = item[0] as string;
    if (t.has(p)) throw new ProtocolError(`entry '${p}' appears twice`);
    t.set(p, decodeNode(item[1], p));
  }
  for (const p of t.keys()) {
    const i = p.lastIndexOf("/");
    if (i > 0 && t.get(p.slice(0, i))?.type !== "dir") {
      throw new ProtocolError(`entry '${p}' has no parent folder in the tree`);
    }
  }
  return t;
}

/** Decode and validate a plan's operations: known kinds, safe paths, sane fields. */
export function decodeOps(raw: unknown): Op[] {
  if (!Array.isArray(raw)) throw new ProtocolError("ops is not an array");
  if (raw.length > LIMITS.entries) throw new ProtocolError("too many operations");
  const bad = (i: number) => new ProtocolError(`operation ${i} is malformed`);
  const ops: Op[] = [];
  for (let i = 0; i < raw.length; i++) {
    const o = raw[i] as Record<string, unknown>;
    if (typeof o !== "object" || o === null) throw bad(i);
    switch (o.op) {
      case "mkdir":
        if (!isWirePath(o.path) || !isMode(o.mode)) throw bad(i);
        ops.push({ op: "mkdir", path: o.path, mode: o.mode });
        break;
      case "rename":
        if (!isWirePath(o.from) || !isWirePath(o.to) || (o.kind !== "file" && o.kind !== "dir")) {
          throw bad(i);
        }
        ops.push({ op: "rename", from: o.from, to: o.to, kind: o.kind });
        break;
      case "copy":
      case "update":
        if (
          !isWirePath(o.path) || !isUint(o.size) || !isTime(o.mtime) || !isMode(o.mode) ||
          !isSha256(o.sha256)
        ) throw bad(i);
        ops.push({
          op: o.op,
          path: o.path,
          size: o.size,
          mtime: o.mtime,
          mode: o.mode,
          sha256: o.sha256,
        });
        break;
      case "meta":
        if (
          !isWirePath(o.path) || (o.kind !== "file" && o.kind !== "dir") ||
          (o.mode !== undefined && !isMode(o.mode)) || (o.mtime !== undefined && !isTime(o.mtime))
        ) throw bad(i);
        ops.push({
          op: "meta",
          path: o.path,
          kind: o.kind,
          ...(o.mode !== undefined ? { mode: o.mode as number } : {}),
          ...(o.mtime !== undefined ? { mtime: o.mtime as number } : {}),
        });
        break;
      case "symlink":
        if (
          !isWirePath(o.path) || typeof o.target !== "string" || o.target === "" ||
          o.target.includes("\0") || o.target.length > 4096
        ) throw bad(i);
        ops.push({ op: "symlink", path: o.path, target: o.target });
        break;
      case "delete":
        if (!isWirePath(o.path) || (o.kind !== "file" && o.kind !== "symlink")) throw bad(i);
        ops.push({ op: "delete", path: o.path, kind: o.kind });
        break;
      case "rmdir":
        if (!isWirePath(o.path)) throw bad(i);
        ops.push({ op: "rmdir", path: o.path });
        break;
      case "dirtime":
        if (!isWirePath(o.path) || !isTime(o.mtime)) throw bad(i);
        ops.push({ op: "dirtime", path: o.path, mtime: o.mtime });
        break;
      default:
        throw bad(i);
    }
  }
  return ops;
}

// ---------------------------------------------------------------------------------------
// Messages.

/** `open`'s request. */
export interface OpenRequest {
  /** A dry run takes no lock and creates nothing. */
  dryRun: boolean;
  /** Trust no recorded hash in the replica: the server re-hashes every file. */
  checksum: boolean;
  /** Exclude patterns (already read from ignore files) for the replica's side; none: all. */
  exclude: string[];
  /** The source folder's permission bits: a new replica folder gets them. */
  rootMode: number;
  /** The client's mimeo version, for the server's log. */
  client: string;
}

/** The first line of `open`'s stream: the session, and what the replica is. */
export interface OpenState {
  session: string;
  /** Whether the replica folder existed before this session. */
  existed: boolean;
  /** Whether a manifest was found beside it (and was valid). */
  manifest: boolean;
  /** The replica's entries. */
  entries: number;
  /** The replica folder's own mode and mtime (absent when it does not exist yet). */
  root?: { mode: number; mtime: number };
  /** The manifest's recorded digest. */
  digest?: string;
}

/**
 * `state`'s answer (`GET /v1/NAME/state`, compressed by the server when the client accepts
 * it): what the replica holds.
 */
export interface StateAnswer {
  /** The replica's entries, every file with its hash (the server hashed what it could not trust). */
  tree: [string, WireNode][];
  /** Replica paths that could not be read, and special files. */
  issues: ScanIssue[];
  /** What the manifest recorded of the source: `[path, size, mtime, sha256, ino, ctime]`. */
  sourceCache: [string, number, number, string, number, number][];
}

/** One content the client would send, for `need`. */
export interface NeedItem {
  sha256: string;
  size: number;
  /** The replica path it goes to. */
  path: string;
  /**
   * It replaces a large file at `path`: the server answers that file's chunk list, so that
   * the client sends only the chunks that differ (see `chunker.ts`).
   */
  delta?: boolean;
}

/** `need`'s answer. */
export interface NeedAnswer {
  /** Contents to send, with the bytes of each already received by an earlier, interrupted upload. */
  whole: { sha256: string; have: number }[];
  /**
   * Of those, the ones that replace a large file the server holds: its content (the
   * *basis*) and its chunk list, packed (`packChunks`).
   */
  basis: { sha256: string; base: string; chunks: string }[];
}

/**
 * How the server rebuilds a content from a basis: pieces in order, each `[offset, length]`
 * of the basis, or `[chunk SHA-256, length]` of a chunk sent in a pack.
 */
export interface Recipe {
  base: string;
  pieces: [number | string, number][];
}

/** `apply`'s request. */
export interface ApplyRequest {
  ops: unknown[];
  /** The source's entries (with fingerprints: the manifest records them for the next run's stat cache). */
  source: [string, WireNode][];
  /** Contents rebuilt from a basis and chunks: SHA-256 → its recipe. */
  recipes: Record<string, Recipe>;
  /** The source folder's own mode and mtime (the replica folder follows them). */
  root: { mode: number; mtime: number };
  dirTimes: boolean;
  /** Exclude patterns, for folders kept because they hold only excluded entries. */
  exclude: string[];
}

/** A line of `apply`'s stream: an event to log, or the end. */
export type ApplyLine = LogLine | { result: ApplyResult };

/** An event the server logged while it applied. */
export interface LogLine {
  log: "debug" | "info" | "warning" | "error";
  ev: Record<string, unknown>;
}

/** What the server's apply did. */
export interface ApplyResult {
  done: Record<Op["op"], number>;
  failures: { op: string; path: string; code: string; message: string }[];
  bytesCopied: number;
  stopped: boolean;
  digest?: string;
  manifestWritten: boolean;
  /** Root operations done (`meta .`, `dirtime .`), to list in the report. */
  rootOps: Op[];
}

/** An error answer: `{ error, code }` with a one-line message (never a server path). */
export interface ErrorAnswer {
  error: string;
  code: string;
}
