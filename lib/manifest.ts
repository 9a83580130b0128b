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
 * it is not trusted yet) that let the next run trust recorded hashes without reading the
 * files again; per folder (once a run listed it and found it unchanged), the same pairs,
 * that let the quick check skip listing it (`quick_check.ts`).
 *
 * @module
 */
import {
  HEX_PAIRS,
  INDEX_FIELDS,
  IndexBuilder,
  indexPathFor,
  Kind,
  LINE_FIELDS,
  loadIndexDetails,
  type ManifestIndex,
  readAt,
  statKey,
} from "./manifest_index.ts";
import type { Fingerprint, Node, Tree } from "./types.ts";
import { newHasher } from "./hash.ts";

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
  const h = newHasher();
  const dig = new Utf8Out((b) => h.update(b));
  for (const p of paths) digestEntry(dig, p, tree.get(p)!);
  dig.end();
  return `sha256:${h.digest("hex")}`;
}

/** One entry's digest input: `path NUL type NUL mode NUL content NUL`. */
function digestEntry(dig: Utf8Out, p: string, n: Node): void {
  dig.text(p);
  if (n.type === "file") {
    if (!n.sha256) throw new Error(`no hash for '${p}'`);
    dig.text("\0file\0");
    dig.text(modeText(n.mode));
    dig.byte(0);
    dig.text(n.sha256);
    dig.byte(0);
  } else if (n.type === "dir") dig.text(`\0dir\0${modeText(n.mode)}\0\0`);
  else {
    dig.text("\0symlink\0\0");
    dig.text(n.target);
    dig.byte(0);
  }
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

/**
 * UTF-8 output in blocks of 1 MiB, written byte by byte (no intermediate strings). Blocks
 * are handed to `sink` (which must use them at once: the buffer is reused) or kept in
 * `blocks`, where {@linkcode Utf8Out.range} can also put ranges of another file.
 */
class Utf8Out {
  readonly blocks: Chunk[] = [];
  #buf = new Uint8Array(1 << 20);
  #pos = 0;
  /** Start of the bytes in `#buf` not handed out yet. */
  #start = 0;
  /** Bytes handed out. */
  #out = 0;

  /** @param sink takes each full block (for hashing) instead of keeping it */
  constructor(readonly sink?: (block: Uint8Array) => void) {}

  #room(n: number): void {
    if (this.#pos + n <= this.#buf.length) return;
    this.#flush();
    // Kept blocks are views of the buffer: a full one is left to them.
    if (!this.sink || n > this.#buf.length) {
      this.#buf = new Uint8Array(Math.max(n, this.#buf.length));
    }
    this.#pos = this.#start = 0;
  }

  #flush(): void {
    if (this.#pos === this.#start) return;
    const block = this.#buf.subarray(this.#start, this.#pos);
    this.#out += block.length;
    if (this.sink) {
      this.sink(block);
      this.#pos = 0;
    } else this.blocks.push(block);
    this.#start = this.#pos;
  }

  /** Bytes written so far. */
  get length(): number {
    return this.#out + this.#pos - this.#start;
  }

  /** Bytes `[from, to)` of another file, to be copied when written (not with a sink). */
  range(from: number, to: number): void {
    this.#flush();
    this.blocks.push({ from, to });
    this.#out += to - from;
  }

  /** Text, UTF-8 encoded; ASCII is copied directly. */
  text(s: string): void {
    this.#room(s.length * 3);
    const b = this.#buf;
    let p = this.#pos;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c >= 128) {
        p = this.#pos + utf8.encodeInto(s, b.subarray(this.#pos)).written;
        break;
      }
      b[p++] = c;
    }
    this.#pos = p;
  }

  /** Bytes `src[from, to)` as they are. */
  bytes(src: Uint8Array, from: number, to: number): void {
    this.#room(to - from);
    const b = this.#buf;
    let p = this.#pos;
    for (let i = from; i < to; i++) b[p++] = src[i];
    this.#pos = p;
  }

  /** Lower-case hex of `bytes[from, from + n)`. */
  hex(bytes: Uint8Array, from: number, n: number): void {
    this.#room(2 * n);
    const b = this.#buf;
    let p = this.#pos;
    for (let i = from; i < from + n; i++) {
      const pair = HEX_PAIRS[bytes[i]];
      b[p++] = pair & 255;
      b[p++] = pair >> 8;
    }
    this.#pos = p;
  }

  /** A JSON string literal (quotes and escapes when needed). */
  json(s: string): void {
    if (NEEDS_ESCAPE.test(s)) return this.text(JSON.stringify(s));
    this.byte(34);
    this.text(s);
    this.byte(34);
  }

  byte(c: number): void {
    this.#room(1);
    this.#buf[this.#pos++] = c;
  }

  /** A number as JSON writes it; non-negative safe integers digit by digit. */
  int(n: number): void {
    if (!(n >= 0) || !Number.isSafeInteger(n)) return this.text(String(n));
    let len = 1;
    for (let x = n; x >= 10; x = Math.floor(x / 10)) len++;
    this.#room(len);
    let p = this.#pos + len;
    const b = this.#buf;
    do {
      b[--p] = 48 + (n % 10);
      n = Math.floor(n / 10);
    } while (n > 0);
    this.#pos += len;
  }

  /** The remaining bytes (flushed to the sink, or appended to `blocks`). */
  end(): Chunk[] {
    this.#flush();
    return this.blocks;
  }
}
const utf8 = new TextEncoder();

/** `modeString()` per mode value, computed once. */
const MODE_TEXT: string[] = [];
function modeText(mode: number): string {
  return MODE_TEXT[mode] ??= modeString(mode);
}

/**
 * A run of consecutive lines (or cache rows) of the previous manifest file, written to `out`
 * as one range when it ends.
 */
class LineRun {
  #from = -1;
  #to = -1;
  constructor(readonly out: Utf8Out) {}

  /**
   * Add the line at `[start, start + length)` of the previous file (`first`: no separator
   * before it); returns where it will be in `out`.
   */
  add(start: number, length: number, first: boolean): number {
    // Lines are separated by ",\n": the next line of the file continues the run.
    if (this.#from >= 0 && start === this.#to + 2) this.#to = start + length;
    else {
      this.flush();
      if (!first) this.out.text(",\n");
      this.#from = start;
      this.#to = start + length;
    }
    return this.out.length + start - this.#from;
  }

  /** Write the run (nothing when there is none). */
  flush(): void {
    if (this.#from >= 0) this.out.range(this.#from, this.#to);
    this.#from = -1;
  }
}

/** Bytes, or the range `[from, to)` of the previous manifest file (see `encodeManifest`). */
export type Chunk = Uint8Array | { from: number; to: number };

/**
 * The previous manifest file of a replica, for a write that keeps most of its entries: their
 * lines and cache rows are copied from it as bytes, not encoded again.
 */
export interface PreviousManifest {
  /** Its index: rows in the file's order, with where each line is. */
  ix: ManifestIndex;
  /** The file, open ({@linkcode openPreviousManifest}); read when the result is written. */
  file: Deno.FsFile;
  /**
   * One flag per index entry: 1 for the entries the manifest being written replaces (all
   * others are kept). That manifest gives the new entries there, and none elsewhere.
   */
  replaced: Uint8Array;
}

/** A serialized manifest (see {@linkcode encodeManifest}). */
export interface EncodedManifest {
  /** The file's bytes, in order ({@linkcode chunkBytes} reads the ranges). */
  parts: Chunk[];
  digest: string;
  /** Its index, given the file's stat once written (with the cache section only). */
  index?: (manifestStat: Deno.FileInfo) => Uint8Array[];
  /** The file the ranges in `parts` are read from. */
  previous?: Deno.FsFile;
}

/**
 * Serialize a manifest to its canonical JSON (sorted keys, one entry per line) as UTF-8
 * blocks, in one pass that also computes the digest (stored in `m.digest`) and, with the
 * cache section (`withCache`), the index. Bytes are written directly: with the text
 * built as strings (number and string concatenation, then flattening and encoding),
 * `writeManifest` took 1.1–1.4 s at 200,000 entries; this way 0.55 s (bench/README.md).
 *
 * With `previous`, the entries it keeps are taken from the previous file: runs of
 * unchanged lines are copied as they are, and only `m`'s entries are encoded, so that a
 * small change to a large manifest costs little more than the digest's pass over the
 * hashes. The bytes are the same as a full serialization's.
 */
export function encodeManifest(
  m: Manifest,
  withCache: boolean,
  previous?: PreviousManifest,
): EncodedManifest {
  if (previous && (!withCache || !loadIndexDetails(previous.ix))) {
    throw new Error("a previous manifest needs its index and a cache section");
  }
  const fresh = sortedPaths(m.entries);
  const ix = previous?.ix;
  const kept = new Int32Array(ix ? ix.paths.length : 0);
  let keptN = 0;
  if (ix) {
    for (let i = 0; i < ix.paths.length; i++) if (!previous!.replaced[i]) kept[keptN++] = i;
  }
  const total = keptN + fresh.length;
  const idx = withCache ? new IndexBuilder(total) : undefined;
  const h = newHasher();
  const dig = new Utf8Out((b) => h.update(b));
  const cache = new Utf8Out();
  const out = new Utf8Out();
  const t: Totals = { files: 0, dirs: 0, symlinks: 0, bytes: 0 };
  let rows = 0;
  const entryRun = new LineRun(out), cacheRun = new LineRun(cache);
  const flushRuns = () => {
    entryRun.flush();
    cacheRun.flush();
  };
  // Kept entries come in runs of consecutive rows of the previous index: their numbers,
  // hashes and path bytes are copied a run at a time.
  const blob = ix?.blob ?? new Uint8Array(0);
  let runI = 0, runK = 0, runLen = 0, runFrom = 0, runTo = 0;
  const flushRun = () => {
    if (!runLen) return;
    const N = ix!.nums.subarray(runI * INDEX_FIELDS, (runI + runLen) * INDEX_FIELDS);
    idx!.nums.set(N, runK * INDEX_FIELDS);
    idx!.sha.set(ix!.sha.subarray(runI * 32, (runI + runLen) * 32), runK * 32);
    idx!.pathBytes(blob, runFrom, runTo, runLen);
    runLen = 0;
  };
  // Where the previous index's path `at` starts and ends in its blob (rows are visited in
  // order; the end is -1 until found).
  let at = 0, atByte = 0, atEnd = -1;
  let a = 0, b = 0;
  for (let k = 0; k < total; k++) {
    if (a < keptN && (b >= fresh.length || ix!.paths[kept[a]] < fresh[b])) {
      // A kept entry: digest input from the index columns, line and row copied.
      const i = kept[a++];
      for (; at < i; at++, atEnd = -1) {
        atByte = (atEnd >= 0 ? atEnd : blob.indexOf(0, atByte)) + 1;
      }
      if (atEnd < 0) atEnd = blob.indexOf(0, atByte);
      if (atEnd < 0) atEnd = blob.length;
      const end = atEnd;
      const nums = ix!.nums;
      const o = i * INDEX_FIELDS;
      const kind = nums[o];
      // The digest input of `digestEntry`, the path's bytes taken from the previous index.
      dig.bytes(blob, atByte, end);
      if (kind === Kind.File) {
        t.files++;
        t.bytes += nums[o + 2];
        dig.text("\0file\0");
        dig.text(modeText(nums[o + 1]));
        dig.byte(0);
        dig.hex(ix!.sha, i * 32, 32);
        dig.byte(0);
      } else if (kind === Kind.Dir) {
        t.dirs++;
        dig.text(`\0dir\0${modeText(nums[o + 1])}\0\0`);
      } else {
        const target = ix!.targets.get(i)!;
        t.symlinks++;
        dig.text("\0symlink\0\0");
        dig.text(target);
        dig.byte(0);
        idx!.target(target);
      }
      const L = ix!.lines;
      const l = i * LINE_FIELDS;
      const NL = idx!.lines;
      const nl = k * LINE_FIELDS;
      NL[nl] = entryRun.add(ix!.entriesBase + L[l], L[l + 1], k === 0);
      NL[nl + 1] = L[l + 1];
      if (L[l + 3] > 0) {
        NL[nl + 2] = cacheRun.add(ix!.cacheBase + L[l + 2], L[l + 3], rows++ === 0);
        NL[nl + 3] = L[l + 3];
      }
      if (runLen && i === runI + runLen) {
        runLen++;
        runTo = end;
      } else {
        flushRun();
        [runI, runK, runLen, runFrom, runTo] = [i, k, 1, atByte, end];
      }
      continue;
    }
    flushRun();
    const r = k * INDEX_FIELDS;
    const p = fresh[b++];
    const n = m.entries.get(p)!;
    flushRuns();
    digestEntry(dig, p, n);
    if (k) out.text(",\n");
    const start = out.length;
    out.json(p);
    const N = idx?.nums;
    if (N) {
      N[r + 4] =
        N[r + 5] =
        N[r + 6] =
        N[r + 7] =
          -1;
    }
    if (n.type === "file") {
      t.files++;
      t.bytes += n.size;
      out.text(': {"mode":"');
      out.text(modeText(n.mode));
      out.text('","mtime":');
      out.int(n.mtime);
      out.text(',"sha256":"');
      out.text(n.sha256!);
      out.text('","size":');
      out.int(n.size);
      out.text(',"type":"file"}');
      if (N) {
        N[r] = Kind.File;
        N[r + 1] = n.mode;
        N[r + 2] = n.size;
        N[r + 3] = n.mtime;
        idx!.shaHex(k, n.sha256!);
      }
    } else if (n.type === "dir") {
      t.dirs++;
      out.text(`: {"mode":"${modeText(n.mode)}","type":"dir"}`);
      if (N) [N[r], N[r + 1]] = [Kind.Dir, n.mode];
    } else {
      t.symlinks++;
      out.text(`: {"target":`);
      out.json(n.target);
      out.text(`,"type":"symlink"}`);
      if (N) N[r] = Kind.Symlink;
    }
    const c = withCache && n.type !== "symlink" ? m.cache.get(p) : undefined;
    if (c && (c.dst || c.src)) {
      // [dst ino, dst ctime] or [dst ino, dst ctime, src ino, src ctime]; 0,0 = no dst.
      if (rows++) cache.text(",\n");
      const cstart = cache.length;
      cache.json(p);
      cache.text(": [");
      cache.int(c.dst?.[0] ?? 0);
      cache.byte(44);
      cache.int(c.dst?.[1] ?? 0);
      if (c.src) {
        cache.byte(44);
        cache.int(c.src[0]);
        cache.byte(44);
        cache.int(c.src[1]);
      }
      cache.byte(93);
      if (idx) {
        idx.lines[k * LINE_FIELDS + 2] = cstart;
        idx.lines[k * LINE_FIELDS + 3] = cache.length - cstart;
      }
      if (N) {
        if (c.dst) [N[r + 4], N[r + 5]] = c.dst;
        if (c.src) [N[r + 6], N[r + 7]] = c.src;
      }
    }
    if (idx) {
      idx.lines[k * LINE_FIELDS] = start;
      idx.lines[k * LINE_FIELDS + 1] = out.length - start;
    }
    idx?.path(p);
    if (n.type === "symlink") idx?.target(n.target);
  }
  flushRun();
  flushRuns();
  dig.end();
  const digest = `sha256:${h.digest("hex")}`;
  m.digest = digest;
  const parts: Chunk[] = [];
  let size = 0;
  const put = (...blocks: Chunk[]) => {
    for (const block of blocks) {
      parts.push(block);
      size += block instanceof Uint8Array ? block.length : block.to - block.from;
    }
  };
  put(utf8.encode(`{\n"algorithm": "sha256",\n`));
  let cacheBase = 0;
  if (withCache) {
    put(utf8.encode(`"cache": {\n`));
    cacheBase = size;
    put(...cache.end(), utf8.encode(rows ? "\n},\n" : "},\n"));
  }
  put(utf8.encode(`"digest": "${digest}",\n"entries": {\n`));
  const entriesBase = size;
  put(...out.end());
  put(
    utf8.encode(
      `${
        total ? "\n" : ""
      }},\n"totals": {"bytes":${t.bytes},"dirs":${t.dirs},"files":${t.files},"symlinks":${t.symlinks}},\n"version": ${MANIFEST_VERSION}\n}\n`,
    ),
  );
  return {
    parts,
    digest,
    index: idx && ((st) => idx.finish(digest, entriesBase, cacheBase, st)),
    previous: previous?.file,
  };
}

/**
 * The bytes of an encoded manifest in blocks of about 1 MiB, for one write each. The
 * ranges of the previous file come in file order, so they are read through a 4 MiB window
 * (one read for many short runs of lines). Blocks share one buffer: each must be used
 * before the next is asked for. Throws if a range is not a run of whole lines (the file
 * does not match its index).
 */
export function* chunkBytes(enc: EncodedManifest): Generator<Uint8Array> {
  const BLOCK = 1 << 20;
  const out = new Uint8Array(BLOCK);
  let pos = 0;
  let win: Uint8Array = new Uint8Array(0);
  let winBuf: Uint8Array | undefined;
  let winAt = 0;
  /** The window, holding the byte at `at` (read from there when it does not). */
  const windowAt = (at: number) => {
    if (at < winAt || at >= winAt + win.length) {
      winBuf ??= new Uint8Array(4 * BLOCK);
      win = winBuf.subarray(0, readAt(enc.previous!, at, winBuf));
      winAt = at;
      if (!win.length) throw new Error("the previous manifest does not match its index");
    }
    return win;
  };
  const byteAt = (at: number) => windowAt(at)[at - winAt];
  for (const part of enc.parts) {
    let bytes: Uint8Array;
    let at = 0, to = 0;
    if (part instanceof Uint8Array) {
      if (part.length >= BLOCK / 4) {
        if (pos) yield out.subarray(0, pos);
        pos = 0;
        yield part;
        continue;
      }
      bytes = part;
      to = part.length;
    } else {
      // A run of lines starts with a quoted path and is followed by ",\n" or "\n".
      const first = byteAt(part.from);
      const after = byteAt(part.to);
      if (first !== 34 || (after !== 44 && after !== 10)) {
        throw new Error("the previous manifest does not match its index");
      }
      bytes = windowAt(part.from);
      at = part.from - winAt;
      to = Math.min(part.to, winAt + win.length) - winAt;
    }
    for (;;) {
      const n = Math.min(to - at, BLOCK - pos);
      out.set(bytes.subarray(at, at + n), pos);
      pos += n;
      at += n;
      if (pos === BLOCK) {
        yield out;
        pos = 0;
      }
      if (at < to) continue;
      // The rest of a range longer than the window.
      if (part instanceof Uint8Array || winAt + to >= part.to) break;
      bytes = windowAt(winAt + to);
      at = 0;
      to = Math.min(part.to - winAt, win.length);
    }
  }
  if (pos) yield out.subarray(0, pos);
}

/** All of an encoded manifest's bytes in one array. */
export function concatBytes(parts: Iterable<Uint8Array>): Uint8Array {
  const list: Uint8Array[] = [];
  for (const b of parts) list.push(b.slice()); // (copied at once: chunkBytes reuses its buffer)
  const all = new Uint8Array(list.reduce((n, b) => n + b.length, 0));
  let off = 0;
  for (const b of list) {
    all.set(b, off);
    off += b.length;
  }
  return all;
}

/** The canonical JSON text of a manifest (see {@linkcode encodeManifest}). */
export function serializeManifest(m: Manifest, withCache: boolean): string {
  return new TextDecoder().decode(concatBytes(chunkBytes(encodeManifest(m, withCache))));
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
  text: string | Uint8Array | Iterable<string | Uint8Array>,
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
 * Write an encoded replica manifest (see {@linkcode encodeManifest}) atomically and then,
 * when `index` is set, its index beside it (atomically too). Throws when the manifest
 * cannot be written; a missing index only costs the next run its quick check, so an index
 * that cannot be written is returned, not thrown.
 */
export function writeReplicaManifest(path: string, enc: EncodedManifest, index: boolean): unknown {
  writeFileAtomicSync(path, chunkBytes(enc));
  if (!index || !enc.index) return undefined;
  try {
    writeFileAtomicSync(indexPathFor(path), enc.index(Deno.statSync(path)));
    return undefined;
  } catch (e) {
    return e;
  }
}

/**
 * The manifest file at `path`, open, if it is still the file with stat `st` that the index
 * `ix` was read for and looks like it; undefined otherwise (never throws). The caller
 * closes it.
 */
export function openPreviousManifest(
  path: string,
  st: Deno.FileInfo,
  ix: ManifestIndex,
): Deno.FsFile | undefined {
  let f: Deno.FsFile | undefined;
  try {
    f = Deno.openSync(path);
    const key = statKey(f.statSync());
    const want = statKey(st);
    const at = (text: string, end: number) => {
      const b = utf8.encode(text);
      const got = new Uint8Array(b.length);
      return readAt(f!, end - b.length, got) === b.length && got.every((c, i) => c === b[i]);
    };
    if (
      key.every((v, i) => v === want[i]) && at('"entries": {\n', ix.entriesBase) &&
      at('"cache": {\n', ix.cacheBase)
    ) return f;
  } catch { /* not usable */ }
  f?.close();
  return undefined;
}

/** Write a manifest atomically; returns its digest. */
export function writeManifest(path: string, m: Manifest, withCache = true): string {
  const enc = encodeManifest(m, withCache);
  writeFileAtomicSync(path, chunkBytes(enc));
  return enc.digest;
}
