/**
 * The quick check: compare each entry of the manifest index with the stat of its path,
 * without building a tree. It answers "which paths may differ from the manifest?"; the
 * pipeline then re-scans only those (as watch mode does), and a run where both sides
 * answer "none" has nothing to do.
 *
 * The walk follows the index, not the folders: each recorded entry is stat'ed by its path
 * in the index's (sorted) order, so no folder needs to be listed to find its entries and
 * no path needs to be looked up. A folder is listed only to find names the index does not
 * hold, and only when it may have gained some: when its stat fingerprint (inode and
 * ctime, recorded by an earlier run that listed it) is missing or differs. Adding,
 * removing or renaming an entry changes its folder's ctime. A fingerprint is recorded only
 * once the folder's ctime second ended before the run that lists it started (Deno reports
 * ctime in whole seconds), so a change right after the listing cannot keep it; and only
 * without exclude patterns, which could hide names that a later run without them must see.
 * On the no-op at 200,000 files: 1.37–1.67 s walking the folders (listing each, looking up
 * each name), 0.90–0.93 s following the index (bench/README.md).
 *
 * The rules for files are the stat cache's own (see `reuseSourceHashes` and
 * `reuseReplicaHashes`): a file matches only when size, mtime, mode, inode and ctime equal
 * what was recorded and, on the source side, its mtime is outside the racy window. Anything
 * unusual (an unreadable path, a special file) makes the check give up, and the run scans
 * in full so that the problem is reported the usual way.
 *
 * @module
 */
import { INDEX_FIELDS, Kind, type ManifestIndex } from "./manifest_index.ts";
import { CTIME_TICK_MS, isRacyMtime, mtimeMs, type PathFilter } from "./scan.ts";

/** Options for {@linkcode quickCheck}. */
export interface QuickCheckOptions {
  /** Which side `root` is: the fingerprints recorded for that side are compared. */
  side: "source" | "replica";
  /**
   * Paths for which this returns true are skipped, as in the scan. With a filter, folder
   * fingerprints are neither trusted nor proposed: every folder is listed.
   */
  exclude?: PathFilter;
  /** The run's start time (before any stat), for the racy-window rules. */
  now: number;
  /** Checked every few hundred entries; an aborted check throws the signal's reason. */
  signal?: AbortSignal;
}

/** What {@linkcode quickCheck} found on one side. */
export interface QuickResult {
  /**
   * The paths that may differ from the index: new, changed, gone or untrusted entries (a
   * changed or gone folder stands for its whole subtree).
   */
  changed: string[];
  /**
   * Folder fingerprints to record for this side, as triples `entry number, inode, ctime`:
   * the folders that were listed because their recorded fingerprint did not match. `-1, -1`
   * when the folder's ctime is still too recent to be trusted later (its recorded
   * fingerprint is then dropped). The run records them for the folders whose listing it
   * did not change (see `encodeSpliced` in record.ts).
   */
  dirFps: number[];
  /**
   * The mtime of every folder the check stat'ed and found still a folder with its recorded
   * mode, as pairs `entry number, mtime (ms)`: the run compares the two sides' folder times
   * (the manifest does not record them).
   */
  dirTimes: number[];
}

/**
 * Check the tree at `root` against the index; see {@linkcode QuickResult}. Undefined when
 * the check met a path it could not read or a special file.
 *
 * @example
 * ```ts
 * const r = quickCheck("src", ix, { side: "source", now: Date.now() });
 * if (r?.changed.length === 0) console.log("nothing to do on this side");
 * ```
 */
export function quickCheck(
  root: string,
  ix: ManifestIndex,
  options: QuickCheckOptions,
): QuickResult | undefined {
  const { exclude, now, signal } = options;
  const { paths, nums, targets } = ix;
  // Offset of the side's fingerprint columns: replica 4,5; source 6,7.
  const fpAt = options.side === "replica" ? 4 : 6;
  const racy = options.side === "source";
  const trustDirs = exclude === undefined;
  const changed: string[] = [];
  const dirFps: number[] = [];
  const dirTimes: number[] = [];
  // 1 for the folders whose recorded entries are checked one by one. A changed or gone
  // folder stays 0: the pipeline re-scans it whole, and nothing below it is checked.
  const live = new Uint8Array(paths.length);
  // Entry numbers of the folders, by path (the root is -1), to find each entry's parent.
  const dirIds = new Map<string, number>([["", -1]]);
  // The folders listed (relative, "" for the root), each with the names found in it that
  // the walk has not met in the index yet. A folder's entry comes before its children in
  // the index's order, so the walk takes each child's name out of its folder's set as it
  // goes; what is left at the end is new. No table of the whole index is built: matching
  // per folder took the same time as looking each listed path up in one, with nearly every
  // folder listed (200,000 files, 1% changed; bench/README.md).
  const listed = new Map<string, Set<string>>();
  const listNew = (dir: string) => {
    const names = new Set<string>();
    for (const d of Deno.readDirSync(dir === "" ? root : `${root}/${dir}`)) {
      if (exclude && exclude(dir === "" ? d.name : `${dir}/${d.name}`, d.isDirectory)) continue;
      names.add(d.name);
    }
    if (names.size) listed.set(dir, names);
  };
  try {
    listNew("");
    let lastParent = "", lastSlash = -1, parentLive = true;
    let parentNames = listed.get("");
    for (let i = 0; i < paths.length; i++) {
      if ((i & 255) === 0) signal?.throwIfAborted();
      const p = paths[i];
      const slash = p.lastIndexOf("/");
      if (slash !== lastSlash || (slash > 0 && !p.startsWith(lastParent))) {
        lastSlash = slash;
        lastParent = slash < 0 ? "" : p.slice(0, slash);
        const j = dirIds.get(lastParent);
        // A parent the index lacks: not a manifest mimeo wrote. The full scan rebuilds it.
        if (j === undefined) return undefined;
        parentLive = j < 0 || live[j] === 1;
        parentNames = listed.get(lastParent);
      }
      const o = i * INDEX_FIELDS;
      const kind = nums[o];
      if (kind === Kind.Dir) dirIds.set(p, i);
      if (!parentLive) continue;
      parentNames?.delete(slash < 0 ? p : p.slice(slash + 1));
      if (exclude && exclude(p, kind === Kind.Dir)) {
        // Excluded now: the pipeline drops it.
        changed.push(p);
        continue;
      }
      let st: Deno.FileInfo;
      try {
        st = Deno.lstatSync(`${root}/${p}`);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory)) {
          return undefined;
        }
        changed.push(p); // gone
        continue;
      }
      if (st.isFile) {
        const mtime = mtimeMs(st);
        if (
          kind !== Kind.File || nums[o + 2] !== st.size || nums[o + 3] !== mtime ||
          nums[o + 1] !== ((st.mode ?? 0) & 0o7777) || nums[o + fpAt] !== st.ino ||
          nums[o + fpAt + 1] !== (st.ctime?.getTime() ?? 0) ||
          (racy && isRacyMtime(mtime, now, st.ctime?.getTime() ?? 0))
        ) changed.push(p);
      } else if (st.isDirectory) {
        if (kind !== Kind.Dir || nums[o + 1] !== ((st.mode ?? 0) & 0o7777)) {
          // Re-scanned whole by the pipeline: no need to look inside.
          changed.push(p);
          continue;
        }
        live[i] = 1;
        dirTimes.push(i, mtimeMs(st));
        const ino = st.ino ?? 0, ctime = st.ctime?.getTime() ?? 0;
        const known = ino > 0 && ctime > 0;
        if (trustDirs && known && nums[o + fpAt] === ino && nums[o + fpAt + 1] === ctime) {
          continue; // listed by an earlier run, and unchanged since
        }
        listNew(p);
        if (trustDirs) {
          // The listing is the index's (when nothing else turns up): trusted from now on,
          // unless its ctime second had not ended when this run started.
          const stable = known && ctime + CTIME_TICK_MS <= now;
          const [fi, fc] = stable ? [ino, ctime] : [-1, -1];
          if (nums[o + fpAt] !== fi || nums[o + fpAt + 1] !== fc) dirFps.push(i, fi, fc);
        }
      } else if (st.isSymlink) {
        if (kind !== Kind.Symlink || targets.get(i) !== Deno.readLinkSync(`${root}/${p}`)) {
          changed.push(p);
        }
      } else {
        return undefined; // a special file: the full scan reports it
      }
    }
  } catch (e) {
    if (signal?.aborted) throw e;
    return undefined;
  }
  for (const [dir, names] of listed) {
    for (const name of names) changed.push(dir === "" ? name : `${dir}/${name}`);
  }
  return { changed, dirFps, dirTimes };
}
