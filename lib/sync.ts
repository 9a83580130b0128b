/**
 * One run of the pipeline: scan → manifest → plan → apply → record.
 *
 * @module
 */
import {
  applyPlan,
  type ApplyReport,
  eventOf,
  type OpFailure,
  type ProgressFn,
  recordFailure,
} from "./apply.ts";
import { errorMessage, ExitCode, RefusedError, UsageError } from "./errors.ts";
import { dirname } from "node:path";
import { buildFilter, type FilterOptions } from "./filter.ts";
import { lockReplica } from "./lock.ts";
import { formatBytes, logEvent } from "./log.ts";
import { type Manifest, ManifestError, readManifest } from "./manifest.ts";
import {
  countOps,
  type DirtimeOp,
  foldersTouched,
  isTempPath,
  type MetaOp,
  type Op,
  type Plan,
  plan,
} from "./plan.ts";
import { checkManifestWritable, granted, type SyncPaths, validatePaths } from "./paths.ts";
import {
  indexPathFor,
  indexToManifest,
  loadIndexDetails,
  type ManifestIndex,
  readIndex,
} from "./manifest_index.ts";
import { indexPart, manifestPart, mergePartial, normalizeOnly, rootsInIndex } from "./partial.ts";
import { quickCheck } from "./quick_check.ts";
import {
  type DirFps,
  manifestsEqual,
  recordDirFingerprints,
  recordManifest,
  withoutParentsOf,
  writeRecord,
} from "./record.ts";
import {
  mtimeMs,
  type PathFilter,
  reuseReplicaHashes,
  reuseSourceHashes,
  scanTree,
} from "./scan.ts";
import { hashNode } from "./hash.ts";
import { isRemoteUrl } from "./replica/remote/protocol.ts";
import { quickCheckInWorker, scanInWorker } from "./scan_worker.ts";
import { FsTarget, removeQuietly, yieldToEventLoop } from "./target_fs.ts";
import { type DirNode, type FileNode, type LinkNode, type ScanIssue, type Tree } from "./types.ts";

/**
 * Replicas whose manifest is at least this large (about 5,000 entries) are scanned on a
 * second thread while this one parses the manifest and scans the source. Measured on the
 * 20,000-file benchmark tree: no-op 0.49 s instead of 0.57 s, for ~30 MB more memory (a
 * second V8 isolate); below this size the isolate's start-up eats the gain.
 */
export const WORKER_MIN_MANIFEST_BYTES = 1024 * 1024;

/** Options for {@linkcode sync}. */
export interface SyncOptions {
  /** The folder to mirror. Never written to. */
  source: string;
  /** The mirror. Created when missing. */
  replica: string;
  /**
   * Where the replica's manifest lives.
   * @default "<replica>.mimeo.json" (beside the replica, never inside it)
   */
  manifest?: string;
  /**
   * `.gitignore`-style patterns to leave out, on both sides: excluded replica entries are
   * kept (unless `deleteExcluded`).
   */
  exclude?: string[];
  /** Files of ignore patterns; `<source>/.mimeoignore` is read too when present. */
  ignoreFiles?: string[];
  /**
   * Delete excluded entries from the replica (as rsync's `--delete-excluded`): the patterns
   * then apply to the source only, and the replica must hold nothing else.
   * @default false
   */
  deleteExcluded?: boolean;
  /**
   * Give replica folders the source folders' mtimes, as `rsync -a` does; off, as rsync's
   * `--omit-dir-times`, they keep whatever the replica's file system gives them.
   * @default true
   */
  dirTimes?: boolean;
  /**
   * Hash every source file (and same-size replica files) instead of trusting the stat cache.
   * @default false
   */
  checksum?: boolean;
  /**
   * Plan only: change nothing, write no manifest.
   * @default false
   */
  dryRun?: boolean;
  /** Refuse the run if it would delete more than this many entries. */
  maxDelete?: number;
  /** Refuse the run if it would delete more than this percentage of the replica's entries. */
  maxDeletePercent?: number;
  /**
   * Allow an empty source to empty a non-empty replica (refused by default: an unmounted
   * drive must not wipe a mirror).
   * @default false
   */
  allowEmptySource?: boolean;
  /**
   * Detect moves and rename in the replica instead of copying.
   * @default true
   */
  renames?: boolean;
  /** Stops the run cleanly between operations. */
  signal?: AbortSignal;
  /** Called as operations complete. */
  progress?: (p: ProgressInfo) => void;
  /**
   * Re-scan only these relative paths and trust the manifest for the rest (watch mode).
   * Ignored when there is no valid manifest.
   */
  only?: string[];
  /** The log file, checked to be outside the source and the replica. */
  logFile?: string;
  /**
   * Scan the replica on a second thread when its manifest is at least this many bytes.
   * @default WORKER_MIN_MANIFEST_BYTES
   */
  workerMinManifestBytes?: number;
  /**
   * Share runs of at least this many small copies with a helper thread.
   * @default HELPER_MIN_FILES
   */
  helperMinFiles?: number;
  /** A remote replica's bearer token (`mimeo serve --token-file`). */
  token?: string;
  /** A remote replica's CA certificates (PEM file), for a self-signed server certificate. */
  caFile?: string;
}

/** Progress of a run. */
export interface ProgressInfo {
  phase: "scan" | "hash" | "apply";
  opsDone: number;
  opsTotal: number;
  bytesDone: number;
  bytesTotal: number;
}

/** What one run did. */
export interface SyncReport {
  source: string;
  replica: string;
  manifest: string;
  dryRun: boolean;
  /** The planned operations, in order. */
  ops: Op[];
  /** Operations done, by kind. */
  done: Record<Op["op"], number>;
  failures: OpFailure[];
  /** Paths that could not be read while scanning, and skipped special files. */
  scanIssues: ScanIssue[];
  /** Replica entries kept because the source scan had errors. */
  deletesSkipped: number;
  bytesCopied: number;
  /** Files whose content was read to hash it (source, replica). */
  hashed: { source: number; replica: number };
  /** Totals of the source as mirrored. */
  entries: number;
  /** Digest of the replica's manifest after the run (absent on a dry run). */
  digest?: string;
  manifestWritten: boolean;
  /**
   * How the manifest was written: `spliced` (the unchanged lines copied from the previous
   * file) or `full`; absent when it was not written.
   */
  manifestWrite?: "spliced" | "full";
  /** Whether the replica was scanned on a second thread. */
  scannedInWorker: boolean;
  /** Files copied by the helper thread (see `copy_worker.ts`); included in `done`. */
  copiedByHelper: number;
  /**
   * How the run found what changed: `quick` when both sides were compared by stat with the
   * manifest index and only the differences were scanned; `full` when both were scanned.
   */
  check: "quick" | "full";
  stopped: boolean;
  durationMs: number;
  exitCode: number;
}

/**
 * The recorded manifest at `path`, or undefined (with a warning when `replica`, the folder
 * it describes, existed before the run and holds anything: it is rebuilt from the replica).
 */
export function loadManifest(path: string, replica: string | undefined): Manifest | undefined {
  try {
    return readManifest(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      // (An empty folder, as after `mkdir backup`, has nothing to rebuild.)
      if (replica !== undefined && !isEmptyDir(replica)) {
        logEvent("warning", {
          event: "manifest-missing",
          path,
          message: `no manifest at '${path}'; rebuilding it from the replica (files are re-hashed)`,
        });
      }
      return undefined;
    }
    const reason = e instanceof ManifestError ? e.message : `cannot read '${path}': ${e}`;
    logEvent("warning", {
      event: "manifest-invalid",
      path,
      message: `${reason}; rebuilding it from the replica (files are re-hashed)`,
    });
    return undefined;
  }
}

/** A quick check's folder times (`QuickResult.dirTimes`) by path. */
function timesByPath(ix: ManifestIndex, pairs: readonly number[]): Map<string, number> {
  const m = new Map<string, number>();
  for (let k = 0; k < pairs.length; k += 2) m.set(ix.paths[pairs[k]], pairs[k + 1]);
  return m;
}

/**
 * Give the folders of a partial run's tree that came from the manifest (which does not
 * record folder times) their mtime: from `known` (a quick check's), else by stat'ing them.
 * Those are the folders above the run's roots, where its operations add or remove entries.
 */
function fillFolderTimes(tree: Tree, root: string, known?: Map<string, number>): void {
  for (const [p, n] of tree) {
    if (n.type !== "dir" || n.mtime !== undefined) continue;
    let mtime = known?.get(p);
    if (mtime === undefined) {
      try {
        const st = Deno.lstatSync(`${root}/${p}`);
        if (!st.isDirectory) continue;
        mtime = mtimeMs(st);
      } catch {
        continue; // gone: the plan does not keep it, or the apply reports it
      }
    }
    tree.set(p, { type: "dir", mode: n.mode, mtime });
  }
}

/** Hash what the plan needs to decide, and nothing more. */
async function resolveHashes(
  srcRoot: string,
  repRoot: string,
  src: Tree,
  rep: Tree,
  checksum: boolean,
  issues: ScanIssue[],
  signal?: AbortSignal,
): Promise<{ source: number; replica: number }> {
  // Sizes of replica files at vanishing paths, and of source files at new paths: only
  // those can pair up as renames, so only those need hashing on either side.
  const removedSizes = new Set<number>();
  for (const [q, v] of rep) {
    if (v.type === "file" && src.get(q)?.type !== "file") removedSizes.add(v.size);
  }
  const newSizes = new Set<number>();
  for (const [p, s] of src) {
    if (s.type === "file" && rep.get(p)?.type !== "file") newSizes.add(s.size);
  }
  let source = 0;
  let replica = 0;
  let last = performance.now();
  let tick = 0;
  for (const [q, v] of rep) {
    if (v.type !== "file" || v.sha256 || !newSizes.has(v.size) || src.get(q)?.type === "file") {
      continue;
    }
    const rn = { ...v };
    replica++;
    if (!hashNode(`${repRoot}/${q}`, q, rn)) rep.set(q, rn);
    if (performance.now() - last > 50) {
      signal?.throwIfAborted();
      await yieldToEventLoop();
      last = performance.now();
    }
  }
  for (const [p, s] of src) {
    if (s.type !== "file") continue;
    const r = rep.get(p);
    const sameSize = r?.type === "file" && r.size === s.size;
    if (checksum || (!s.sha256 && (sameSize || removedSizes.has(s.size)))) {
      const issue = hashNode(`${srcRoot}/${p}`, p, s);
      source++;
      if (issue) {
        issues.push(issue);
        s.sha256 = undefined; // (not `delete`: keeps the one node shape)
      }
    }
    if (sameSize && (checksum || !(r as FileNode).sha256) && s.sha256) {
      const rn = { ...(r as FileNode) };
      replica++;
      if (hashNode(`${repRoot}/${p}`, p, rn)) rn.sha256 = undefined;
      rep.set(p, rn);
    }
    if ((++tick & 63) === 0 && performance.now() - last > 50) {
      signal?.throwIfAborted();
      await yieldToEventLoop();
      last = performance.now();
    }
  }
  return { source, replica };
}

/**
 * Whether a run has nothing to do, decided right after the stat cache: every source and
 * replica entry equals its manifest entry, and every file's hash came from the cache (its
 * fingerprint matched on both sides), and each folder has the same mtime on both sides
 * (the manifest does not record folder times). Then the plan is empty and the manifest
 * unchanged.
 */
export function isUnchanged(
  src: Tree,
  rep: Tree,
  old: Manifest | undefined,
  dirTimes = true,
): boolean {
  if (!old || src.size !== old.entries.size || rep.size !== old.entries.size) return false;
  for (const [p, e] of old.entries) {
    const s = src.get(p);
    const r = rep.get(p);
    if (!s || !r || s.type !== e.type || r.type !== e.type) return false;
    if (e.type === "file") {
      const a = s as FileNode, b = r as FileNode;
      if (
        a.sha256 !== e.sha256 || b.sha256 !== e.sha256 || a.size !== e.size || b.size !== e.size ||
        a.mtime !== e.mtime || b.mtime !== e.mtime || a.mode !== e.mode || b.mode !== e.mode
      ) return false;
    } else if (e.type === "dir") {
      const a = s as DirNode, b = r as DirNode;
      if (a.mode !== e.mode || b.mode !== e.mode || (dirTimes && a.mtime !== b.mtime)) return false;
    } else if ((s as LinkNode).target !== e.target || (r as LinkNode).target !== e.target) {
      return false;
    }
  }
  return true;
}

/** True when `dir` is a folder with no entries (false when it cannot be listed). */
export function isEmptyDir(dir: string): boolean {
  try {
    return Deno.readDirSync(dir)[Symbol.iterator]().next().done === true;
  } catch {
    return false;
  }
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function summaryText(r: SyncReport): string {
  const d = r.done;
  const parts: string[] = [];
  const add = (n: number, one: string, many = one) =>
    n && parts.push(`${n} ${n === 1 ? one : many}`);
  add(d.copy, "copied");
  add(d.update, "updated");
  add(d.rename, "renamed");
  add(d.meta, "metadata-only");
  add(d.symlink, "symlink", "symlinks");
  add(d.mkdir, "folder created", "folders created");
  add(d.delete, "deleted");
  add(d.rmdir, "folder removed", "folders removed");
  add(d.dirtime, "folder time set", "folder times set");
  const secs = (r.durationMs / 1000).toFixed(2);
  const unreadable = r.scanIssues.filter((i) => i.level === "error").length;
  const head = r.stopped
    ? "stopped"
    : r.failures.length || unreadable
    ? "finished with errors"
    : "synced";
  const what = parts.length
    ? parts.join(", ")
    : r.failures.length || unreadable
    ? "nothing done"
    : "nothing to do";
  const fails = (r.failures.length ? `, ${r.failures.length} failed` : "") +
    (unreadable ? `, ${unreadable} unreadable` : "");
  // (Into a remote replica, what crossed the network: renames and held contents cost nothing.)
  return `${head}: ${what}${fails}; ${formatBytes(r.bytesCopied)} ${
    isRemoteUrl(r.replica) ? "sent" : "copied"
  }, ${r.entries} entries, ${secs} s`;
}

/**
 * Whether the replica folder exists; a first run (not a dry run) makes it now, to hold its
 * lock (see lock.ts): once the paths are valid and the folder for the manifest can be
 * written, nothing can be refused while the replica is empty (and if that folder cannot
 * be, the empty replica made here goes again). `given` is the replica as the user wrote it.
 */
function prepareReplica(paths: SyncPaths, given: string, dryRun: boolean): boolean {
  const { source, replica, manifest } = paths;
  let replicaExists = true;
  try {
    Deno.lstatSync(replica);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    replicaExists = false;
  }
  if (dryRun) return replicaExists;
  if (!replicaExists) {
    // Private from the start when the source is (its mode is set exactly at the end).
    const mode = ((Deno.statSync(source).mode ?? 0o755) & 0o777) | 0o700;
    try {
      try {
        Deno.mkdirSync(replica, { mode });
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
        // (Its missing parents get the default mode.)
        Deno.mkdirSync(dirname(replica), { recursive: true });
        Deno.mkdirSync(replica, { mode });
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) {
        throw new UsageError(`Cannot create replica '${given}': ${errorMessage(e)}`);
      }
    }
  }
  try {
    checkManifestWritable(manifest);
  } catch (e) {
    if (!replicaExists) removeQuietly(replica);
    throw e;
  }
  return replicaExists;
}

/**
 * Refuse a plan that deletes more than the run allows (`--max-delete N` or `N%`), or, in a
 * first sync into a folder mimeo did not make (`firstInto`: no manifest beside it), most
 * of the folder: more likely a wrong path (`mimeo build ~`) than a stale copy. Asked for,
 * with --max-delete, that goes ahead. `repCount`: the replica's entries.
 */
export function checkDeletes(
  p: Plan,
  repCount: number,
  options: SyncOptions,
  firstInto: boolean,
): void {
  const deletes =
    p.ops.filter((o) => (o.op === "delete" || o.op === "rmdir") && !isTempPath(o.path)).length;
  if (options.maxDelete !== undefined && deletes > options.maxDelete) {
    throw new RefusedError(
      `refusing to delete ${deletes} entries (more than --max-delete ${options.maxDelete}); nothing was changed`,
    );
  }
  if (options.maxDeletePercent !== undefined && repCount > 0) {
    const pct = (deletes / repCount) * 100;
    if (pct > options.maxDeletePercent) {
      throw new RefusedError(
        `refusing to delete ${deletes} of ${repCount} entries (${
          pct.toFixed(1)
        }%, more than --max-delete ${options.maxDeletePercent}%); nothing was changed`,
      );
    }
  }
  if (
    firstInto && options.maxDelete === undefined && options.maxDeletePercent === undefined &&
    deletes >= FIRST_SYNC_DELETE_MIN && deletes > repCount * FIRST_SYNC_DELETE_SHARE
  ) {
    throw new RefusedError(
      `refusing a first sync into '${options.replica}' that would delete ${deletes} of its ${repCount} entries (mimeo has no manifest for it, so it did not make it; is the path right?); nothing was changed. To mirror into it anyway, pass --max-delete 100%`,
    );
  }
}

/**
 * Mirror `source` into `replica` once. Fatal problems (bad paths, permissions, safety
 * limits) throw typed errors before anything is written; per-file problems are in the
 * report and make `exitCode` 1.
 *
 * @example
 * ```ts
 * import { sync } from "./mod.ts";
 * const report = await sync({ source: "dist", replica: "/srv/www" });
 * console.log(report.done.copy, report.exitCode);
 * ```
 */
export async function sync(options: SyncOptions): Promise<SyncReport> {
  if (isRemoteUrl(options.replica)) {
    // (Loaded only for a remote replica: a local run never loads the network code.)
    const { syncRemote } = await import("./replica/remote/sync_remote.ts");
    return await syncRemote(options);
  }
  const t0 = performance.now();
  const dryRun = options.dryRun ?? false;
  const paths = validatePaths(options.source, options.replica, options.manifest, {
    logFile: options.logFile,
    writes: !dryRun,
  });
  const { source, replica, manifest: manifestPath } = paths;
  const filterOptions = {
    patterns: options.exclude,
    ignoreFiles: options.ignoreFiles,
    sourceRoot: source,
  };
  const exclude = await buildFilter(filterOptions);
  // The replica's side of the filter: the same, or none when excluded entries must go.
  const repExclude = options.deleteExcluded ? undefined : exclude;
  const dirTimes = options.dirTimes ?? true;
  const repFilter = repExclude && filterOptions;
  const replicaExists = prepareReplica(paths, options.replica, dryRun);
  // One run at a time into a replica (see lock.ts).
  using _lock = dryRun ? undefined : lockReplica(replica, "sync");
  const marks: Record<string, number> = {};
  let tMark = performance.now();
  const mark = (name: string) => {
    const now = performance.now();
    marks[name] = Math.round((now - tMark) * 10) / 10;
    tMark = now;
  };
  const progress = options.progress;
  progress?.({ phase: "scan", opsDone: 0, opsTotal: 0, bytesDone: 0, bytesTotal: 0 });
  const now = Date.now();
  let manifestStat: Deno.FileInfo | undefined;
  try {
    manifestStat = Deno.statSync(manifestPath);
  } catch { /* no manifest yet */ }
  const minBytes = options.workerMinManifestBytes ?? WORKER_MIN_MANIFEST_BYTES;

  // The quick path: with an index that matches the manifest, both sides are checked by
  // stat alone, and only what may differ is scanned, hashed and planned below.
  const indexPath = indexPathFor(manifestPath);
  const found: QuickStage = replicaExists && manifestStat && !options.checksum &&
      !options.only && granted("read", indexPath)
    ? await quickStage({
      source,
      replica,
      indexPath,
      manifestStat,
      exclude,
      repExclude,
      repFilter,
      now,
      dirTimes,
      minBytes,
      signal: options.signal,
      mark,
    })
    : { quick: "none", inWorker: false };
  let { ix, dirFps } = found;
  const { quick, sideOnly, quickTimes, timesDiffer, inWorker: repQuickInWorker } = found;
  const only = found.only ?? options.only;
  if (quick === "nothing") {
    const report = newReport(paths, dryRun, ix!.paths.length);
    report.digest = ix!.digest;
    report.check = "quick";
    report.scannedInWorker = repQuickInWorker;
    if (!dryRun && dirFps && (dirFps.src.length || dirFps.dst.length)) {
      if (recordDirFingerprints(manifestPath, manifestStat!, ix!, dirFps)) {
        report.manifestWritten = true;
        report.manifestWrite = "spliced";
      }
      mark("record");
    }
    mirrorRoot(report, dryRun, dirTimes);
    return finish(report, t0, marks);
  }
  // A large recorded manifest means a large replica: walk it on the second core while this
  // thread reads the manifest and walks the source.
  const repInWorker = replicaExists && !only && manifestStat && manifestStat.size >= minBytes
    ? scanInWorker({ root: replica, filter: repFilter }, options.signal)
    : undefined;
  repInWorker?.catch(() => {}); // handled where awaited
  // With the run limited to roots, `old` is only the part of the manifest inside and above
  // them (see manifestPart); `whole` gives the rest when the manifest is written.
  // The quick check read the index up to its paths; the hashes are needed from here on.
  if (ix && !loadIndexDetails(ix)) ix = undefined;
  const loaded = ix ? undefined : loadManifest(manifestPath, replicaExists ? replica : undefined);
  const roots = (ix || loaded) && only ? new Set(normalizeOnly(only)) : undefined;
  // Found once: the part is read with it now, and the manifest spliced with it at the end.
  const inIndex = ix && roots ? rootsInIndex(ix, roots) : undefined;
  const old = roots
    ? (ix ? indexPart(ix, roots, inIndex) : manifestPart(loaded!, roots))
    : ix
    ? indexToManifest(ix)
    : loaded;
  const whole = () => loaded ?? indexToManifest(ix!);
  // Entries outside the roots: counted in the run's totals, never planned.
  const outside = roots ? (ix ? ix.paths.length : loaded!.entries.size) - old!.entries.size : 0;
  mark("loadManifest");

  // Scan both sides (stat only).
  const srcRoots = roots && sideOnly ? new Set(normalizeOnly(sideOnly.src)) : roots;
  const repRoots = roots && sideOnly ? new Set(normalizeOnly(sideOnly.rep)) : roots;
  const srcScan = scanTree(source, {
    exclude,
    signal: options.signal,
    only: srcRoots && [...srcRoots],
  });
  let repScan: { tree: Tree; issues: ScanIssue[] } | undefined;
  let repScanFromWorker = false;
  if (repInWorker) {
    try {
      repScan = await repInWorker;
      repScanFromWorker = true;
    } catch (e) {
      if (options.signal?.aborted) throw e;
      logEvent("debug", {
        event: "worker-failed",
        message: `replica scan worker: ${errorMessage(e)}`,
      });
    }
  }
  repScan ??= replicaExists
    ? scanTree(replica, {
      exclude: repExclude,
      signal: options.signal,
      only: repRoots && [...repRoots],
    })
    : { tree: new Map() as Tree, issues: [] as ScanIssue[] };
  mark("scan");
  const src = srcRoots ? mergePartial(old!, srcScan.tree, srcRoots, "src") : srcScan.tree;
  const rep = repRoots ? mergePartial(old!, repScan.tree, repRoots, "dst") : repScan.tree;
  if (srcRoots && dirTimes) fillFolderTimes(src, source, quickTimes?.src);
  if (repRoots && dirTimes) fillFolderTimes(rep, replica, quickTimes?.rep);
  // Source problems decide whether anything may be deleted; replica ones are only reported.
  // Kept apart by structure, never by looking at a path.
  const issues = [...srcScan.issues];
  const replicaIssues = repScan.issues.filter((i) => i.level === "error");
  // --checksum trusts no recorded hash on either side: what the plan uses gets re-read.
  if (!options.checksum) {
    // Entries taken from the manifest (outside the re-scanned roots) carry their hashes
    // already: only freshly scanned nodes need the cache. (A file moved in the source
    // keeps its inode and is found under its old path, which is a root too: gone.)
    reuseSourceHashes(srcScan.tree, old, now);
    reuseReplicaHashes(repScan.tree, old);
  }
  mark("cache");
  const unchanged = !options.checksum && replicaIssues.length === 0 && !timesDiffer?.size &&
    !issues.some((i) => i.level === "error") && isUnchanged(src, rep, old, dirTimes);
  progress?.({ phase: "hash", opsDone: 0, opsTotal: 0, bytesDone: 0, bytesTotal: 0 });
  const hashed = unchanged ? { source: 0, replica: 0 } : await resolveHashes(
    source,
    replica,
    src,
    rep,
    options.checksum ?? false,
    issues,
    options.signal,
  );
  mark("hash");
  for (const [side, list] of [["source", issues], ["replica", replicaIssues]] as const) {
    for (const i of list) {
      logEvent(i.level, {
        event: i.level === "error" ? "scan-error" : "skip",
        side,
        path: i.path,
        code: i.code,
        message: `${side === "replica" ? "(replica) " : ""}${i.path}: ${i.message}`,
      });
    }
  }
  const sourceErrors = issues.some((i) => i.level === "error");
  // A folder holding a name that could not be read, or a special file, does not list what
  // the manifest holds: no fingerprint for it, so that every run lists it and reports the
  // entry again, as the first did.
  if (dirFps && ix) {
    dirFps = {
      src: withoutParentsOf(dirFps.src, ix, issues),
      dst: withoutParentsOf(dirFps.dst, ix, repScan.issues),
    };
  }

  // Safety: an empty source must not silently wipe a mirror.
  const repCount = outside + [...rep.keys()].filter((p) => !isTempPath(p)).length;
  if (outside + src.size === 0 && repCount > 0 && !options.allowEmptySource && !sourceErrors) {
    throw new RefusedError(
      `Source '${options.source}' is empty${
        exclude ? " after exclusions" : ""
      } but the replica holds ${repCount} entries; refusing to delete them all (is a drive unmounted?). Pass --allow-empty-source to mirror an empty folder`,
    );
  }

  // Special files in the replica (FIFOs, sockets, devices) are in no tree, only scan
  // warnings: the plan deletes them (see `replicaSpecials`).
  const specials = repScan.issues.filter((i) => i.code === "SPECIAL").map((i) => i.path);
  const p: Plan = unchanged && !specials.length
    ? { ops: [], deletesSkipped: [], bytesToCopy: 0 }
    : plan(src, rep, {
      allowDelete: !sourceErrors,
      renames: options.renames ?? true,
      dirTimes,
      dirTimesOutside: timesDiffer,
      replicaSpecials: specials,
    });
  mark("plan");
  if (p.deletesSkipped.length) {
    logEvent("warning", {
      event: "deletes-skipped",
      count: p.deletesSkipped.length,
      message:
        `not deleting ${p.deletesSkipped.length} entries from the replica as there were read errors in the source`,
    });
  }
  checkDeletes(p, repCount, options, !manifestStat && replicaExists);

  const report = newReport(paths, dryRun, outside + src.size);
  report.ops = p.ops;
  report.scanIssues = [
    ...issues,
    ...replicaIssues.map((i) => ({ ...i, side: "replica" as const })),
  ];
  report.deletesSkipped = p.deletesSkipped.length;
  report.hashed = hashed;
  report.scannedInWorker = repScanFromWorker || repQuickInWorker;
  report.check = quick === "changes" ? "quick" : "full";
  // The replica's unreadable entries stay as they are: it is not known to be a mirror.
  if (sourceErrors || replicaIssues.length) report.exitCode = ExitCode.PartialFailure;
  if (dryRun) {
    mirrorRoot(report, true, dirTimes);
    return finish(report, t0, marks);
  }

  const target = new FsTarget(replica); // (a new replica was created before the scan)
  const state: Tree = new Map(rep);
  let applied: ApplyReport = {
    done: 0,
    counts: countOps([]),
    failures: [],
    bytesCopied: 0,
    copiedByHelper: 0,
    handedBack: 0,
    stopped: false,
  };
  if (p.ops.length) {
    const opsTotal = p.ops.length;
    const progressFn: ProgressFn | undefined = progress &&
      ((d) =>
        progress({
          phase: "apply",
          opsDone: d.ops,
          opsTotal,
          bytesDone: d.bytes,
          bytesTotal: p.bytesToCopy,
        }));
    applied = await applyPlan(p, {
      sourceRoot: source,
      target,
      src,
      state,
      signal: options.signal,
      progress: progressFn,
      helperMinFiles: options.helperMinFiles,
      exclude: repExclude,
    });
  }
  mark("apply");
  report.failures = applied.failures;
  report.bytesCopied = applied.bytesCopied;
  report.stopped = applied.stopped;
  report.done = applied.counts;
  report.copiedByHelper = applied.copiedByHelper;
  if (!applied.stopped) mirrorRoot(report, false, dirTimes);

  // Record: the manifest describes the replica as it now is.
  const recorded = unchanged ? old! : recordManifest(state, src, replica);
  // (Folder times are not recorded: setting them alone leaves the manifest as it was.)
  const changed = !unchanged && (!old || applied.done > applied.counts.dirtime ||
    applied.failures.length > 0 || !manifestsEqual(old, recorded));
  const record = writeRecord({
    manifestPath,
    manifestStat,
    ix,
    roots,
    inIndex,
    old,
    whole,
    recorded,
    changed,
    dirFps,
    // With a filter, the manifest can lose entries that stay on both sides (now excluded,
    // left alone): their folders' listings no longer match it, so their recorded
    // fingerprints must go, as in a run that changed them.
    untouched: p.ops.length === 0 && p.deletesSkipped.length === 0 && !exclude,
    failures: report.failures,
  });
  report.digest = record.digest;
  report.manifestWrite = record.written;
  report.manifestWritten = record.written !== undefined;
  mark("record");
  return finish(report, t0, marks);
}

/** What the quick checks of both sides found (see {@linkcode quickStage}). */
interface QuickStage {
  /** The index (undefined: there is none, or it is stale or damaged). */
  ix?: ManifestIndex;
  /**
   * `nothing`: both sides match the manifest; `changes`: only `only` may differ; `none`:
   * no quick check (the run scans both sides in full).
   */
  quick: "none" | "changes" | "nothing";
  /** The paths that may differ, both sides' together. */
  only?: string[];
  /**
   * What each side's quick check found: only that is scanned again on that side (the rest
   * of the side matches the manifest, which is what the quick check established).
   */
  sideOnly?: { src: string[]; rep: string[] };
  /** Folder fingerprints each side's check proposes (see `recordDirFingerprints`). */
  dirFps?: DirFps;
  /** Folder times each side's check found (path → mtime). */
  quickTimes?: { src: Map<string, number>; rep: Map<string, number> };
  /** The folders whose two times differ (path → the source's). */
  timesDiffer?: Map<string, number>;
  /** Whether the replica was checked on the second core. */
  inWorker: boolean;
}

/**
 * Check both sides against the manifest index by stat alone (see quick_check.ts): the
 * source here, the replica on the second core when the manifest is large. The worker
 * starts first (it reads the index itself) so that its start-up overlaps this thread's
 * reading of the index; with no index file, it is not started.
 */
async function quickStage(q: {
  source: string;
  replica: string;
  indexPath: string;
  manifestStat: Deno.FileInfo;
  exclude?: PathFilter;
  repExclude?: PathFilter;
  repFilter?: FilterOptions;
  now: number;
  dirTimes: boolean;
  minBytes: number;
  signal?: AbortSignal;
  mark: (phase: string) => void;
}): Promise<QuickStage> {
  const { indexPath, manifestStat, now, signal } = q;
  const inWorker = manifestStat.size >= q.minBytes && exists(indexPath)
    ? quickCheckInWorker({
      root: q.replica,
      filter: q.repFilter,
      indexPath,
      manifestStat,
      now,
    }, signal).catch((e) => {
      if (signal?.aborted) throw e;
      return "failed" as const;
    })
    : undefined;
  const ix = readIndex(indexPath, manifestStat);
  if (!ix) {
    // With a stale or damaged index the worker finds it unusable too, answers and ends.
    inWorker?.catch(() => {});
    return { quick: "none", inWorker: false };
  }
  q.mark("index");
  const check = (root: string, side: "source" | "replica") =>
    quickCheck(root, ix, {
      side,
      exclude: side === "source" ? q.exclude : q.repExclude,
      now,
      signal,
    });
  const srcFound = check(q.source, "source");
  q.mark("quickSource");
  let repFound = await inWorker;
  const repInWorker = inWorker !== undefined && repFound !== "failed";
  if (!repInWorker) repFound = check(q.replica, "replica");
  q.mark("quick");
  if (!srcFound || !repFound || repFound === "failed") {
    return { ix, quick: "none", inWorker: repInWorker };
  }
  const only = [...srcFound.changed, ...repFound.changed];
  let quickTimes: QuickStage["quickTimes"];
  let timesDiffer: Map<string, number> | undefined;
  if (q.dirTimes) {
    quickTimes = {
      src: timesByPath(ix, srcFound.dirTimes),
      rep: timesByPath(ix, repFound.dirTimes),
    };
    timesDiffer = new Map();
    for (const [p, t] of quickTimes.src) {
      const r = quickTimes.rep.get(p);
      if (r !== undefined && r !== t) timesDiffer.set(p, t);
    }
  }
  return {
    ix,
    quick: only.length || timesDiffer?.size ? "changes" : "nothing",
    only,
    sideOnly: { src: srcFound.changed, rep: repFound.changed },
    dirFps: { src: srcFound.dirFps, dst: repFound.dirFps },
    quickTimes,
    timesDiffer,
    inWorker: repInWorker,
  };
}

/** A folder's own permission bits and mtime. */
export interface RootStat {
  mode: number;
  mtime: number;
}

/** The mode and mtime of the folder `p` (undefined when it cannot be stat'ed). */
export function rootStat(p: string): RootStat | undefined {
  try {
    const st = Deno.statSync(p);
    return { mode: (st.mode ?? 0) & 0o7777, mtime: mtimeMs(st) };
  } catch {
    return undefined;
  }
}

/**
 * The replica folder's own permission bits and mtime follow the source folder's, as with
 * rsync's `src/ dst/` (a private 0700 source must not become a 0755 replica that anyone
 * can list). The root is not an entry of the trees or the manifest, so these are
 * operations outside the plan, `meta .` and `dirtime .`, applied after it (or only listed,
 * in a dry run, where `planOps` are the plan's: a time is listed when they change the
 * root's listing). Pure.
 */
export function rootOps(
  want: RootStat | undefined,
  have: RootStat | undefined,
  dryRun: boolean,
  dirTimes: boolean,
  planOps: readonly Op[],
): (MetaOp | DirtimeOp)[] {
  if (want === undefined || (have === undefined && !dryRun)) return [];
  const ops: (MetaOp | DirtimeOp)[] = [];
  if (have && want.mode !== have.mode) {
    ops.push({ op: "meta", path: ".", kind: "dir", mode: want.mode });
  }
  if (dirTimes && (want.mtime !== have?.mtime || (dryRun && foldersTouched(planOps).has("")))) {
    ops.push({ op: "dirtime", path: ".", mtime: want.mtime });
  }
  return ops;
}

/** Apply {@linkcode rootOps} to the replica folder `replica`; failures are recorded. */
export function applyRootOps(
  ops: readonly (MetaOp | DirtimeOp)[],
  replica: string,
  done: Record<Op["op"], number>,
  failures: OpFailure[],
): void {
  if (!ops.length) return;
  const target = new FsTarget(replica);
  for (const op of ops) {
    try {
      if (op.op === "meta") target.setMeta(".", "dir", op.mode);
      else target.setDirTime("", op.mtime);
      target.finish();
      done[op.op]++;
      logEvent("info", eventOf(op));
    } catch (e) {
      recordFailure(failures, op.op, ".", e);
    }
  }
}

/** {@linkcode rootOps} for a local run: listed in the report, and applied unless a dry run. */
function mirrorRoot(report: SyncReport, dryRun: boolean, dirTimes: boolean): void {
  const ops = rootOps(
    rootStat(report.source),
    rootStat(report.replica),
    dryRun,
    dirTimes,
    report.ops,
  );
  if (!ops.length) return;
  report.ops = [...report.ops, ...ops];
  if (!dryRun) applyRootOps(ops, report.replica, report.done, report.failures);
}

/**
 * A first sync into an existing folder (no manifest) is refused when it would delete more
 * than this share of the folder's entries, and at least {@linkcode FIRST_SYNC_DELETE_MIN}.
 */
export const FIRST_SYNC_DELETE_SHARE = 0.5;
/** See {@linkcode FIRST_SYNC_DELETE_SHARE}. */
export const FIRST_SYNC_DELETE_MIN = 10;

/** A report of a run that did nothing yet. */
export function newReport(paths: SyncPaths, dryRun: boolean, entries: number): SyncReport {
  return {
    source: paths.source,
    replica: paths.replica,
    manifest: paths.manifest,
    dryRun,
    ops: [],
    done: countOps([]),
    failures: [],
    scanIssues: [],
    deletesSkipped: 0,
    bytesCopied: 0,
    hashed: { source: 0, replica: 0 },
    entries,
    manifestWritten: false,
    scannedInWorker: false,
    copiedByHelper: 0,
    check: "full",
    stopped: false,
    durationMs: 0,
    exitCode: ExitCode.Ok,
  };
}

/** Log the timings and the summary of a finished run (a dry run logs neither). */
export function finish(report: SyncReport, t0: number, marks: Record<string, number>): SyncReport {
  const check = report.check;
  report.durationMs = performance.now() - t0;
  if (report.dryRun) return report;
  logEvent("debug", {
    event: "timings",
    ms: marks,
    check,
    replicaScan: report.scannedInWorker ? "worker" : "main",
    copiedByHelper: report.copiedByHelper,
    manifestWrite: report.manifestWrite,
    message: `timings (ms): ${JSON.stringify(marks)}; ${check} check${
      report.scannedInWorker ? ", replica walked in a worker" : ""
    }${report.copiedByHelper ? `, ${report.copiedByHelper} files copied by the helper` : ""}${
      report.manifestWrite ? `, manifest written ${report.manifestWrite}` : ""
    }`,
  });
  if (report.failures.length) report.exitCode = ExitCode.PartialFailure;
  logEvent(report.exitCode ? "warning" : "info", {
    event: "summary",
    text: summaryText(report),
    ...summaryFields(report),
  });
  return report;
}

/** The fields of a run summary, for the log and `--json`. */
export function summaryFields(r: SyncReport): Record<string, unknown> {
  return {
    source: r.source,
    replica: r.replica,
    dryRun: r.dryRun,
    planned: r.ops.length,
    done: r.done,
    failed: r.failures.length,
    failures: r.failures,
    scanErrors: r.scanIssues.filter((i) => i.level === "error").length,
    skipped: r.scanIssues.filter((i) => i.level === "warning").length,
    deletesSkipped: r.deletesSkipped,
    bytes: r.bytesCopied,
    hashed: r.hashed,
    entries: r.entries,
    digest: r.digest,
    manifestWritten: r.manifestWritten,
    check: r.check,
    stopped: r.stopped,
    durationMs: Math.round(r.durationMs),
    rssBytes: Deno.memoryUsage().rss,
    heapUsedBytes: Deno.memoryUsage().heapUsed,
    exitCode: r.exitCode,
  };
}
