/**
 * Execute a plan against a {@linkcode Target}. The only stage that writes.
 *
 * Every operation yields a result; a failed operation is logged and the run goes on.
 * The replica tree passed in is updated with what really happened (the hashes of the
 * bytes actually written, the new fingerprints), so the manifest written afterwards
 * records only successes.
 *
 * @module
 */
import { errorCode, errorMessage } from "./errors.ts";
import { type LogEvent, logEvent } from "./log.ts";
import { modeString } from "./manifest.ts";
import { CopyHelper, type CopyJob } from "./copy_worker.ts";
import { applyOp, type CopyOp, countOps, type Op, type Plan } from "./plan.ts";
import { fingerprintOf, nodeFromStat, type PathFilter, sameStat } from "./scan.ts";
import {
  KERNEL_COPY_MIN_BYTES,
  type PendingWrite,
  type Target,
  yieldToEventLoop,
} from "./target_fs.ts";
import { type FileNode, parentOf, type Tree } from "./types.ts";

/** How often a source file that keeps changing during its copy is tried. */
export const COPY_ATTEMPTS = 3;

/**
 * A run of content operations gets a helper thread from this many small copies on: its
 * start-up (24–46 ms until it answers) must be paid back. At 400 copies on ext4 it is
 * neutral, on a whole first sync it more than halves the time (bench/README.md).
 */
export const HELPER_MIN_FILES = 256;

/** A target whose copies a helper thread can share ({@linkcode FsTarget}). */
interface HelperTarget {
  prepareDir(dir: string): void;
  tempPathFor(path: string): string;
}

function asHelperTarget(t: Target): HelperTarget | undefined {
  const h = t as Partial<HelperTarget>;
  return h.prepareDir && h.tempPathFor ? h as HelperTarget : undefined;
}

/** A copy the helper thread may take (larger files go through the kernel, on this thread). */
function isSmallCopy(op: Op): op is CopyOp {
  return (op.op === "copy" || op.op === "update") && op.size < KERNEL_COPY_MIN_BYTES;
}

/** Operations that touch one path each, in folders that already exist. */
function isContentOp(op: Op): boolean {
  return op.op === "copy" || op.op === "update" || op.op === "symlink" ||
    (op.op === "meta" && op.kind === "file");
}

/** One failed operation. */
export interface OpFailure {
  op: Op["op"] | "manifest";
  path: string;
  code: string;
  message: string;
}

/**
 * Record a failed operation: push it onto `failures` and log it as an `error` event (with
 * `fields` added, e.g. a rename's `from`). `what` prefixes the error's message.
 */
export function recordFailure(
  failures: OpFailure[],
  op: OpFailure["op"],
  path: string,
  e: unknown,
  what = "",
  fields: Record<string, unknown> = {},
): void {
  const f: OpFailure = { op, path, code: errorCode(e), message: `${what}${errorMessage(e)}` };
  failures.push(f);
  logEvent("error", { event: "error", op, path, ...fields, code: f.code, error: f.message });
}

/** Progress callback: called after each operation with running totals. */
export type ProgressFn = (done: { ops: number; bytes: number }) => void;

/** Options for {@linkcode applyPlan}. */
export interface ApplyOptions {
  /** Absolute path of the source folder. */
  sourceRoot: string;
  target: Target;
  /** The source tree; copied files get their hash and fresh stat recorded in it. */
  src: Tree;
  /** The replica tree; updated in place with each successful operation. */
  state: Tree;
  /** Stops the run between operations (and inside large copies). */
  signal?: AbortSignal;
  progress?: ProgressFn;
  /**
   * Share runs of at least this many small copies with a helper thread.
   * @default HELPER_MIN_FILES (Infinity: never)
   */
  helperMinFiles?: number;
  /**
   * The run's exclude filter: a replica folder to remove that still holds only excluded
   * entries (left alone, so never planned) is kept, with a warning, not a failure.
   */
  exclude?: PathFilter;
  /**
   * Where content comes from when it is not `sourceRoot` (a server placing uploaded or
   * already held content): writes the file for a `copy`/`update` of `path` into the
   * target, checks it, and returns the replica's new node. Default: copy from the source.
   */
  copy?: (path: string) => Promise<FileNode>;
}

/** What {@linkcode applyPlan} did. */
export interface ApplyReport {
  done: number;
  /** Successful operations by kind. */
  counts: Record<Op["op"], number>;
  failures: OpFailure[];
  bytesCopied: number;
  /** Files copied by the helper thread (included in `counts`). */
  copiedByHelper: number;
  /** Files the helper thread handed back to this one (copied here, or failed here). */
  handedBack: number;
  /** True when the signal stopped the run before the end of the plan. */
  stopped: boolean;
}

/**
 * Copy one source file into the replica, hashing while copying. The source is re-stat'ed
 * after the copy; if it changed meanwhile, the copy is discarded and tried again.
 * Returns the replica's new node; updates the source node with the hash of what was copied.
 */
async function copyFile(
  path: string,
  o: ApplyOptions,
): Promise<FileNode> {
  const srcAbs = `${o.sourceRoot}/${path}`;
  let expect = o.src.get(path) as FileNode;
  for (let attempt = 1;; attempt++) {
    const startedAt = Date.now();
    const w: PendingWrite = await o.target.writeFile(path, srcAbs, expect, o.signal);
    let after: Deno.FileInfo;
    // Did the source change while it was copied? (lstat by path: cheaper than fstat in
    // Deno, and a file replaced meanwhile shows as a new inode: copied again.)
    try {
      after = Deno.lstatSync(srcAbs);
    } catch (e) {
      w.discard();
      throw e;
    }
    if (!w.changed && sameStat(expect, after) && w.size === expect.size) {
      const fp = w.commit();
      const srcNode: FileNode = { ...expect, sha256: w.sha256, hashedAt: startedAt };
      o.src.set(path, srcNode);
      return { ...expect, sha256: w.sha256, fp, hashedAt: Date.now(), bornAt: w.bornAt };
    }
    w.discard();
    if (!after.isFile) throw new Error("source file was replaced while being copied");
    if (attempt >= COPY_ATTEMPTS) {
      throw Object.assign(
        new Error(`source file kept changing while being copied (${attempt} attempts)`),
        { code: "CHANGING" },
      );
    }
    expect = nodeFromStat(after, srcAbs) as FileNode;
  }
}

/** The log event describing an operation. */
export function eventOf(op: Op): LogEvent {
  switch (op.op) {
    case "rename":
      return { event: "rename", path: op.to, from: op.from, kind: op.kind };
    case "copy":
    case "update":
      return { event: op.op, path: op.path, bytes: op.size };
    case "meta":
      return {
        event: "meta",
        path: op.path,
        kind: op.kind,
        ...(op.mode !== undefined ? { mode: modeString(op.mode) } : {}),
        ...(op.mtime !== undefined ? { mtime: new Date(op.mtime).toISOString() } : {}),
      };
    case "symlink":
      return { event: "symlink", path: op.path, target: op.target };
    case "mkdir":
      return { event: "mkdir", path: op.path };
    case "delete":
      return { event: "delete", path: op.path, kind: op.kind };
    case "rmdir":
      return { event: "rmdir", path: op.path };
    case "dirtime":
      return { event: "dirtime", path: op.path, mtime: new Date(op.mtime).toISOString() };
  }
}

/**
 * Run every operation of a plan in order. Never throws for a single operation's failure.
 *
 * @example
 * ```ts
 * const report = await applyPlan(p, { sourceRoot, target, src, state });
 * if (report.failures.length) console.error(report.failures);
 * ```
 */
export async function applyPlan(p: Plan, o: ApplyOptions): Promise<ApplyReport> {
  const { target, state, signal } = o;
  const failures: OpFailure[] = [];
  let done = 0;
  const counts = countOps([]);
  let bytesCopied = 0;
  let copiedByHelper = 0;
  let handedBackTotal = 0;
  let stopped = false;
  let lastYield = performance.now();

  /** Folders not removed because they hold excluded entries (see `holdsOnlyExcluded`). */
  const kept = new Set<string>();
  /**
   * Folders where an operation failed: their time is left for the next run, which does
   * that operation again (one error per failure, not a second one for its folder).
   */
  const failedIn = new Set<string>();
  let timesLeft = 0;
  /** Operations finished either way, for the progress line. */
  const opsSeen = () => done + failures.length + kept.size + timesLeft;

  const succeeded = (op: Op, ev: LogEvent, node?: FileNode) => {
    applyOp(state, op, node);
    done++;
    counts[op.op]++;
    logEvent("info", ev);
    o.progress?.({ ops: opsSeen(), bytes: bytesCopied });
  };

  /** Whether every entry left in the replica folder `dir` is excluded, or such a folder. */
  const holdsOnlyExcluded = (dir: string): boolean => {
    const exclude = o.exclude;
    if (!exclude) return false;
    try {
      for (const d of Deno.readDirSync(`${target.root}/${dir}`)) {
        const p = `${dir}/${d.name}`;
        if (!exclude(p, d.isDirectory) && !kept.has(p)) return false;
      }
      return true;
    } catch {
      return false;
    }
  };

  /** Run one operation; false when the signal stopped it. */
  const runOp = async (op: Op): Promise<boolean> => {
    try {
      let node: FileNode | undefined;
      const ev = eventOf(op);
      switch (op.op) {
        case "mkdir":
          target.mkdir(op.path, op.mode);
          break;
        case "rename":
          target.rename(op.from, op.to);
          if (op.kind === "file") {
            const old = state.get(op.from) as FileNode;
            const st = Deno.lstatSync(`${target.root}/${op.to}`);
            node = {
              ...old,
              fp: fingerprintOf(st),
              hashedAt: Date.now(),
              bornAt: st.birthtime?.getTime(),
            };
          }
          break;
        case "copy":
        case "update":
          node = o.copy ? await o.copy(op.path) : await copyFile(op.path, o);
          bytesCopied += node.size;
          ev.bytes = node.size;
          ev.sha256 = node.sha256;
          break;
        case "meta": {
          const fp = target.setMeta(op.path, op.kind, op.mode, op.mtime);
          const old = state.get(op.path);
          if (old?.type === "file") {
            node = {
              ...old,
              mode: op.mode ?? old.mode,
              mtime: op.mtime ?? old.mtime,
              fp,
              hashedAt: Date.now(),
              bornAt: undefined,
            };
          }
          break;
        }
        case "symlink":
          target.symlink(op.path, op.target);
          break;
        case "delete":
          target.remove(op.path);
          break;
        case "rmdir":
          target.rmdir(op.path);
          break;
        case "dirtime":
          if (failedIn.has(op.path)) {
            timesLeft++;
            logEvent("debug", {
              event: "dirtime-left",
              path: op.path,
              message:
                `folder time of '${op.path}/' left for the next run (an operation in it failed)`,
            });
            return true;
          }
          target.setDirTime(op.path, op.mtime);
          break;
      }
      succeeded(op, ev, node);
    } catch (e) {
      if (signal?.aborted && e === signal.reason) return false;
      if (op.op === "rmdir" && holdsOnlyExcluded(op.path)) {
        kept.add(op.path);
        logEvent("warning", {
          event: "kept",
          path: op.path,
          message:
            `kept folder '${op.path}/': it holds entries excluded from the mirror, which stay as they are`,
        });
        o.progress?.({ ops: opsSeen(), bytes: bytesCopied });
        return true;
      }
      const path = op.op === "rename" ? op.to : op.path;
      recordFailure(failures, op.op, path, e, "", op.op === "rename" ? { from: op.from } : {});
      // (A failed mode or time change leaves its folder's listing as it was.)
      if (op.op !== "meta" && op.op !== "dirtime") failedIn.add(parentOf(path));
      if (op.op === "rename") failedIn.add(parentOf(op.from));
      o.progress?.({ ops: opsSeen(), bytes: bytesCopied });
    }
    // Signals, timers and the copy helper's results get a turn now and then.
    if (performance.now() - lastYield > 50) {
      await yieldToEventLoop();
      lastYield = performance.now();
    }
    return true;
  };

  /**
   * A run of content operations (copies, updates, file metadata, symlinks: all on
   * different paths, in folders that exist) with many small copies: a helper thread takes
   * copies from the same list while this thread does the rest and then copies too.
   */
  const runShared = async (
    run: Op[],
    helperTarget: HelperTarget,
    deletes: Op[],
  ): Promise<boolean> => {
    const jobs: CopyJob[] = [];
    const jobOps: CopyOp[] = [];
    const here: Op[] = [];
    for (const op of run) {
      if (isSmallCopy(op)) {
        try {
          helperTarget.prepareDir(parentOf(op.path));
        } catch {
          here.push(op); // reported on the usual path
          continue;
        }
        const n = o.src.get(op.path) as FileNode;
        jobs.push({
          path: op.path,
          tmp: helperTarget.tempPathFor(op.path),
          size: n.size,
          mtime: n.mtime,
          mode: n.mode,
          fp: n.fp,
        });
        jobOps.push(op);
      } else here.push(op);
    }
    const helper = new CopyHelper(target.root, o.sourceRoot, jobs, (d) => {
      const op = jobOps[d.i];
      const expect = o.src.get(op.path) as FileNode;
      o.src.set(op.path, { ...expect, sha256: d.sha256, hashedAt: d.startedAt });
      bytesCopied += d.size;
      copiedByHelper++;
      succeeded(op, { ...eventOf(op), bytes: d.size, sha256: d.sha256 }, {
        ...expect,
        sha256: d.sha256,
        fp: d.fp,
        hashedAt: d.doneAt,
        bornAt: d.bornAt,
      });
    });
    let running = true;
    for (const op of [...here, ...deletes]) {
      if (signal?.aborted || !(running = await runOp(op))) break;
    }
    for (let i: number | undefined; running && (i = helper.claim()) !== undefined;) {
      if (signal?.aborted || !(running = await runOp(jobOps[i]))) break;
    }
    if (!running || signal?.aborted) helper.stop();
    const handedBack = await helper.finished;
    if (!running || signal?.aborted) return false;
    handedBackTotal += handedBack.length;
    for (const i of handedBack) {
      if (signal?.aborted || !(await runOp(jobOps[i]))) return false;
    }
    return true;
  };

  const ops = p.ops;
  // (The helper thread copies from the source folder: not for content from elsewhere.)
  const helperTarget = o.copy ? undefined : asHelperTarget(target);
  /** Plan entries already done, ahead of their turn. */
  const doneEarly = new Set<number>();
  for (let k = 0; k < ops.length; k++) {
    if (doneEarly.has(k)) continue;
    if (signal?.aborted) {
      stopped = true;
      break;
    }
    if (helperTarget && isContentOp(ops[k])) {
      let end = k;
      let small = 0;
      for (; end < ops.length && isContentOp(ops[end]); end++) if (isSmallCopy(ops[end])) small++;
      if (small >= (o.helperMinFiles ?? HELPER_MIN_FILES)) {
        // The file deletions later in the plan (step 6) are done by this thread while the
        // helper copies, instead of after the copies with one core idle. They touch only
        // paths the source does not have, never a folder, so no copy depends on them, and
        // the folders they empty are still removed after them.
        const deletes: Op[] = [];
        for (let j = end; j < ops.length; j++) {
          if (ops[j].op === "delete" && !doneEarly.has(j)) {
            deletes.push(ops[j]);
            doneEarly.add(j);
          }
        }
        if (!(await runShared(ops.slice(k, end), helperTarget, deletes))) {
          stopped = true;
          break;
        }
        k = end - 1;
        continue;
      }
    }
    if (!(await runOp(ops[k]))) {
      stopped = true;
      break;
    }
  }
  try {
    target.finish();
  } catch (e) {
    failures.push({ op: "meta", path: ".", code: errorCode(e), message: errorMessage(e) });
  }
  return {
    done,
    counts,
    failures,
    bytesCopied,
    copiedByHelper,
    handedBack: handedBackTotal,
    stopped,
  };
}
