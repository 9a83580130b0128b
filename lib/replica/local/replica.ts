/**
 * The replica side of a run on a local folder, as steps: what the replica holds (its
 * manifest, checked against the folder), and apply + record. `mimeo serve` runs exactly
 * these for a remote client; a local sync runs the same apply and record code
 * (`applyPlan`, `recordManifest`, `writeRecord`) behind its quick checks.
 *
 * @module
 */
import { applyPlan, type ApplyReport, type OpFailure } from "../../apply.ts";
import { hashNode } from "../../hash.ts";
import { logEvent } from "../../log.ts";
import type { Manifest } from "../../manifest.ts";
import type { Plan } from "../../plan.ts";
import { recordManifest, writeRecord } from "../../record.ts";
import { type PathFilter, reuseReplicaHashes, scanTree } from "../../scan.ts";
import { loadManifest } from "../../sync.ts";
import { FsTarget, type Target, yieldToEventLoop } from "../../target_fs.ts";
import type { FileNode, ScanIssue, Tree } from "../../types.ts";

/** What a local replica holds, checked against its folder. */
export interface ReplicaState {
  /** Its entries; every file has its hash (trusted from the manifest, or read now). */
  tree: Tree;
  /** The manifest beside it, if there was a valid one. */
  old?: Manifest;
  /** The manifest file's stat before the run. */
  manifestStat?: Deno.FileInfo;
  /** Paths that could not be read, and special files (`code: "SPECIAL"`). */
  issues: ScanIssue[];
  /** Files read to hash them. */
  hashed: number;
}

/** Options for {@linkcode readReplicaState}. */
export interface ReadStateOptions {
  /** The run's exclude filter (replica side). */
  exclude?: PathFilter;
  /**
   * Trust no recorded hash.
   * @default false
   */
  checksum?: boolean;
  signal?: AbortSignal;
}

/**
 * Read what the replica at `root` holds: its manifest, a stat-only scan of the folder, the
 * manifest's hashes for files whose stat still matches what mimeo recorded, and a fresh
 * hash for every other file (changed behind mimeo's back, or no manifest).
 */
export async function readReplicaState(
  root: string,
  manifestPath: string,
  o: ReadStateOptions = {},
): Promise<ReplicaState> {
  let manifestStat: Deno.FileInfo | undefined;
  try {
    manifestStat = Deno.statSync(manifestPath);
  } catch { /* none yet */ }
  const old = manifestStat ? loadManifest(manifestPath, root) : undefined;
  const { tree, issues } = scanTree(root, { exclude: o.exclude, signal: o.signal });
  if (!o.checksum) reuseReplicaHashes(tree, old);
  let hashed = 0;
  let last = performance.now();
  for (const [p, n] of tree) {
    if (n.type !== "file" || n.sha256) continue;
    const rn: FileNode = { ...n };
    hashed++;
    const issue = hashNode(`${root}/${p}`, p, rn);
    if (issue) issues.push(issue);
    else tree.set(p, rn);
    if (performance.now() - last > 50) {
      o.signal?.throwIfAborted();
      await yieldToEventLoop();
      last = performance.now();
    }
  }
  return { tree, old, manifestStat, issues, hashed };
}

/** Options for {@linkcode applyAndRecord}. */
export interface ApplyRecordOptions {
  root: string;
  manifestPath: string;
  state: ReplicaState;
  /** The source's entries (the manifest records their fingerprints for the next run). */
  src: Tree;
  /** Where content comes from (see `ApplyOptions.copy`), written through `target`. */
  copy: (path: string, target: Target) => Promise<FileNode>;
  exclude?: PathFilter;
  signal?: AbortSignal;
}

/** What {@linkcode applyAndRecord} did. */
export interface ApplyRecordResult {
  applied: ApplyReport;
  digest?: string;
  manifestWritten: boolean;
  /** The manifest as recorded. */
  recorded: Manifest;
}

/**
 * Apply a plan to the replica, then record its manifest: the same apply and record code a
 * local sync runs. A failed operation is a failure in the result, never an exception; a
 * manifest that cannot be written is one too.
 */
export async function applyAndRecord(p: Plan, o: ApplyRecordOptions): Promise<ApplyRecordResult> {
  const { root, state } = o;
  const current: Tree = new Map(state.tree);
  const target = new FsTarget(root);
  const applied = await applyPlan(p, {
    sourceRoot: "",
    target,
    src: o.src,
    state: current,
    signal: o.signal,
    exclude: o.exclude,
    copy: (path) => o.copy(path, target),
  });
  const recorded = recordManifest(current, o.src, root);
  const failures: OpFailure[] = applied.failures;
  const record = writeRecord({
    manifestPath: o.manifestPath,
    manifestStat: state.manifestStat,
    old: state.old,
    whole: () => state.old!,
    recorded,
    changed: true,
    untouched: false,
    failures,
  });
  if (record.written === undefined) {
    logEvent("debug", { event: "manifest-not-written", path: o.manifestPath });
  }
  return {
    applied,
    digest: record.digest,
    manifestWritten: record.written !== undefined,
    recorded,
  };
}
