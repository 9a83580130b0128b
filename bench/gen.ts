/**
 * Deterministic test-tree generator and mutators for the mimeo benchmark.
 *
 * Everything here is driven by seeded PRNGs (mulberry32 for decisions, xorshift32 for file
 * bytes), so the same spec and seed always produce the same paths, sizes, bytes, modes and
 * mtimes. File content is incompressible and generated in 32-bit words, so a few hundred MB
 * take well under a second to fill.
 *
 * Run directly to generate a tree:
 *
 * ```sh
 * deno run --allow-read --allow-write bench/gen.ts DIR [--scale 0.1] [--many] [--seed 1]
 * ```
 *
 * @module
 */

import { basename, join, relative } from "node:path";

// ---------------------------------------------------------------------------------------------
// PRNGs

/** Mixes numbers into one non-zero 32-bit seed (FNV-1a style with extra avalanche). */
export function mix(...parts: number[]): number {
  let h = 0x811c9dc5;
  for (const part of parts) {
    h = Math.imul(h ^ (part >>> 0), 0x01000193);
    h ^= h >>> 15;
    h = Math.imul(h, 0x2c1b3c6d);
    h ^= h >>> 12;
    h = Math.imul(h, 0x297a2d39);
    h ^= h >>> 15;
  }
  return (h >>> 0) || 0x9e3779b9;
}

/** Seeded mulberry32 PRNG with a few helpers. */
export class Rng {
  #a: number;

  /** @param seed any 32-bit number */
  constructor(seed: number) {
    this.#a = seed >>> 0;
  }

  /** Uniform float in [0, 1). */
  next(): number {
    this.#a = (this.#a + 0x6d2b79f5) | 0;
    let t = Math.imul(this.#a ^ (this.#a >>> 15), 1 | this.#a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Uniform integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  /** A uniformly chosen element. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
}

/**
 * Fills `words[0..n)` with xorshift32 output starting from `state`; returns the new state.
 * This is the hot loop of content generation (~2 GB/s).
 */
export function fillWords(words: Uint32Array, n: number, state: number): number {
  let x = state | 0 || 0x2545f491;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
  return x;
}

// ---------------------------------------------------------------------------------------------
// Small fs helpers

const CHUNK = 1 << 20;

function writeAll(file: Deno.FsFile, data: Uint8Array): void {
  let off = 0;
  while (off < data.length) off += file.writeSync(data.subarray(off));
}

let scratch = new Uint32Array(CHUNK / 4);

function scratchFor(bytes: number): Uint32Array {
  const words = Math.ceil(bytes / 4);
  if (scratch.length < words) scratch = new Uint32Array(words);
  return scratch;
}

/** Writes `size` pseudo-random bytes derived from `seed` to `path` (created or truncated). */
export function writeRandomFile(path: string, size: number, seed: number): void {
  if (size <= CHUNK) {
    const words = scratchFor(size);
    fillWords(words, Math.ceil(size / 4), seed);
    Deno.writeFileSync(path, new Uint8Array(words.buffer, 0, size));
    return;
  }
  const words = scratchFor(CHUNK);
  const bytes = new Uint8Array(words.buffer, 0, CHUNK);
  const file = Deno.openSync(path, { write: true, create: true, truncate: true });
  try {
    let state = seed;
    for (let done = 0; done < size; done += CHUNK) {
      const n = Math.min(CHUNK, size - done);
      state = fillWords(words, Math.ceil(n / 4), state);
      writeAll(file, bytes.subarray(0, n));
    }
  } finally {
    file.close();
  }
}

/**
 * Writes a big incompressible file fast: one 1 MiB xorshift buffer, XOR-ed with a per-chunk
 * key derived from a counter so no two chunks are equal.
 */
export function writeBigFile(path: string, size: number, seed: number): void {
  const base = new Uint32Array(CHUNK / 4);
  fillWords(base, base.length, seed);
  const out = new Uint32Array(CHUNK / 4);
  const outBytes = new Uint8Array(out.buffer);
  const file = Deno.openSync(path, { write: true, create: true, truncate: true });
  try {
    for (let done = 0, counter = 0; done < size; done += CHUNK, counter++) {
      const key = mix(seed, counter);
      for (let i = 0; i < out.length; i++) out[i] = base[i] ^ key ^ Math.imul(i, 0x9e3779b1);
      writeAll(file, outBytes.subarray(0, Math.min(CHUNK, size - done)));
    }
  } finally {
    file.close();
  }
}

/** One entry of a walked tree (paths are POSIX-relative to the root). */
export interface WalkEntry {
  /** Relative POSIX path. */
  path: string;
  /** Entry type, as seen by lstat (symlinks are not followed). */
  type: "file" | "dir" | "symlink" | "other";
  /** Size in bytes (files), 0 otherwise. */
  size: number;
  /** mtime in ms since the epoch (0 when unknown). */
  mtimeMs: number;
  /** Permission bits (mode & 0o7777). */
  mode: number;
  /** Symlink target (symlinks only). */
  target?: string;
}

/** Walks `root` without following symlinks; entries are sorted by path. */
export function walk(root: string): WalkEntry[] {
  const out: WalkEntry[] = [];
  const visit = (abs: string, rel: string) => {
    const names: string[] = [];
    for (const e of Deno.readDirSync(abs)) names.push(e.name);
    names.sort();
    for (const name of names) {
      const childAbs = join(abs, name);
      const childRel = rel === "" ? name : `${rel}/${name}`;
      const st = Deno.lstatSync(childAbs);
      const type = st.isSymlink ? "symlink" : st.isDirectory ? "dir" : st.isFile ? "file" : "other";
      const entry: WalkEntry = {
        path: childRel,
        type,
        size: type === "file" ? st.size : 0,
        mtimeMs: st.mtime?.getTime() ?? 0,
        mode: (st.mode ?? 0) & 0o7777,
      };
      if (type === "symlink") entry.target = Deno.readLinkSync(childAbs);
      out.push(entry);
      if (type === "dir") visit(childAbs, childRel);
    }
  };
  visit(root, "");
  return out;
}

/** Removes a path recursively; a missing path is fine. */
export function removeIfExists(path: string): void {
  try {
    Deno.removeSync(path, { recursive: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Tree specs

/** Shape of a generated tree. */
export interface TreeSpec {
  /** Seed for everything. */
  seed: number;
  /** Number of small regular files. */
  files: number;
  /** Small file size = floor(smallMax * u^smallShape) (u uniform in [0,1)). */
  smallMax: number;
  /** Exponent skewing small-file sizes towards 0 (1 = uniform). */
  smallShape: number;
  /** Fraction of small files that are empty. */
  emptyFileRatio: number;
  /** Number of large files, sizes uniform in [largeMin, largeMax]. */
  largeFiles: number;
  /** Smallest large file, bytes. */
  largeMin: number;
  /** Largest large file, bytes. */
  largeMax: number;
  /** How many of the large files live in the first top-level folder. */
  largeInBigTop: number;
  /** Top-level folder names; the first one is the "big" one. */
  topDirs: string[];
  /**
   * Fraction of all bytes the first top-level folder should hold (filled with large files,
   * then small files in order until reached). 0 = spread files by `topWeights` only.
   */
  bigTopShare: number;
  /** Relative weights for distributing small files among the (remaining) top folders. */
  topWeights: number[];
  /** Aim for this many files per folder. */
  filesPerDir: number;
  /** Number of empty folders (some nested in each other). */
  emptyDirs: number;
  /** Number of relative symlinks (to files, to folders, and one dangling). */
  symlinks: number;
  /** Fraction of files made executable (0o755 instead of 0o644). */
  execRatio: number;
}

const MiB = 1024 * 1024;

/**
 * The main tree: at scale 1 about 20,000 files and ~361 MB, the largest top-level folder
 * ("media") holding about half the bytes.
 */
export function mainTreeSpec(scale = 1, seed = 1): TreeSpec {
  return {
    seed,
    files: Math.max(20, Math.round(19_994 * scale)),
    smallMax: 64 * 1024,
    smallShape: 4,
    emptyFileRatio: 0.02,
    largeFiles: 6,
    largeMin: Math.max(1024, Math.round(5 * MiB * scale)),
    largeMax: Math.max(4096, Math.round(30 * MiB * scale)),
    largeInBigTop: 4,
    topDirs: ["media", "src", "docs", "vendor", "data", "tests"],
    bigTopShare: 0.487,
    topWeights: [0, 5, 3, 4, 2, 2],
    filesPerDir: 40,
    emptyDirs: Math.max(3, Math.round(20 * scale)),
    symlinks: Math.max(5, Math.round(30 * scale)),
    execRatio: 0.02,
  };
}

/** The many-small-files tree: at scale 1, 200,000 files of 0–4 KiB. */
export function manyTreeSpec(scale = 1, seed = 1): TreeSpec {
  return {
    seed: mix(seed, 6),
    files: Math.max(20, Math.round(200_000 * scale)),
    smallMax: 4097,
    smallShape: 1,
    emptyFileRatio: 0,
    largeFiles: 0,
    largeMin: 0,
    largeMax: 0,
    largeInBigTop: 0,
    topDirs: ["objects", "cache", "logs", "pkgs"],
    bigTopShare: 0,
    topWeights: [4, 3, 2, 1],
    filesPerDir: 100,
    emptyDirs: 5,
    symlinks: 5,
    execRatio: 0.01,
  };
}

/** Summary of a tree on disk. */
export interface TreeStats {
  /** Regular files. */
  files: number;
  /** Folders (not counting the root). */
  dirs: number;
  /** Symlinks. */
  symlinks: number;
  /** Total bytes of regular files. */
  bytes: number;
  /** Largest top-level folder by bytes. */
  largestTop: { name: string; bytes: number };
}

/** Computes {@link TreeStats} by walking `root`. */
export function treeStats(root: string): TreeStats {
  const entries = walk(root);
  const stats: TreeStats = {
    files: 0,
    dirs: 0,
    symlinks: 0,
    bytes: 0,
    largestTop: largestTopOf(entries),
  };
  for (const e of entries) {
    if (e.type === "file") {
      stats.files++;
      stats.bytes += e.size;
    } else if (e.type === "dir") stats.dirs++;
    else if (e.type === "symlink") stats.symlinks++;
  }
  return stats;
}

/** The top-level folder of `root` holding the most bytes (regular files, recursively). */
export function largestTop(root: string): { name: string; bytes: number } {
  return largestTopOf(walk(root));
}

function largestTopOf(entries: WalkEntry[]): { name: string; bytes: number } {
  const per = new Map<string, number>();
  for (const e of entries) {
    const slash = e.path.indexOf("/");
    if (slash < 0) {
      if (e.type === "dir" && !per.has(e.path)) per.set(e.path, 0);
      continue;
    }
    if (e.type !== "file") continue;
    const top = e.path.slice(0, slash);
    per.set(top, (per.get(top) ?? 0) + e.size);
  }
  let best = { name: "", bytes: -1 };
  for (const [name, bytes] of [...per].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
    if (bytes > best.bytes) best = { name, bytes };
  }
  return best;
}

// ---------------------------------------------------------------------------------------------
// Names

const CONS = "bdfgklmnprstvz";
const VOWELS = "aeiou";
const EXTS = [".txt", ".json", ".ts", ".md", ".png", ".bin", ".csv", ".log", ".html", ".dat"];

function word(rng: Rng): string {
  let w = "";
  const syllables = rng.range(2, 4);
  for (let i = 0; i < syllables; i++) w += CONS[rng.int(CONS.length)] + VOWELS[rng.int(5)];
  return w;
}

function fileName(rng: Rng): string {
  const r = rng.next();
  let base = word(rng);
  if (r < 0.004) base += " copy";
  else if (r < 0.006) base = `café-${base}`;
  else if (r < 0.007) base = `データ-${base}`;
  else if (r < 0.017) base = `.${base}`;
  else if (r < 0.2) base += `-${rng.int(1000)}`;
  return base + rng.pick(EXTS);
}

function uniqueName(taken: Set<string>, name: string): string {
  let candidate = name;
  for (let i = 2; taken.has(candidate); i++) {
    const dot = name.lastIndexOf(".");
    candidate = dot > 0 ? `${name.slice(0, dot)}-${i}${name.slice(dot)}` : `${name}-${i}`;
  }
  taken.add(candidate);
  return candidate;
}

// ---------------------------------------------------------------------------------------------
// Tree generation

interface DirNode {
  path: string; // relative POSIX path
  depth: number; // 1 = top-level
  names: Set<string>; // names taken in this folder
}

/** Base time for generated mtimes: 2024-01-01T00:00:00Z. */
const MTIME_BASE = Date.UTC(2024, 0, 1);
const YEAR_MS = 365 * 24 * 3600 * 1000;

/**
 * Generates the tree described by `spec` into `root` (which must not exist or be empty).
 * Returns its stats.
 */
export function generateTree(root: string, spec: TreeSpec): TreeStats {
  const rng = new Rng(mix(spec.seed, 1));
  Deno.mkdirSync(root, { recursive: true });

  // 1. Sizes.
  const smallSizes: number[] = [];
  for (let i = 0; i < spec.files; i++) {
    smallSizes.push(
      rng.chance(spec.emptyFileRatio)
        ? 0
        : Math.floor(spec.smallMax * Math.pow(rng.next(), spec.smallShape)),
    );
  }
  const largeSizes: number[] = [];
  for (let i = 0; i < spec.largeFiles; i++) {
    largeSizes.push(rng.range(spec.largeMin, spec.largeMax));
  }
  const total = smallSizes.reduce((a, b) => a + b, 0) + largeSizes.reduce((a, b) => a + b, 0);

  // 2. Which top-level folder each file goes to.
  const tops = spec.topDirs;
  const smallTop: number[] = new Array(spec.files);
  const largeTop: number[] = largeSizes.map((_, i) =>
    i < spec.largeInBigTop ? 0 : 1 + (i % (tops.length - 1))
  );
  let firstFree = 0;
  if (spec.bigTopShare > 0) {
    let big = largeSizes.slice(0, spec.largeInBigTop).reduce((a, b) => a + b, 0);
    const target = spec.bigTopShare * total;
    while (firstFree < spec.files && big + smallSizes[firstFree] <= target) {
      big += smallSizes[firstFree];
      smallTop[firstFree++] = 0;
    }
  }
  const weightSum = spec.topWeights.reduce((a, b) => a + b, 0);
  for (let i = firstFree; i < spec.files; i++) {
    let r = rng.next() * weightSum;
    let t = 0;
    while (t < tops.length - 1 && (r -= spec.topWeights[t]) >= 0) t++;
    smallTop[i] = t;
  }

  // 3. Folders: a random tree per top-level folder, files mostly at depth 3-4.
  const dirsByTop: DirNode[][] = [];
  const rootNames = new Set<string>();
  for (let t = 0; t < tops.length; t++) {
    rootNames.add(tops[t]);
    const count = smallTop.filter((x) => x === t).length + largeTop.filter((x) => x === t).length;
    const want = Math.max(1, Math.round(count / spec.filesPerDir));
    const nodes: DirNode[] = [{ path: tops[t], depth: 1, names: new Set() }];
    let deep = 0;
    while (deep < want) {
      // Uniformly chosen parent above depth 4: a random recursive tree, 3-4 levels deep.
      const parent = nodes[rng.int(nodes.length)];
      if (parent.depth >= 4) continue;
      const name = uniqueName(parent.names, word(rng));
      const node = {
        path: `${parent.path}/${name}`,
        depth: parent.depth + 1,
        names: new Set<string>(),
      };
      nodes.push(node);
      if (node.depth >= 3) deep++;
    }
    dirsByTop.push(nodes);
  }
  for (const nodes of dirsByTop) {
    for (const n of nodes) Deno.mkdirSync(join(root, n.path), { recursive: true });
  }
  const deepDirs = dirsByTop.map((nodes) => nodes.filter((n) => n.depth >= 3));
  const shallowDirs = dirsByTop.map((nodes) => nodes.filter((n) => n.depth < 3));

  // 4. Files.
  const filePaths: string[] = [];
  const writeFile = (dir: DirNode | null, size: number, index: number) => {
    const names = dir ? dir.names : rootNames;
    const name = uniqueName(names, fileName(rng));
    const rel = dir ? `${dir.path}/${name}` : name;
    const abs = join(root, rel);
    writeRandomFile(abs, size, mix(spec.seed, 2, index));
    if (rng.chance(spec.execRatio)) Deno.chmodSync(abs, 0o755);
    else Deno.chmodSync(abs, 0o644);
    const mtime = new Date(MTIME_BASE + rng.int(YEAR_MS));
    Deno.utimeSync(abs, mtime, mtime);
    filePaths.push(rel);
  };
  let index = 0;
  const chooseDir = (t: number): DirNode =>
    rng.chance(0.85) && deepDirs[t].length > 0 ? rng.pick(deepDirs[t]) : rng.pick(shallowDirs[t]);
  for (let i = 0; i < largeSizes.length; i++) {
    const t = largeTop[i];
    const dir = chooseDir(t);
    writeFile(dir, largeSizes[i], index++);
  }
  for (let i = 0; i < spec.files; i++) {
    // A handful of files sit directly in the root.
    if (i % 4999 === 17) writeFile(null, smallSizes[i], index++);
    else writeFile(chooseDir(smallTop[i]), smallSizes[i], index++);
  }

  // 5. Empty folders (every fourth one holds another empty folder).
  const allDirs = dirsByTop.flat();
  for (let i = 0; i < spec.emptyDirs; i++) {
    const parent = rng.pick(allDirs);
    const name = uniqueName(parent.names, `empty-${word(rng)}`);
    const abs = join(root, parent.path, name);
    Deno.mkdirSync(abs);
    if (i % 4 === 3) Deno.mkdirSync(join(abs, "inner"));
  }

  // 6. Relative symlinks: to files, to folders, one dangling.
  for (let i = 0; i < spec.symlinks; i++) {
    const at = rng.pick(allDirs);
    let target: string;
    let label: string;
    if (i === 0) {
      target = "no/such/target.txt";
      label = "dangling";
    } else if (i % 3 === 2) {
      target = rng.pick(allDirs).path;
      label = "dirlink";
    } else {
      target = rng.pick(filePaths);
      label = "filelink";
    }
    const rel = i === 0 ? target : relative(at.path, target).split("\\").join("/") || ".";
    const name = uniqueName(at.names, `${label}-${word(rng)}`);
    Deno.symlinkSync(rel, join(root, at.path, name));
  }

  return treeStats(root);
}

// ---------------------------------------------------------------------------------------------
// Mutators

/** What {@link mutate} did. */
export interface MutationStats {
  /** Files rewritten (includes same-size edits). */
  edited: number;
  /** Of those, edits that kept the size. */
  sameSize: number;
  /** Files added. */
  added: number;
  /** Files deleted. */
  deleted: number;
}

/** Options for {@link mutate}. */
export interface MutateOptions {
  /** Fraction of regular files to edit, to add, and to delete (each). @default 0.01 */
  fraction?: number;
  /** Upper bound for sizes of new and resized files. @default 65536 */
  maxSize?: number;
}

/**
 * Applies a deterministic change to `root`, seeded by (`seed`, `rep`): edits `fraction` of
 * the regular files (half of them same-size in-place rewrites of a region), deletes another
 * `fraction`, and adds `fraction` new files in existing folders. Edited files get the current
 * time as mtime, like a real edit.
 */
export function mutate(
  root: string,
  seed: number,
  rep: number,
  opts: MutateOptions = {},
): MutationStats {
  const fraction = opts.fraction ?? 0.01;
  const maxSize = opts.maxSize ?? 65536;
  const rng = new Rng(mix(seed, 3, rep));
  const entries = walk(root);
  const files = entries.filter((e) => e.type === "file");
  const dirs = entries.filter((e) => e.type === "dir");
  const n = Math.max(1, Math.round(files.length * fraction));
  // Partial Fisher-Yates: the first n are edited, the next n deleted.
  const order = files.map((_, i) => i);
  const take = Math.min(order.length, 2 * n);
  for (let i = 0; i < take; i++) {
    const j = i + rng.int(order.length - i);
    [order[i], order[j]] = [order[j], order[i]];
  }
  const stats: MutationStats = { edited: 0, sameSize: 0, added: 0, deleted: 0 };
  for (let k = 0; k < Math.min(n, take); k++) {
    const f = files[order[k]];
    const abs = join(root, f.path);
    const contentSeed = mix(seed, 4, rep, k);
    if (k % 2 === 0 && f.size >= 16) {
      // Same-size edit: overwrite a region with fresh random bytes.
      const len = Math.min(f.size, rng.range(8, 4096));
      const off = rng.int(f.size - len + 1);
      const words = new Uint32Array(Math.ceil(len / 4));
      fillWords(words, words.length, contentSeed);
      const file = Deno.openSync(abs, { write: true });
      try {
        file.seekSync(off, Deno.SeekMode.Start);
        writeAll(file, new Uint8Array(words.buffer, 0, len));
      } finally {
        file.close();
      }
      stats.sameSize++;
    } else {
      let size = rng.int(maxSize);
      if (size === f.size) size++;
      writeRandomFile(abs, size, contentSeed);
    }
    const now = new Date();
    Deno.utimeSync(abs, now, now);
    stats.edited++;
  }
  for (let k = n; k < take; k++) {
    Deno.removeSync(join(root, files[order[k]].path));
    stats.deleted++;
  }
  for (let k = 0; k < n; k++) {
    const dir = dirs.length > 0 ? rng.pick(dirs).path : "";
    const name = `new-r${rep}-${k}-${word(rng)}${rng.pick(EXTS)}`;
    const abs = dir === "" ? join(root, name) : join(root, dir, name);
    writeRandomFile(abs, rng.int(maxSize), mix(seed, 5, rep, k));
    stats.added++;
  }
  return stats;
}

/**
 * Renames the largest top-level folder of `root` to `<base>-renamed-<n>` (where `base` is its
 * name without an earlier `-renamed-<k>` suffix). Returns [oldName, newName, bytes].
 */
export function renameLargestTop(root: string, n: number): [string, string, number] {
  const { name, bytes } = largestTop(root);
  if (name === "") throw new Error(`no top-level folder in ${root}`);
  const base = name.replace(/-renamed-\d+$/, "");
  const next = `${base}-renamed-${n}`;
  Deno.renameSync(join(root, name), join(root, next));
  return [name, next, bytes];
}

// ---------------------------------------------------------------------------------------------
// CLI

function formatBytes(n: number): string {
  return `${(n / 1e6).toFixed(1)} MB`;
}

if (import.meta.main) {
  const args = [...Deno.args];
  const flag = (name: string): string | undefined => {
    const i = args.indexOf(name);
    if (i < 0) return undefined;
    const v = args[i + 1];
    args.splice(i, 2);
    return v;
  };
  const scale = Number(flag("--scale") ?? "1");
  const seed = Number(flag("--seed") ?? "1");
  const many = args.includes("--many");
  const dir = args.find((a) => !a.startsWith("--"));
  if (!dir || !Number.isFinite(scale) || scale <= 0) {
    console.error("usage: gen.ts DIR [--scale S] [--seed N] [--many]");
    Deno.exit(2);
  }
  const t0 = performance.now();
  const spec = many ? manyTreeSpec(scale, seed) : mainTreeSpec(scale, seed);
  const s = generateTree(dir, spec);
  const secs = ((performance.now() - t0) / 1000).toFixed(2);
  console.log(
    `${dir}: ${s.files} files, ${s.dirs} folders, ${s.symlinks} symlinks, ${
      formatBytes(s.bytes)
    }; ` +
      `largest top-level folder ${basename(s.largestTop.name)} ${
        formatBytes(s.largestTop.bytes)
      } ` +
      `(${((100 * s.largestTop.bytes) / s.bytes).toFixed(0)}%); ${secs} s`,
  );
}
