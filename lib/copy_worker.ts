/**
 * Copying on a second core. During a long run of new and changed files, a Worker takes
 * files from the same list as the main thread: each side claims the next file with one
 * atomic add on a shared counter, so the two share the work whatever the file sizes.
 * Measured on the 20,000-file benchmark tree: a first sync spends most of its time in
 * per-file system calls (for each `open`, Deno's permission layer alone does a readlink
 * per path component), which a second thread halves (see bench/README.md).
 *
 * The Worker does only the common case, the way {@linkcode FsTarget.writeFile} does it:
 * a temporary file created with O_EXCL in a folder the main thread has already checked,
 * copy and hash, mode and mtime, the source re-checked by stat, rename into place. Any
 * other outcome (a failure, a source that changed, a large file) is handed back, and the
 * main thread does that file again on its usual path, with its retries, permission fixes
 * and error reporting. Results come back in batches; the main thread records them.
 *
 * This file is both the Worker's code and the main thread's client ({@linkcode CopyHelper}).
 *
 * @module
 */
import { sameStat } from "./scan.ts";
import { commitTemp, KERNEL_COPY_MIN_BYTES, removeQuietly, writeTempSync } from "./target_fs.ts";
import type { Fingerprint } from "./types.ts";

/** One file for the helper: where it goes and what the source was when it was scanned. */
export interface CopyJob {
  path: string;
  /** Temporary path (relative to the replica root) for the new content. */
  tmp: string;
  size: number;
  mtime: number;
  mode: number;
  /** The source's fingerprint when scanned, if known. */
  fp?: Fingerprint;
}

/** A file the helper copied and renamed into place. */
export interface CopyDone {
  /** Index of the job. */
  i: number;
  sha256: string;
  size: number;
  /** The replica file's fingerprint. */
  fp: Fingerprint;
  /** When the copy started (for the source's racy-timestamp rule). */
  startedAt: number;
  /** When it was renamed into place. */
  doneAt: number;
  /** The replica file's birth time (ms), when the file system reports one. */
  bornAt?: number;
}

/** Numbers per job in the transferred array: size, mtime, mode, ino, ctime. */
const FIELDS = 5;
/** Shared control words: [0] next job to claim, [1] stop flag. */
const NEXT = 0, STOP = 1;
/** The helper posts its results at least this often (ms), and after this many. */
const POST_MS = 20, POST_COUNT = 64;

interface Request {
  root: string;
  sourceRoot: string;
  ctrl: SharedArrayBuffer;
  paths: string;
  nums: Float64Array;
}

type Answer = { done: CopyDone[]; handBack: number[]; last: boolean };

/**
 * The main thread's side: start a Worker on `jobs`, claim jobs with {@linkcode claim},
 * get the Worker's results through `onDone`, and await {@linkcode finished} for the jobs
 * it handed back (or never reported, if it failed).
 */
export class CopyHelper {
  #ctrl = new Int32Array(new SharedArrayBuffer(8));
  #worker: Worker;
  /** 1 = claimed here, 2 = reported by the helper. */
  #state: Uint8Array;
  #handBack: number[] = [];
  /** Resolves with the jobs this thread must do after all. */
  readonly finished: Promise<number[]>;

  /**
   * @param root the replica root (absolute); every job's folder already checked
   * @param sourceRoot the source root (absolute)
   * @param onDone called (on this thread, between its turns) for each finished job
   */
  constructor(
    root: string,
    sourceRoot: string,
    readonly jobs: readonly CopyJob[],
    onDone: (d: CopyDone) => void,
  ) {
    this.#state = new Uint8Array(jobs.length);
    const nums = new Float64Array(jobs.length * FIELDS);
    jobs.forEach((j, i) => {
      nums.set([j.size, j.mtime, j.mode, j.fp?.[0] ?? -1, j.fp?.[1] ?? -1], i * FIELDS);
    });
    const paths = jobs.map((j) => `${j.path}\0${j.tmp}`).join("\0");
    this.#worker = new Worker(import.meta.url, { type: "module", name: "mimeo-copy" });
    this.finished = new Promise((resolve) => {
      const end = () => {
        this.#worker.terminate();
        // Whatever the helper did not report (it failed, or was stopped) falls back here.
        for (let i = 0; i < this.#state.length; i++) {
          if (this.#state[i] === 0) this.#handBack.push(i);
        }
        resolve(this.#handBack);
      };
      this.#worker.onmessage = (ev: MessageEvent<Answer>) => {
        for (const d of ev.data.done) {
          this.#state[d.i] = 2;
          onDone(d);
        }
        for (const i of ev.data.handBack) {
          this.#state[i] = 2;
          this.#handBack.push(i);
        }
        if (ev.data.last) end();
      };
      this.#worker.onerror = (ev) => {
        ev.preventDefault();
        Atomics.store(this.#ctrl, STOP, 1);
        end();
      };
    });
    const req: Request = {
      root,
      sourceRoot,
      ctrl: this.#ctrl.buffer as SharedArrayBuffer,
      paths,
      nums,
    };
    this.#worker.postMessage(req, [nums.buffer]);
  }

  /** The next job for this thread, or undefined when all are taken. */
  claim(): number | undefined {
    const i = Atomics.add(this.#ctrl, NEXT, 1);
    if (i >= this.jobs.length) return undefined;
    this.#state[i] = 1;
    return i;
  }

  /** Ask the helper to stop after its current file (a stopped run). */
  stop(): void {
    Atomics.store(this.#ctrl, STOP, 1);
  }
}

// Worker side.
interface WorkerScope {
  onmessage: ((ev: MessageEvent<Request>) => void) | null;
  postMessage(message: Answer): void;
}

/** Copy job `i` the usual way; undefined hands it back to the main thread. */
function copyOne(
  req: Request,
  i: number,
  path: string,
  tmpRel: string,
): CopyDone | undefined {
  const o = i * FIELDS;
  const [size, mtime, mode, ino, ctime] = req.nums.subarray(o, o + FIELDS);
  if (size >= KERNEL_COPY_MIN_BYTES) return undefined; // sliced and interruptible there
  const src = `${req.sourceRoot}/${path}`;
  const tmp = `${req.root}/${tmpRel}`;
  const startedAt = Date.now();
  try {
    const w = writeTempSync(tmp, src, { mode, mtime });
    // Did the source change while it was copied? (See `copyFile` in apply.ts.)
    const after = Deno.lstatSync(src);
    if (
      !sameStat({ size, mtime, fp: ino >= 0 ? [ino, ctime] : undefined }, after) || w.size !== size
    ) {
      removeQuietly(tmp);
      return undefined;
    }
    const fp = commitTemp(tmp, `${req.root}/${path}`, w.st);
    return {
      i,
      sha256: w.sha256,
      size: w.size,
      fp,
      startedAt,
      doneAt: Date.now(),
      bornAt: w.st.birthtime?.getTime(),
    };
  } catch {
    return undefined; // writeTempSync and commitTemp leave no temporary file behind
  }
}

// deno-lint-ignore no-explicit-any
const WorkerGlobal = (globalThis as any).WorkerGlobalScope;
if (WorkerGlobal !== undefined && globalThis instanceof WorkerGlobal) {
  const scope = globalThis as unknown as WorkerScope;
  scope.onmessage = (ev) => {
    const req = ev.data;
    const ctrl = new Int32Array(req.ctrl);
    const n = req.nums.length / FIELDS;
    const strings = n ? req.paths.split("\0") : [];
    let done: CopyDone[] = [];
    let handBack: number[] = [];
    let posted = performance.now();
    for (;;) {
      if (Atomics.load(ctrl, STOP)) break;
      const i = Atomics.add(ctrl, NEXT, 1);
      if (i >= n) break;
      const d = copyOne(req, i, strings[2 * i], strings[2 * i + 1]);
      if (d) done.push(d);
      else handBack.push(i);
      if (done.length + handBack.length >= POST_COUNT || performance.now() - posted > POST_MS) {
        scope.postMessage({ done, handBack, last: false });
        done = [];
        handBack = [];
        posted = performance.now();
      }
    }
    scope.postMessage({ done, handBack, last: true });
  };
}
