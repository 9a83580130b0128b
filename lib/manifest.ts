/**
 * Read, write, digest and validate manifests.
 *
 * A manifest is deterministic JSON: keys sorted at every level, one entry per line,
 * relative POSIX paths, a `version` and the hash `algorithm`. Its `digest` covers every
 * entry's path, type, mode and content (SHA-256 or link target): two trees with the same
 * digest hold the same entries with the same bytes and permissions. File mtimes are
 * recorded in the entries but left out of the digest, so two builds of the same artifacts
 * compare equal.
 *
 * A replica manifest also has a `cache` section: per file, the stat fingerprints
 * (`[replica inode, replica ctime, source inode, source ctime]`, the replica pair `0,0` when
 * it is not trusted yet) that let the next run
 * trust recorded hashes without reading the files again.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { encodeIndex, indexPathFor } from "./manifest_index.ts";
import type { Fingerprint, Node, Tree } from "./types.ts";

/** Current manifest format version. */
export const MANIFEST_VERSION = 1;

/** Per-file cache record of a replica manifest. */
export interface CacheRecord {
  /** Fingerprint of the replica's copy when it was written or last checked. */
  dst?: Fingerprint;
  /** Fingerprint of the source file whose hash this is; absent when not trustworthy. */
  src?: Fingerprint;
}

/** A manifest in memory. Every file entry has its `sha256`. */
export interface Manifest {
  entries: Tree;
  /** The digest as read from the file (not recomputed unless asked). */
  digest?: string;
  /** Stat fingerprints (replica manifests only). */
  cache: Map<string, CacheRecord>;
}

/** Totals over a manifest's entries. */
export interface Totals {
  files: number;
  dirs: number;
  symlinks: number;
  bytes: number;
}

/** Raised when a manifest file is not a valid mimeo manifest. */
export class ManifestError extends Error {
  constructor(readonly path: string, reason: string) {
    super(`${path}: not a valid mimeo manifest (${reason})`);
    this.name = "ManifestError";
  }
}

/** Octal text for permission bits, e.g. `0644`. */
export function modeString(mode: number): string {
  return mode.toString(8).padStart(4, "0");
}

/**
 * Sorted copy of a tree's paths, in UTF-16 code-unit order (the default `sort()` order for
 * strings, which is the same order as {@linkcode comparePaths}, computed natively).
 */
export function sortedPaths(tree: Tree): string[] {
  return [...tree.keys()].sort();
}

/** The path order used everywhere mimeo sorts: plain code-unit comparison. */
export function comparePaths(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The digest of a tree: SHA-256 over `path NUL type NUL mode NUL content NUL` for every
 * entry in sorted path order, as `sha256:<hex>`. Throws if a file has no hash.
 *
 * @example
 * ```ts
 * const d = treeDigest(new Map([["a", { type: "dir", mode: 0o755 }]]));
 * ```
 */
export function treeDigest(tree: Tree, paths: string[] = sortedPaths(tree)): string {
  const h = createHash("sha256");
  // Batched: one native update per 1,000 entries instead of one per entry.
  let batch: string[] = [];
  for (const p of paths) {
    batch.push(digestLine(p, tree.get(p)!));
    if (batch.length === 1000) {
      h.update(batch.join(""));
      batch = [];
    }
  }
  if (batch.length) h.update(batch.join(""));
  return `sha256:${h.digest("hex")}`;
}

function digestLine(p: string, n: Node): string {
  if (n.type === "file") {
    if (!n.sha256) throw new Error(`no hash for '${p}'`);
    return `${p}\0file\0${modeString(n.mode)}\0${n.sha256}\0`;
  }
  if (n.type === "dir") return `${p}\0dir\0${modeString(n.mode)}\0\0`;
  return `${p}\0symlink\0\0${n.target}\0`;
}

/** JSON text of a string; skips JSON.stringify for the common case of nothing to escape. */
function jsonString(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : `"${s}"`;
}
// deno-lint-ignore no-control-regex
const NEEDS_ESCAPE = /["\\\u0000-\u001f\u2028\u2029\ud800-\udfff]/;

/** Counts and bytes of a tree. */
export function totalsOf(tree: Tree): Totals {
  const t: Totals = { files: 0, dirs: 0, symlinks: 0, bytes: 0 };
  for (const n of tree.values()) {
    if (n.type === "file") {
      t.files++;
      t.bytes += n.size;
    } else if (n.type === "dir") t.dirs++;
    else t.symlinks++;
  }
  return t;
}

function entryJson(n: Node): string {
  switch (n.type) {
    case "file":
      return `{"mode":"${
        modeString(n.mode)
      }","mtime":${n.mtime},"sha256":"${n.sha256}","size":${n.size},"type":"file"}`;
    case "dir":
      return `{"mode":"${modeString(n.mode)}","type":"dir"}`;
    case "symlink":
      return `{"target":${jsonString(n.target)},"type":"symlink"}`;
  }
}

/**
 * Serialize a manifest to its canonical JSON text (sorted keys, one entry per line), in one
 * pass that also computes the digest. The cache section is written only when `withCache`.
 * Returns the text in chunks of about 64 KiB, built by concatenation: joining 20,000 small
 * strings with `Array.prototype.join` costs several times more.
 */
export function serializeManifestChunks(m: Manifest, withCache: boolean): string[] {
  const paths = sortedPaths(m.entries);
  const h = createHash("sha256");
  let digestIn = "";
  const keys: string[] = new Array(paths.length);
  let cacheText = "";
  const cacheChunks: string[] = [];
  const t: Totals = { files: 0, dirs: 0, symlinks: 0, bytes: 0 };
  let sep = "";
  for (let i = 0; i < paths.length; i++) {
    const p = paths[i];
    const n = m.entries.get(p)!;
    const key = keys[i] = jsonString(p);
    digestIn += digestLine(p, n);
    if (digestIn.length > 65536) {
      h.update(digestIn);
      digestIn = "";
    }
    if (n.type === "file") {
      t.files++;
      t.bytes += n.size;
      const c = withCache ? m.cache.get(p) : undefined;
      if (c && (c.dst || c.src)) {
        // [dst ino, dst ctime] or [dst ino, dst ctime, src ino, src ctime]; 0,0 = no dst.
        const d = c.dst ?? [0, 0];
        cacheText += c.src
          ? `${sep}${key}: [${d[0]},${d[1]},${c.src[0]},${c.src[1]}]`
          : `${sep}${key}: [${d[0]},${d[1]}]`;
        sep = ",\n";
        if (cacheText.length > 65536) {
          cacheChunks.push(cacheText);
          cacheText = "";
        }
      }
    } else if (n.type === "dir") t.dirs++;
    else t.symlinks++;
  }
  h.update(digestIn);
  const digest = `sha256:${h.digest("hex")}`;
  m.digest = digest;
  const out: string[] = [`{\n"algorithm": "sha256",\n`];
  if (withCache) {
    out.push(`"cache": {\n`, ...cacheChunks, cacheText, sep ? "\n},\n" : "},\n");
  }
  let text = `"digest": "${digest}",\n"entries": {\n`;
  for (let i = 0; i < paths.length; i++) {
    text += `${i ? ",\n" : ""}${keys[i]}: ${entryJson(m.entries.get(paths[i])!)}`;
    if (text.length > 65536) {
      out.push(text);
      text = "";
    }
  }
  text += `${
    paths.length ? "\n" : ""
  }},\n"totals": {"bytes":${t.bytes},"dirs":${t.dirs},"files":${t.files},"symlinks":${t.symlinks}},\n"version": ${MANIFEST_VERSION}\n}\n`;
  out.push(text);
  return out;
}

/** The canonical JSON text of a manifest (see {@linkcode serializeManifestChunks}). */
export function serializeManifest(m: Manifest, withCache: boolean): string {
  return serializeManifestChunks(m, withCache).join("");
}

const HEX64 = /^[0-9a-f]{64}$/;
const MODE = /^[0-7]{3,4}$/;

/** Whether a relative path is acceptable in a manifest (no absolute, `..`, empty parts). */
export function isSafeRelativePath(p: string): boolean {
  return p !== "" && !UNSAFE_PATH.test(p);
}
/** Absolute, trailing slash, empty segment, `.` or `..` segment, NUL. */
const UNSAFE_PATH = /^\/|\/$|\/\/|(^|\/)\.\.?(\/|$)|\0/;

function validEntry(e: Record<string, unknown>): boolean {
  switch (e.type) {
    case "file":
      return typeof e.mode === "string" && MODE.test(e.mode) && typeof e.sha256 === "string" &&
        HEX64.test(e.sha256) && Number.isSafeInteger(e.size) && (e.size as number) >= 0 &&
        typeof e.mtime === "number" && Number.isFinite(e.mtime);
    case "dir":
      return typeof e.mode === "string" && MODE.test(e.mode);
    case "symlink":
      return typeof e.target === "string" && e.target !== "" && !e.target.includes("\0");
    default:
      return false;
  }
}

function isFp(v: unknown): boolean {
  if (!Array.isArray(v) || (v.length !== 2 && v.length !== 4)) return false;
  for (let i = 0; i < v.length; i++) {
    const x = v[i];
    if (typeof x !== "number" || !(x >= 0) || !Number.isSafeInteger(x)) return false;
  }
  return true;
}

/**
 * Parse and validate manifest text. Throws {@linkcode ManifestError} with the reason.
 * The digest is checked only when `checkDigest` is set (it costs a pass over all entries).
 */
export function parseManifest(text: string, path: string, checkDigest = false): Manifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ManifestError(path, `bad JSON: ${(e as Error).message}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ManifestError(path, "not a JSON object");
  }
  const o = raw as Record<string, unknown>;
  if (o.version !== MANIFEST_VERSION) {
    throw new ManifestError(path, `unsupported version ${JSON.stringify(o.version)}`);
  }
  if (o.algorithm !== "sha256") {
    throw new ManifestError(path, `unsupported algorithm ${JSON.stringify(o.algorithm)}`);
  }
  const rawEntries = o.entries;
  if (typeof rawEntries !== "object" || rawEntries === null || Array.isArray(rawEntries)) {
    throw new ManifestError(path, "missing 'entries'");
  }
  const entries: Tree = new Map();
  const all = rawEntries as Record<string, Record<string, unknown>>;
  // Fresh node objects of one shape each (mutating the parsed objects' `mode` from text to
  // number makes V8 migrate every object: slower at 20,000 entries).
  for (const p in all) {
    if (!isSafeRelativePath(p)) throw new ManifestError(path, `unsafe path ${JSON.stringify(p)}`);
    const e = all[p];
    if (typeof e !== "object" || e === null || !validEntry(e)) {
      throw new ManifestError(path, `bad entry for ${JSON.stringify(p)}`);
    }
    entries.set(
      p,
      e.type === "file"
        ? {
          type: "file",
          size: e.size as number,
          mtime: e.mtime as number,
          mode: parseInt(e.mode as string, 8),
          sha256: e.sha256 as string,
        }
        : e.type === "dir"
        ? { type: "dir", mode: parseInt(e.mode as string, 8) }
        : { type: "symlink", target: e.target as string },
    );
  }
  const cache = new Map<string, CacheRecord>();
  if (o.cache !== undefined) {
    if (typeof o.cache !== "object" || o.cache === null || Array.isArray(o.cache)) {
      throw new ManifestError(path, "bad 'cache'");
    }
    const rows = o.cache as Record<string, unknown>;
    for (const p in rows) {
      const a = rows[p] as number[];
      if (!isFp(a) || entries.get(p)?.type !== "file") continue; // stale rows are ignored
      cache.set(p, {
        dst: a[0] === 0 && a[1] === 0 ? undefined : [a[0], a[1]],
        src: a.length === 4 ? [a[2], a[3]] : undefined,
      });
    }
  }
  if (checkDigest) {
    if (typeof o.digest !== "string") throw new ManifestError(path, "missing 'digest'");
    const actual = treeDigest(entries);
    if (actual !== o.digest) {
      throw new ManifestError(
        path,
        `digest mismatch: recorded ${o.digest}, entries give ${actual}`,
      );
    }
  }
  return { entries, cache, digest: typeof o.digest === "string" ? o.digest : undefined };
}

/** Read a manifest file. Throws `Deno.errors.NotFound` when absent, ManifestError when bad. */
export function readManifest(path: string, checkDigest = false): Manifest {
  return parseManifest(Deno.readTextFileSync(path), path, checkDigest);
}

/**
 * Write text to `path` atomically: a temporary file in the same folder, flushed to disk,
 * then renamed over `path`. A crash leaves either the old file or the new one.
 */
export function writeFileAtomicSync(
  path: string,
  text: string | string[] | Uint8Array,
): void {
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  const f = Deno.openSync(tmp, { write: true, createNew: true, mode: 0o644 });
  try {
    const enc = new TextEncoder();
    for (const chunk of typeof text === "string" || text instanceof Uint8Array ? [text] : text) {
      const data = typeof chunk === "string" ? enc.encode(chunk) : chunk;
      let off = 0;
      while (off < data.length) off += f.writeSync(data.subarray(off));
    }
    f.syncSync();
  } catch (e) {
    f.close();
    try {
      Deno.removeSync(tmp);
    } catch { /* already gone */ }
    throw e;
  }
  f.close();
  try {
    Deno.renameSync(tmp, path);
  } catch (e) {
    try {
      Deno.removeSync(tmp);
    } catch { /* already gone */ }
    throw e;
  }
}

/**
 * Write the index of the manifest just written at `manifestPath` (atomically, like the
 * manifest; see `manifest_index.ts`). A missing index only costs speed, so a failure is
 * returned, not thrown.
 */
export function writeIndex(manifestPath: string, m: Manifest): unknown {
  try {
    writeFileAtomicSync(indexPathFor(manifestPath), encodeIndex(m, Deno.statSync(manifestPath)));
    return undefined;
  } catch (e) {
    return e;
  }
}

/** Write a manifest atomically; returns its digest. */
export function writeManifest(path: string, m: Manifest, withCache = true): string {
  writeFileAtomicSync(path, serializeManifestChunks(m, withCache));
  return m.digest!;
}
