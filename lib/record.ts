/**
 * The record stage: write the manifest that describes the replica as it is after a run
 * (atomically, with its index beside it), or only the folder fingerprints a run with
 * nothing to do found. A run limited to roots splices its part into the previous file
 * (see partial.ts): the lines it kept are copied, not encoded again.
 *
 * @module
 */
import { type OpFailure, recordFailure } from "./apply.ts";
import { errorMessage } from "./errors.ts";
import { hashNode } from "./hash.ts";
import { logEvent } from "./log.ts";
import {
  type CacheRecord,
  type EncodedManifest,
  encodeManifest,
  type Manifest,
  openPreviousManifest,
  treeDigest,
  writeReplicaManifest,
} from "./manifest.ts";
import {
  INDEX_FIELDS,
  indexIsCurrent,
  indexPathFor,
  Kind,
  loadIndexDetails,
  type ManifestIndex,
} from "./manifest_index.ts";
import { inOnlyMemo, type RootsInIndex, spliceManifest } from "./partial.ts";
import { granted } from "./paths.ts";
import { isReplicaTrustworthy, isTrustworthy } from "./scan.ts";
import { type FileNode, parentOf, type ScanIssue, type Tree } from "./types.ts";

/** Folder fingerprints proposed by the quick checks of both sides (`QuickResult.dirFps`). */
export interface DirFps {
  src: number[];
  dst: number[];
}

/**
 * The triples of `fps` (see `QuickResult.dirFps`) without those of the folders that hold an
 * entry in `issues`.
 */
export function withoutParentsOf(fps: number[], ix: ManifestIndex, issues: ScanIssue[]): number[] {
  const parents = new Set(issues.map((i) => parentOf(i.path)));
  if (!parents.size) return fps;
  const kept: number[] = [];
  for (let k = 0; k < fps.length; k += 3) {
    if (!parents.has(ix.paths[fps[k]])) kept.push(fps[k], fps[k + 1], fps[k + 2]);
  }
  return kept;
}

/**
 * Add the folders of `dirFps` that `replaced` does not already cover to `m` and
 * `replaced`, with their cache rows: the proposed fingerprint for a side that has one, the
 * recorded one for the other side.
 */
function addDirFps(m: Manifest, replaced: Uint8Array, ix: ManifestIndex, dirFps: DirFps): void {
  const { nums, paths } = ix;
  const mine = new Uint8Array(paths.length);
  for (const [list, side] of [[dirFps.src, "src"], [dirFps.dst, "dst"]] as const) {
    for (let k = 0; k < list.length; k += 3) {
      const i = list[k];
      const p = paths[i];
      if (replaced[i] && !mine[i]) continue; // written anew by the run, without one
      const o = i * INDEX_FIELDS;
      if (nums[o] !== Kind.Dir) throw new Error(`'${p}' is not a folder in the index`);
      if (!mine[i]) {
        replaced[i] = mine[i] = 1;
        m.entries.set(p, { type: "dir", mode: nums[o + 1] });
        const fp = (at: number) =>
          nums[o + at] >= 0 ? [nums[o + at], nums[o + at + 1]] as const : undefined;
        m.cache.set(p, { dst: fp(4), src: fp(6) });
      }
      m.cache.get(p)![side] = list[k + 1] >= 0 ? [list[k + 1], list[k + 2]] : undefined;
    }
  }
}

/**
 * Encode the manifest after a run limited to `roots` into the previous manifest file:
 * `recorded` (the run's part, see {@linkcode manifestPart}) replaces the file's entries
 * inside the roots and the folders above them, and the rest is copied from the file (see
 * `encodeManifest`). The folders above the roots are written again, not copied, so that
 * their recorded folder fingerprints go: what they list may have changed in this run
 * (`recorded` has none), and only a later run that lists them records new ones. The
 * fingerprints the quick checks proposed (`dirFps`) are recorded for the other folders,
 * whose listings this run did not touch. When the run did nothing to the replica
 * (`untouched`: no operation planned, so both sides and `recorded` list the same names),
 * the folders above the roots are kept as they were, and get the proposed ones too.
 */
function encodeSpliced(
  recorded: Manifest,
  roots: Set<string>,
  ix: ManifestIndex,
  file: Deno.FsFile,
  dirFps: DirFps | undefined,
  untouched: boolean,
  found: RootsInIndex,
): EncodedManifest {
  const under = inOnlyMemo(roots);
  const inside: Manifest = { entries: new Map(), cache: new Map() };
  for (const [p, n] of recorded.entries) {
    if (!under(p)) continue;
    inside.entries.set(p, n);
    const c = recorded.cache.get(p);
    if (c) inside.cache.set(p, c);
  }
  const replaced = found.under.slice();
  // Untouched, the folders above the roots keep their lines and rows (those they had are
  // still right, and those the checks proposed are added below).
  for (const i of untouched ? [] : found.above) {
    if (replaced[i]) continue;
    replaced[i] = 1;
    // (A folder above a root that the replica no longer has goes from the manifest too.)
    const d = ix.paths[i];
    const n = recorded.entries.get(d);
    if (n) inside.entries.set(d, n);
  }
  if (dirFps) addDirFps(inside, replaced, ix, dirFps);
  return encodeManifest(inside, true, { ix, file, replaced });
}

/**
 * Record the folder fingerprints proposed by the quick checks of a run with nothing to do
 * (see `QuickResult.dirFps`): the manifest is written again with those folders' cache rows
 * changed, everything else copied from the file. Its digest and entries stay the same. It
 * is only a speed-up for the next runs, so a failure is logged at debug level, not
 * reported. True when the manifest was written (spliced).
 */
export function recordDirFingerprints(
  manifestPath: string,
  manifestStat: Deno.FileInfo,
  ix: ManifestIndex,
  dirFps: DirFps,
): boolean {
  const indexPath = indexPathFor(manifestPath);
  if (!granted("write", manifestPath) || !granted("write", indexPath)) return false;
  let written = false;
  try {
    if (!loadIndexDetails(ix)) return false;
    const m: Manifest = { entries: new Map(), cache: new Map() };
    const replaced = new Uint8Array(ix.paths.length);
    addDirFps(m, replaced, ix, dirFps);
    using file = openPreviousManifest(manifestPath, manifestStat, ix);
    if (!file) return false;
    const enc = encodeManifest(m, true, { ix, file, replaced });
    // Only cache rows changed: a different digest would mean the index was not the file's.
    if (enc.digest !== ix.digest) throw new Error("the digest would change");
    const e = writeReplicaManifest(manifestPath, enc, true);
    written = true;
    if (e) throw e;
  } catch (e) {
    logEvent("debug", {
      event: "index-failed",
      path: manifestPath,
      message: `cannot record folder fingerprints: ${errorMessage(e)} (the next run lists them)`,
    });
  }
  return written;
}

/** The manifest that describes the replica as it is after the run. */
export function recordManifest(state: Tree, src: Tree, repRoot: string): Manifest {
  const entries: Tree = new Map();
  const cache = new Map<string, CacheRecord>();
  for (const [p, n] of state) {
    if (n.type !== "file") {
      entries.set(p, n);
      continue;
    }
    let node = n;
    if (!node.sha256) {
      // Content unknown (changed behind our back and kept): hash it so the record is true.
      node = { ...n };
      if (hashNode(`${repRoot}/${p}`, p, node)) continue;
    }
    entries.set(p, node);
    const s = src.get(p);
    const rec: CacheRecord = {};
    if (node.fp && isReplicaTrustworthy(node)) rec.dst = node.fp;
    if (
      s?.type === "file" && s.sha256 === node.sha256 && s.size === node.size &&
      s.mtime === node.mtime && s.fp && isTrustworthy(s)
    ) rec.src = s.fp;
    if (rec.dst || rec.src) cache.set(p, rec);
  }
  return { entries, cache };
}

function sameFp(a?: readonly number[], b?: readonly number[]): boolean {
  return a === b || (!!a && !!b && a[0] === b[0] && a[1] === b[1]);
}

/** Whether two manifests would serialize identically. */
export function manifestsEqual(a: Manifest, b: Manifest): boolean {
  if (a.entries.size !== b.entries.size || a.cache.size !== b.cache.size) return false;
  for (const [p, x] of a.entries) {
    const y = b.entries.get(p);
    if (!y || x.type !== y.type) return false;
    if (x.type === "file") {
      const f = y as FileNode;
      if (x.sha256 !== f.sha256 || x.size !== f.size || x.mtime !== f.mtime || x.mode !== f.mode) {
        return false;
      }
    } else if (x.type === "dir") {
      if (y.type === "dir" && x.mode !== y.mode) return false;
    } else if (y.type === "symlink" && x.target !== y.target) return false;
  }
  for (const [p, c] of a.cache) {
    const d = b.cache.get(p);
    if (!d || !sameFp(c.dst, d.dst) || !sameFp(c.src, d.src)) return false;
  }
  return true;
}
/** What {@linkcode writeRecord} is given: the run's manifests and where they go. */
export interface RecordInput {
  manifestPath: string;
  /** The manifest file's stat before the run (none: there was no manifest). */
  manifestStat?: Deno.FileInfo;
  /** The index read for it, with its details loaded (none: not read, or not usable). */
  ix?: ManifestIndex;
  /** The run's roots (undefined: the whole tree) and where they are in `ix`. */
  roots?: Set<string>;
  inIndex?: RootsInIndex;
  /** The manifest before the run (with roots: its part, see `manifestPart`). */
  old?: Manifest;
  /** The whole manifest before the run (with roots). */
  whole: () => Manifest;
  /** The manifest after the run (with roots: its part; see {@linkcode recordManifest}). */
  recorded: Manifest;
  /** Whether the replica's record changed: written only then (or to make a missing index). */
  changed: boolean;
  /** Folder fingerprints the quick checks proposed. */
  dirFps?: DirFps;
  /**
   * Nothing was planned (or skipped) and no filter is set: the folders above the roots
   * list what they did (see {@linkcode encodeSpliced}).
   */
  untouched: boolean;
  /** A manifest that cannot be written is added here (the run's failures). */
  failures: OpFailure[];
}

/** What {@linkcode writeRecord} did. */
export interface RecordResult {
  /** Whether the manifest was written, and how: spliced into the previous file or in full. */
  written?: "spliced" | "full";
  /** The manifest's digest after the run. */
  digest: string;
}

/**
 * Write the manifest after a run when it changed, or when its index is missing or stale
 * (the index is written with the manifest it compiles, since it records where each line
 * is). A manifest that cannot be written is a failure in `failures`, not an exception: the
 * previous one is still in place (atomic write) and still safe to use, as the next run
 * checks every entry against the replica's stat before trusting it.
 */
export function writeRecord(r: RecordInput): RecordResult {
  const { manifestPath, manifestStat, ix, roots, old, whole, recorded, changed } = r;
  const indexPath = indexPathFor(manifestPath);
  // Unchanged: the recorded digest still holds, no need to hash 20k entries again.
  let digest = changed ? undefined : old?.digest;
  let written: RecordResult["written"];
  const indexOk = granted("write", indexPath);
  const indexMissing = !ix && old && indexOk &&
    !(manifestStat && indexIsCurrent(indexPath, manifestStat));
  if (changed || indexMissing) {
    const full = () =>
      encodeManifest(
        !roots ? recorded : changed ? spliceManifest(whole(), recorded, roots) : whole(),
        true,
      );
    // Only the roots' part was recorded: the rest is copied from the previous file as is.
    using previous = changed && roots && ix && manifestStat
      ? openPreviousManifest(manifestPath, manifestStat, ix)
      : undefined;
    const write = (enc: EncodedManifest) => {
      digest = enc.digest;
      const e = writeReplicaManifest(manifestPath, enc, indexOk);
      written = enc.previous ? "spliced" : "full";
      return e;
    };
    try {
      let e: unknown;
      try {
        e = write(
          previous
            ? encodeSpliced(
              recorded,
              roots!,
              ix!,
              previous,
              r.dirFps,
              r.untouched,
              r.inIndex!, // (a previous file is opened only with an index and roots)
            )
            : full(),
        );
      } catch (spliceError) {
        if (!previous) throw spliceError;
        // The file did not match its index after all (nothing was replaced): in full.
        e = write(full());
      }
      if (e) {
        logEvent("debug", {
          event: "index-failed",
          path: indexPath,
          message: `cannot write the manifest index: ${
            errorMessage(e)
          } (the next run reads the manifest)`,
        });
      }
    } catch (e) {
      recordFailure(r.failures, "manifest", manifestPath, e, "cannot write the manifest: ");
    }
  }
  digest ??= treeDigest((roots ? whole() : recorded).entries);
  return { written, digest };
}
