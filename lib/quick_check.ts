/**
 * The quick check: walk a tree and compare each entry's stat with the manifest index,
 * without building a tree. It answers "which paths may differ from the manifest?"; the
 * pipeline then re-scans only those (as watch mode does), and a run where both sides
 * answer "none" has nothing to do.
 *
 * The rules are the stat cache's own (see `reuseSourceHashes` and `reuseReplicaHashes`):
 * a file matches only when size, mtime, mode, inode and ctime equal what was recorded and,
 * on the source side, its mtime is outside the racy window. Anything unusual (an
 * unreadable path, a special file) makes the check give up, and the run scans in full so
 * that the problem is reported the usual way.
 *
 * @module
 */
import { INDEX_FIELDS, Kind, type ManifestIndex } from "./manifest_index.ts";
import { type PathFilter, RACY_WINDOW_MS } from "./scan.ts";
import { parentOf } from "./types.ts";

/** Options for {@linkcode quickCheck}. */
export interface QuickCheckOptions {
  /** Which side `root` is: the fingerprints recorded for that side are compared. */
  side: "source" | "replica";
  /** Paths for which this returns true are skipped, as in the scan. */
  exclude?: PathFilter;
  /** The run's start time, for the racy-window rule (source side). */
  now: number;
  /** Checked between folders; an aborted check throws the signal's reason. */
  signal?: AbortSignal;
}

/** Path → entry number of an index (see {@linkcode indexLookup}). */
export interface PathLookup {
  get(path: string): number | undefined;
}

/** FNV-1a over the UTF-16 code units of a string. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h;
}

/**
 * Path → entry number of an index: an open-addressing table of entry numbers keyed by an
 * FNV-1a hash of the path, instead of a `Map`. A `Map` of 200,000 paths takes 211–222 ms
 * to build and query once (V8 hashes each string on first use); this table 114–123 ms
 * (bench/README.md), on each of the two threads of a quick check.
 *
 * @example
 * ```ts
 * const lookup = indexLookup(ix);
 * const i = lookup.get("docs/readme.md"); // its entry number, or undefined
 * ```
 */
export function indexLookup(ix: ManifestIndex): PathLookup {
  const paths = ix.paths;
  let size = 1024;
  while (size < paths.length * 2) size *= 2;
  const mask = size - 1;
  const slots = new Int32Array(size).fill(-1);
  for (let i = 0; i < paths.length; i++) {
    let h = fnv1a(paths[i]) & mask;
    while (slots[h] >= 0) h = (h + 1) & mask;
    slots[h] = i;
  }
  return {
    get(path: string): number | undefined {
      for (let h = fnv1a(path) & mask, j = slots[h]; j >= 0; h = (h + 1) & mask, j = slots[h]) {
        if (paths[j] === path) return j;
      }
      return undefined;
    },
  };
}

/**
 * The paths under `root` that may differ from the index: new, changed, gone or
 * untrusted entries (a changed or new folder stands for its whole subtree). Undefined
 * when the walk met a path it could not read or a special file.
 *
 * @example
 * ```ts
 * const changed = quickCheck("src", ix, indexLookup(ix), { side: "source", now: Date.now() });
 * if (changed?.length === 0) console.log("nothing to do on this side");
 * ```
 */
export function quickCheck(
  root: string,
  ix: ManifestIndex,
  lookup: PathLookup,
  options: QuickCheckOptions,
): string[] | undefined {
  const { exclude, now, signal } = options;
  const { nums, targets } = ix;
  // Offset of the side's fingerprint columns: replica 4,5; source 6,7.
  const fpAt = options.side === "replica" ? 4 : 6;
  const racy = options.side === "source";
  const seen = new Uint8Array(ix.paths.length);
  const changed: string[] = [];
  const changedDirs = new Set<string>();
  const stack: string[] = [""];
  try {
    while (stack.length) {
      signal?.throwIfAborted();
      const dir = stack.pop()!;
      const absDir = dir === "" ? root : `${root}/${dir}`;
      for (const d of Deno.readDirSync(absDir)) {
        const rel = dir === "" ? d.name : `${dir}/${d.name}`;
        if (exclude && exclude(rel, d.isDirectory)) continue;
        const i = lookup.get(rel);
        const o = i === undefined ? -1 : i * INDEX_FIELDS;
        if (i !== undefined) seen[i] = 1;
        if (d.isSymlink) {
          if (
            o < 0 || nums[o] !== Kind.Symlink ||
            targets.get(i!) !== Deno.readLinkSync(`${absDir}/${d.name}`)
          ) {
            changed.push(rel);
          }
          continue;
        }
        const st = Deno.lstatSync(`${absDir}/${d.name}`);
        if (st.isFile) {
          const mtime = Math.trunc(st.mtime?.getTime() ?? 0);
          if (
            o < 0 || nums[o] !== Kind.File || nums[o + 2] !== st.size || nums[o + 3] !== mtime ||
            nums[o + 1] !== ((st.mode ?? 0) & 0o7777) || nums[o + fpAt] !== st.ino ||
            nums[o + fpAt + 1] !== (st.ctime?.getTime() ?? 0) ||
            (racy && now - mtime < RACY_WINDOW_MS)
          ) changed.push(rel);
        } else if (st.isDirectory) {
          if (o < 0 || nums[o] !== Kind.Dir || nums[o + 1] !== ((st.mode ?? 0) & 0o7777)) {
            // Re-scanned whole by the pipeline: no need to look inside.
            changed.push(rel);
            changedDirs.add(rel);
          } else stack.push(rel);
        } else if (st.isSymlink) {
          changed.push(rel); // (became a symlink between readDir and lstat)
        } else {
          return undefined; // a special file: the full scan reports it
        }
      }
    }
  } catch (e) {
    if (signal?.aborted) throw e;
    return undefined;
  }
  // Entries that are gone. One path stands for a gone folder and everything below it.
  const paths = ix.paths;
  for (let i = 0; i < paths.length; i++) {
    if (seen[i]) continue;
    const p = paths[i];
    const parent = parentOf(p);
    if (parent !== "") {
      const j = lookup.get(parent);
      if ((j !== undefined && !seen[j]) || changedDirs.has(parent)) continue;
    }
    changed.push(p);
  }
  return changed;
}
