/**
 * Runs limited to some paths (roots): what a quick check or the watcher found may differ.
 * Everything outside the roots is, on both sides, what the manifest says, so a run reads,
 * plans and records only its part of the manifest (the entries inside the roots and the
 * folders above them) and splices it back into the whole when it is written.
 *
 * @module
 */
import type { CacheRecord, Manifest } from "./manifest.ts";
import { indexFind, indexToManifest, indexUnder, type ManifestIndex } from "./manifest_index.ts";
import { parentOf, type Tree } from "./types.ts";

/** Minimal set of roots (drop paths inside other listed paths), sorted. */
export function normalizeOnly(only: string[]): string[] {
  const set = new Set(only.filter((p) => p !== "" && p !== "."));
  const out: string[] = [];
  for (const p of set) {
    let d = parentOf(p);
    while (d !== "" && !set.has(d)) d = parentOf(d);
    if (d === "") out.push(p);
  }
  return out.sort();
}

function inOnly(p: string, roots: Set<string>): boolean {
  for (let d = p; d !== ""; d = parentOf(d)) if (roots.has(d)) return true;
  return false;
}

/** {@linkcode inOnly} with the answer per folder remembered (a tree has far fewer folders). */
export function inOnlyMemo(roots: Set<string>): (p: string) => boolean {
  const dirs = new Map<string, boolean>();
  return (p) => {
    if (roots.has(p)) return true;
    const d = parentOf(p);
    if (d === "") return false;
    let v = dirs.get(d);
    if (v === undefined) dirs.set(d, v = inOnly(d, roots));
    return v;
  };
}

/**
 * The part of a manifest a run limited to `roots` works on: the entries inside the roots
 * and the folders above them. Everything else is, on both sides, what the manifest says
 * (that is what the quick check and the watcher establish), so the plan has nothing to do
 * there: planning, hashing and recording only this part makes a small change cost in
 * proportion to its size, not to the tree's (see {@linkcode spliceManifest}).
 */
export function manifestPart(m: Manifest, roots: Set<string>): Manifest {
  const entries: Tree = new Map();
  const cache = new Map<string, CacheRecord>();
  const add = (p: string) => {
    const n = m.entries.get(p);
    if (!n) return;
    entries.set(p, n);
    const c = m.cache.get(p);
    if (c) cache.set(p, c);
  };
  for (const r of roots) for (let d = parentOf(r); d !== ""; d = parentOf(d)) add(d);
  const under = inOnlyMemo(roots);
  for (const p of m.entries.keys()) if (under(p)) add(p);
  return { entries, cache, digest: m.digest };
}

/** Entry numbers of the folders above `roots` that the index holds, each once. */
function foldersAbove(ix: ManifestIndex, roots: Iterable<string>): number[] {
  const found: number[] = [];
  const seen = new Set<string>();
  for (const r of roots) {
    for (let d = parentOf(r); d !== "" && !seen.has(d); d = parentOf(d)) {
      seen.add(d);
      const i = indexFind(ix.paths, d);
      if (i !== undefined) found.push(i);
    }
  }
  return found;
}

/** Where a run's roots are in an index (see {@linkcode rootsInIndex}). Read-only. */
export interface RootsInIndex {
  /** One flag per entry: under a root (`indexUnder`). */
  under: Uint8Array;
  /** Entry numbers of the folders above the roots (`foldersAbove`). */
  above: readonly number[];
}

/**
 * Where `roots` are in `ix`. A run with changes needs it twice, to read its part of the
 * index and to splice the manifest, so `sync()` finds it once and passes it to both (a CPU
 * profile of a 1% change at 200,000 files: 56 ms for two `indexUnder` calls, 24 for two
 * `foldersAbove`).
 */
export function rootsInIndex(ix: ManifestIndex, roots: Set<string>): RootsInIndex {
  return { under: indexUnder(ix.paths, roots), above: foldersAbove(ix, roots) };
}

/** {@linkcode manifestPart} read straight from an index (no whole manifest is built). */
export function indexPart(
  ix: ManifestIndex,
  roots: Set<string>,
  found: RootsInIndex = rootsInIndex(ix, roots),
): Manifest {
  const { under, above } = found;
  const picked = [...above];
  for (let i = 0; i < under.length; i++) if (under[i]) picked.push(i);
  return indexToManifest(ix, picked);
}

/**
 * The whole manifest after a run limited to `roots`: `part` (the recorded part, see
 * {@linkcode manifestPart}) inside the roots, `whole` (the manifest before the run)
 * everywhere else.
 */
export function spliceManifest(whole: Manifest, part: Manifest, roots: Set<string>): Manifest {
  const entries: Tree = new Map();
  const cache = new Map<string, CacheRecord>();
  const under = inOnlyMemo(roots);
  const take = (m: Manifest, inside: boolean) => {
    for (const [p, n] of m.entries) {
      if (under(p) !== inside) continue;
      entries.set(p, n);
      const c = m.cache.get(p);
      if (c) cache.set(p, c);
    }
  };
  take(whole, false);
  take(part, true);
  return { entries, cache };
}

/** Trees from the manifest for everything outside `roots`, fresh scans inside. */
export function mergePartial(
  old: Manifest,
  fresh: Tree,
  roots: Set<string>,
  side: "src" | "dst",
): Tree {
  const t: Tree = new Map();
  const under = inOnlyMemo(roots);
  for (const [p, n] of old.entries) {
    if (under(p)) continue;
    if (n.type === "file") {
      const c = old.cache.get(p);
      t.set(p, {
        type: "file",
        size: n.size,
        mtime: n.mtime,
        mode: n.mode,
        sha256: n.sha256,
        fp: side === "src" ? c?.src : c?.dst,
        hashedAt: undefined,
      });
    } else t.set(p, n);
  }
  for (const [p, n] of fresh) t.set(p, n);
  return t;
}
