/**
 * The manifest index: a binary, compiled copy of a replica manifest, kept beside it
 * (`<replica>.mimeo.idx` next to `<replica>.mimeo.json`).
 *
 * The JSON manifest stays the record (deterministic, readable, what `verify` and CI use).
 * The index holds the same entries and stat fingerprints in columns: numbers in one
 * `Float64Array`, hashes as raw bytes, paths in one `\0`-joined UTF-8 block. Loading it
 * costs one read and one string decode instead of a JSON parse that builds an object per
 * entry (a no-op at 200,000 files: 3.26 s and 557 MB with the JSON, 1.65 s and 355 MB
 * with the index; see bench/README.md). Its entries are in the manifest's (sorted) order,
 * with where each one's line and cache row are in the manifest file, so that a run that
 * changed a few entries copies the other lines instead of encoding them again
 * (`encodeManifest` in manifest.ts); the index is written in the same pass.
 *
 * An index is used only while it matches its manifest: its header holds the manifest
 * file's size, mtime, inode and ctime as they were right after both were written. Any
 * other manifest (edited, replaced, or a crash between the two writes) makes the index
 * stale, and mimeo falls back to the JSON and writes a fresh index. The index is never
 * needed for correctness.
 *
 * @module
 */
// Type imports only: the scan worker loads this module, and every runtime import (above
// all `node:` and `npm:` ones) adds to its start-up.
import type { CacheRecord, Manifest } from "./manifest.ts";
import type { Node, Tree } from "./types.ts";

const MAGIC = "MIMEOIX2";
const HEADER_BYTES = 112;
/** Numbers per entry: type, mode, size, mtime, dst ino, dst ctime, src ino, src ctime. */
export const INDEX_FIELDS = 8;
/**
 * Where each entry is in the manifest file, 4 numbers: the start and length of its line
 * (from the first line of `entries`) and of its cache row (from the first row of `cache`;
 * length 0 when it has none).
 */
export const LINE_FIELDS = 4;
/** Entry types in the `type` column. */
export const Kind = { File: 0, Dir: 1, Symlink: 2 } as const;

/**
 * A loaded index: the manifest in columns. Entry `i` is `paths[i]`, in the manifest's order.
 *
 * The file holds the header, `nums`, then the paths and targets, then `lines` and `sha`.
 * {@linkcode readIndex} reads up to the paths only, all a quick check needs (at 200,000
 * entries, 9.6 MB less per thread); {@linkcode loadIndexDetails} reads the rest when a
 * run has something to do.
 */
export interface ManifestIndex {
  paths: string[];
  /**
   * The paths, then the symlink targets, as the file holds them: UTF-8, `\0`-separated. A
   * manifest written from this one copies the bytes of the paths it keeps from here.
   */
  blob: Uint8Array;
  /** {@linkcode INDEX_FIELDS} numbers per entry; a missing fingerprint is `-1, -1`. */
  nums: Float64Array;
  /** Symlink targets by entry number. */
  targets: Map<number, string>;
  /** The manifest's digest, `sha256:<hex>`. */
  digest: string;
  /** Byte offsets in the manifest file of the first entry line and the first cache row. */
  entriesBase: number;
  cacheBase: number;
  /** 32 bytes of SHA-256 per entry (zeros for folders and symlinks); empty until loaded. */
  sha: Uint8Array;
  /** {@linkcode LINE_FIELDS} numbers per entry; empty until loaded. */
  lines: Uint32Array;
  /** Where the details are read from: the file, and its header as first read. */
  from?: { path: string; header: Uint8Array; at: number };
}

/** Where the index of a manifest lives: the manifest's path with `.json` replaced by `.idx`. */
export function indexPathFor(manifestPath: string): string {
  return `${manifestPath.replace(/\.json$/, "")}.idx`;
}

/** The manifest file's identity an index is tied to. */
export function statKey(st: Deno.FileInfo): number[] {
  return [st.size, st.mtime?.getTime() ?? 0, st.ino ?? 0, st.ctime?.getTime() ?? 0];
}

/**
 * Builds an index row by row, in the manifest's order, while the manifest is serialized
 * (see `encodeManifest`): the offsets it records are those of the bytes being written.
 */
export class IndexBuilder {
  readonly nums: Float64Array;
  readonly lines: Uint32Array;
  readonly sha: Uint8Array;
  /** The paths so far, UTF-8, `\0`-separated; `#rows` of them in `#blob[0, #len)`. */
  #blob = new Uint8Array(1 << 16);
  #len = 0;
  #rows = 0;
  readonly #targets: string[] = [];

  constructor(readonly count: number) {
    this.nums = new Float64Array(count * INDEX_FIELDS);
    this.lines = new Uint32Array(count * LINE_FIELDS);
    this.sha = new Uint8Array(count * 32);
  }

  #room(n: number): void {
    if (this.#len + n <= this.#blob.length) return;
    const next = new Uint8Array(Math.max(2 * this.#blob.length, this.#len + n));
    next.set(this.#blob.subarray(0, this.#len));
    this.#blob = next;
  }

  /** The next row's path (rows are added in order). */
  path(p: string): void {
    this.#room(1 + 3 * p.length);
    if (this.#rows++) this.#blob[this.#len++] = 0;
    this.#len += utf8.encodeInto(p, this.#blob.subarray(this.#len)).written;
  }

  /**
   * The paths of the next `rows` rows as bytes: `bytes[from, to)`, `\0`-separated (a run
   * of another index's blob).
   */
  pathBytes(bytes: Uint8Array, from: number, to: number, rows: number): void {
    this.#room(1 + to - from);
    if (this.#rows) this.#blob[this.#len++] = 0;
    this.#blob.set(bytes.subarray(from, to), this.#len);
    this.#len += to - from;
    this.#rows += rows;
  }

  /** The next symlink row's target (in row order). */
  target(t: string): void {
    this.#targets.push(t);
  }

  /** Entry `i`'s hash from lower-case hex. */
  shaHex(i: number, hex: string): void {
    hexInto(hex, this.sha, i * 32);
  }

  /** The index's bytes, tied to the manifest file's stat right after it was written. */
  finish(
    digest: string,
    entriesBase: number,
    cacheBase: number,
    manifestStat: Deno.FileInfo,
  ): Uint8Array[] {
    const n = this.count;
    if (this.#rows !== n) throw new Error("index rows missing");
    // The paths, then the targets: all `\0`-separated.
    const targets = this.#targets.length
      ? utf8.encode(`${n ? "\0" : ""}${this.#targets.join("\0")}`)
      : new Uint8Array(0);
    const blobLength = this.#len + targets.length;
    const head = new Uint8Array(HEADER_BYTES);
    head.set(utf8.encode(MAGIC), 0);
    new Float64Array(head.buffer, 8, 9).set([
      n,
      ...statKey(manifestStat),
      blobLength,
      this.#targets.length,
      entriesBase,
      cacheBase,
    ]);
    head.set(hexToBytes(digest.slice("sha256:".length)), 80);
    // In parts, not one array: at 200,000 entries that copy would be 30 MB more.
    return [
      head,
      new Uint8Array(this.nums.buffer),
      this.#blob.subarray(0, this.#len),
      targets,
      new Uint8Array(padded(blobLength) - blobLength),
      new Uint8Array(this.lines.buffer),
      this.sha,
    ];
  }
}

const utf8 = new TextEncoder();

/** The blob's length in the file, padded so that the columns after it are aligned. */
function padded(n: number): number {
  return Math.ceil(n / 8) * 8;
}

/** The sizes an index header gives, when it is an index of a manifest with this stat. */
function parseHeader(header: Uint8Array, manifestStat: Deno.FileInfo) {
  if (header.length < HEADER_BYTES) return undefined;
  if (new TextDecoder().decode(header.subarray(0, 8)) !== MAGIC) return undefined;
  // Copy the header so the Float64Array view is aligned whatever the buffer's offset.
  const head = new Float64Array(header.slice(8, 80).buffer);
  const [n, size, mtime, ino, ctime, blobLen, targetCount, entriesBase, cacheBase] = head;
  const key = statKey(manifestStat);
  if (size !== key[0] || mtime !== key[1] || ino !== key[2] || ctime !== key[3]) return undefined;
  const front = HEADER_BYTES + n * INDEX_FIELDS * 8 + padded(blobLen);
  return {
    n,
    blobLen,
    targetCount,
    entriesBase,
    cacheBase,
    front,
    total: front + n * (LINE_FIELDS * 4 + 32),
    digest: `sha256:${bytesToHex(header.subarray(80, 112))}`,
  };
}

/** The columns and strings of an index from its bytes up to the paths. */
function decodeFront(
  bytes: Uint8Array,
  h: NonNullable<ReturnType<typeof parseHeader>>,
): ManifestIndex | undefined {
  const { n, blobLen, targetCount } = h;
  const numBytes = n * INDEX_FIELDS * 8;
  // A view when aligned (a freshly read file always is), else a copy.
  const nums = (bytes.byteOffset + HEADER_BYTES) % 8 === 0
    ? new Float64Array(bytes.buffer, bytes.byteOffset + HEADER_BYTES, n * INDEX_FIELDS)
    : new Float64Array(bytes.slice(HEADER_BYTES, HEADER_BYTES + numBytes).buffer);
  const at = HEADER_BYTES + numBytes;
  const blob = bytes.subarray(at, at + blobLen);
  const strings = n + targetCount === 0 ? [] : new TextDecoder().decode(blob).split("\0");
  if (strings.length !== n + targetCount) return undefined;
  const paths = strings.slice(0, n);
  // Entries are in sorted path order (what `indexUnder` relies on): checked, not assumed.
  for (let i = 1; i < n; i++) if (!(paths[i - 1] < paths[i])) return undefined;
  const targets = new Map<number, string>();
  let t = n;
  for (let i = 0; i < n; i++) {
    if (nums[i * INDEX_FIELDS] === Kind.Symlink) targets.set(i, strings[t++]);
  }
  if (t !== n + targetCount) return undefined;
  return {
    paths,
    blob,
    nums,
    targets,
    digest: h.digest,
    entriesBase: h.entriesBase,
    cacheBase: h.cacheBase,
    sha: new Uint8Array(0),
    lines: new Uint32Array(0),
  };
}

/** Set `ix.lines` and `ix.sha` from the bytes after the paths. */
function decodeTail(ix: ManifestIndex, tail: Uint8Array): void {
  const n = ix.paths.length;
  ix.lines = new Uint32Array(tail.slice(0, n * LINE_FIELDS * 4).buffer);
  ix.sha = tail.subarray(n * LINE_FIELDS * 4, n * (LINE_FIELDS * 4 + 32));
}

/**
 * Decode a whole index. Returns undefined when it is not an index, is damaged, or does not
 * belong to a manifest with this stat (stale).
 */
export function decodeIndex(
  bytes: Uint8Array,
  manifestStat: Deno.FileInfo,
): ManifestIndex | undefined {
  const h = parseHeader(bytes, manifestStat);
  if (!h || bytes.length !== h.total) return undefined;
  const ix = decodeFront(bytes, h);
  if (ix) decodeTail(ix, bytes.subarray(h.front));
  return ix;
}

/**
 * Which entries of an index are under one of `roots` (a root itself or anything below it),
 * as one flag per entry. The index is in sorted path order, so each root is two searches: a
 * root's own entry, and the block of paths starting with `root/` (all paths from `root/` up
 * to, not including, `root0`, the next character after `/`).
 *
 * @example
 * ```ts
 * const flags = indexUnder(["a", "a.txt", "a/b", "b"], ["a"]); // 1, 0, 1, 0
 * ```
 */
export function indexUnder(paths: readonly string[], roots: Iterable<string>): Uint8Array {
  const flags = new Uint8Array(paths.length);
  // Roots usually come sorted (see `normalizeOnly`): each search starts from where the
  // previous one ended, a few steps instead of a search of the whole index.
  let hint = 0;
  for (const r of roots) {
    const i = lowerBound(paths, r, hint);
    if (paths[i] === r) flags[i] = 1;
    const from = lowerBound(paths, `${r}/`, i);
    const to = lowerBound(paths, `${r}0`, from);
    flags.fill(1, from, to);
    hint = to;
  }
  return flags;
}

/**
 * The first position in `paths` (sorted in code-unit order, as an index keeps them) whose
 * path is not less than `s`: where `s` is, or would be inserted. `hint` is a guess of
 * where: when the answer is at or after it, the search gallops forward from there (steps
 * of 1, 2, 4, ...) and then bisects the last step, so a guess close to the answer costs a
 * few comparisons; otherwise it is a binary search of the paths before the guess.
 */
export function lowerBound(paths: readonly string[], s: string, hint = 0): number {
  let lo = 0, hi = paths.length;
  if (hint > 0 && hint <= hi) {
    if (paths[hint - 1] < s) {
      lo = hint;
      let probe = hint;
      for (let step = 1; probe < hi && paths[probe] < s; step *= 2) {
        lo = probe + 1;
        probe = lo + step;
      }
      if (probe < hi) hi = probe;
    } else hi = hint - 1;
  }
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (paths[mid] < s) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * The entry number of `path` in an index's paths (sorted in code-unit order, as the manifest
 * keeps them), by binary search; undefined when the index does not hold it.
 *
 * @example
 * ```ts
 * const i = indexFind(ix.paths, "docs/readme.md"); // its entry number, or undefined
 * ```
 */
export function indexFind(paths: readonly string[], path: string): number | undefined {
  const i = lowerBound(paths, path);
  return paths[i] === path ? i : undefined;
}

/**
 * The manifest an index holds, as the in-memory form the pipeline uses: all of it, or
 * only the entries numbered in `which`.
 */
export function indexToManifest(ix: ManifestIndex, which?: readonly number[]): Manifest {
  if (!loadIndexDetails(ix)) throw new Error("the index's hashes cannot be read");
  const entries: Tree = new Map();
  const cache = new Map<string, CacheRecord>();
  const { paths, nums } = ix;
  // One hex string for all hashes, sliced per file: a string per hash costs ~10× more.
  // With `which`, the hashes of those entries are gathered first: row k at k * 32.
  const n = which ? which.length : paths.length;
  let sha = ix.sha;
  if (which) {
    sha = new Uint8Array(n * 32);
    for (let k = 0; k < n; k++) {
      const i = which[k];
      sha.set(ix.sha.subarray(i * 32, i * 32 + 32), k * 32);
    }
  }
  const hex = bytesToHex(sha);
  for (let k = 0; k < n; k++) {
    const i = which ? which[k] : k;
    const o = i * INDEX_FIELDS;
    const kind = nums[o];
    let node: Node;
    if (kind === Kind.File) {
      node = {
        type: "file",
        size: nums[o + 2],
        mtime: nums[o + 3],
        mode: nums[o + 1],
        sha256: hex.slice(k * 64, k * 64 + 64), // (without `which`, k is i)
      };
      const dst = nums[o + 4] >= 0 ? [nums[o + 4], nums[o + 5]] as const : undefined;
      const src = nums[o + 6] >= 0 ? [nums[o + 6], nums[o + 7]] as const : undefined;
      if (dst || src) cache.set(paths[i], { dst, src });
    } else if (kind === Kind.Dir) node = { type: "dir", mode: nums[o + 1] };
    else node = { type: "symlink", target: ix.targets.get(i)! };
    entries.set(paths[i], node);
  }
  return { entries, cache, digest: ix.digest };
}

/** Read into `into` from `at` until it is full or the file ends; returns the bytes read. */
export function readAt(f: Deno.FsFile, at: number, into: Uint8Array): number {
  f.seekSync(at, Deno.SeekMode.Start);
  let off = 0;
  while (off < into.length) {
    const got = f.readSync(into.subarray(off));
    if (got === null) break;
    off += got;
  }
  return off;
}

/** Exactly `n` bytes of `f` from `at`. */
function readExactly(f: Deno.FsFile, at: number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  if (readAt(f, at, out) !== n) throw new Error("index truncated");
  return out;
}

/**
 * Read the index at `indexPath` for a manifest with stat `manifestStat`, up to the paths
 * (see {@linkcode loadIndexDetails}). Undefined when there is none, it cannot be read, or
 * it is stale; never throws.
 */
export function readIndex(
  indexPath: string,
  manifestStat: Deno.FileInfo,
): ManifestIndex | undefined {
  try {
    using f = Deno.openSync(indexPath);
    const size = f.statSync().size;
    const head = readExactly(f, 0, Math.min(size, HEADER_BYTES));
    const h = parseHeader(head, manifestStat);
    if (!h || size !== h.total) return undefined;
    const ix = decodeFront(readExactly(f, 0, h.front), h);
    if (ix) ix.from = { path: indexPath, header: head, at: h.front };
    return ix;
  } catch {
    return undefined;
  }
}

/** Whether the index at `indexPath` belongs to a manifest with this stat (its header only). */
export function indexIsCurrent(indexPath: string, manifestStat: Deno.FileInfo): boolean {
  try {
    using f = Deno.openSync(indexPath);
    const h = parseHeader(readExactly(f, 0, HEADER_BYTES), manifestStat);
    return !!h && f.statSync().size === h.total;
  } catch {
    return false;
  }
}

/**
 * Make sure `ix.lines` and `ix.sha` are loaded, reading them from the index file when
 * needed. False when they cannot be, for instance when the index was replaced since
 * (its header differs): the caller does without the index.
 */
export function loadIndexDetails(ix: ManifestIndex): boolean {
  const n = ix.paths.length;
  if (ix.sha.length === n * 32 && ix.lines.length === n * LINE_FIELDS) return true;
  if (!ix.from) return false;
  try {
    using f = Deno.openSync(ix.from.path);
    const head = readExactly(f, 0, HEADER_BYTES);
    if (!head.every((b, i) => b === ix.from!.header[i])) return false;
    if (f.statSync().size !== ix.from.at + n * (LINE_FIELDS * 4 + 32)) return false;
    decodeTail(ix, readExactly(f, ix.from.at, n * (LINE_FIELDS * 4 + 32)));
    return true;
  } catch {
    return false;
  }
}

const HEX_DIGITS = "0123456789abcdef";
/** ASCII codes of the two hex digits of each byte value (low byte first). */
export const HEX_PAIRS = new Uint16Array(256).map((_, b) =>
  HEX_DIGITS.charCodeAt(b >> 4) | (HEX_DIGITS.charCodeAt(b & 15) << 8)
);

/** Lower-case hex of bytes, built as one string (a per-hash string costs ~10× more). */
export function bytesToHex(bytes: Uint8Array): string {
  const out = new Uint16Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = HEX_PAIRS[bytes[i]];
  return new TextDecoder().decode(new Uint8Array(out.buffer));
}

/** Bytes of a lower-case hex string of even length. */
export function hexToBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length >> 1);
  hexInto(hex, out, 0);
  return out;
}

/** Decode lower-case hex into `out` from `at`. */
export function hexInto(hex: string, out: Uint8Array, at: number): void {
  for (let i = 0; i < hex.length >> 1; i++) {
    const a = hex.charCodeAt(2 * i), b = hex.charCodeAt(2 * i + 1);
    out[at + i] = ((a > 57 ? a - 87 : a - 48) << 4) | (b > 57 ? b - 87 : b - 48);
  }
}
