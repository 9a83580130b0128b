/**
 * Scanning on a second core: a Worker walks one tree while the main thread walks the
 * other. The tree crosses back as one `\0`-joined string of paths plus a transferred
 * `Float64Array` of numbers (structured-cloning 20,000 objects would cost ~30 ms).
 *
 * This file is both the worker's code (when it runs as a Worker) and the main thread's
 * client ({@linkcode scanInWorker}).
 *
 * @module
 */
// Imports stay minimal here: each one adds to the worker's start-up (the gitignore
// matcher alone costs ~30 ms, so it is loaded only when there are patterns).
import type { FilterOptions } from "./filter.ts";
import { readIndex } from "./manifest_index.ts";
import { quickCheck, type QuickResult } from "./quick_check.ts";
import { scanTree } from "./scan.ts";
import type { Node, ScanIssue, Tree } from "./types.ts";

/** A tree in transferable form. */
export interface EncodedTree {
  paths: string;
  /** Per entry: type (0 file, 1 dir, 2 symlink), size, mtime, mode, ino, ctime. */
  nums: Float64Array;
  targets: string[];
}

const FIELDS = 6;

/** Encode a tree for transfer. */
export function encodeTree(tree: Tree): EncodedTree {
  const paths: string[] = [];
  const nums = new Float64Array(tree.size * FIELDS);
  const targets: string[] = [];
  let i = 0;
  for (const [p, n] of tree) {
    paths.push(p);
    const o = i * FIELDS;
    if (n.type === "file") {
      nums[o] = 0;
      nums[o + 1] = n.size;
      nums[o + 2] = n.mtime;
      nums[o + 3] = n.mode;
      nums[o + 4] = n.fp?.[0] ?? 0;
      nums[o + 5] = n.fp?.[1] ?? 0;
    } else if (n.type === "dir") {
      nums[o] = 1;
      nums[o + 2] = n.mtime ?? NaN;
      nums[o + 3] = n.mode;
    } else {
      nums[o] = 2;
      targets.push(n.target);
    }
    i++;
  }
  return { paths: paths.join("\0"), nums, targets };
}

/** Decode a transferred tree. */
export function decodeTree(e: EncodedTree): Tree {
  const tree: Tree = new Map();
  if (e.paths === "" && e.nums.length === 0) return tree;
  const paths = e.paths.split("\0");
  let t = 0;
  for (let i = 0; i < paths.length; i++) {
    const o = i * FIELDS;
    const kind = e.nums[o];
    let node: Node;
    if (kind === 0) {
      node = {
        type: "file",
        size: e.nums[o + 1],
        mtime: e.nums[o + 2],
        mode: e.nums[o + 3],
        sha256: undefined,
        fp: [e.nums[o + 4], e.nums[o + 5]],
        hashedAt: undefined,
      };
    } else if (kind === 1) {
      const mtime = e.nums[o + 2];
      node = Number.isNaN(mtime)
        ? { type: "dir", mode: e.nums[o + 3] }
        : { type: "dir", mode: e.nums[o + 3], mtime };
    } else node = { type: "symlink", target: e.targets[t++] };
    tree.set(paths[i], node);
  }
  return tree;
}

/** What the worker is asked: a scan, or a quick check against an index. */
type Request = ScanRequest | QuickRequest;

/** A scan of `root`. */
interface ScanRequest {
  kind?: "scan";
  root: string;
  /** Absent when nothing is excluded. */
  filter?: FilterOptions;
  only?: string[];
}

/** A quick check of the replica `root` against an index (see `quick_check.ts`). */
interface QuickRequest {
  kind: "quick";
  root: string;
  /** Absent when nothing is excluded. */
  filter?: FilterOptions;
  /**
   * The index file (read here rather than sent: a copy of it would stay on both sides),
   * and the stat of the manifest it must belong to; a different index is not used.
   */
  indexPath: string;
  manifestStat: Deno.FileInfo;
  now: number;
}

/** What the worker answers. */
type ScanAnswer =
  | { ok: true; tree: EncodedTree; issues: ScanIssue[] }
  | { ok: true; quick: QuickResult | undefined }
  | { ok: false; message: string };

function startWorker<T>(
  req: Request,
  signal: AbortSignal | undefined,
  take: (a: ScanAnswer & { ok: true }) => T,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(import.meta.url, { type: "module", name: "mimeo-scan" });
    const onAbort = () => {
      worker.terminate();
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    const done = () => {
      signal?.removeEventListener("abort", onAbort);
      worker.terminate();
    };
    worker.onmessage = (ev: MessageEvent<ScanAnswer>) => {
      done();
      const a = ev.data;
      if (!a.ok) return reject(new Error(a.message));
      try {
        resolve(take(a));
      } catch (e) {
        reject(e);
      }
    };
    worker.onerror = (ev) => {
      ev.preventDefault();
      done();
      reject(new Error(ev.message));
    };
    worker.postMessage(req);
  });
}

/**
 * Quick-check the replica in a Worker: what {@linkcode quickCheck} found, or undefined
 * when the check gave up.
 */
export function quickCheckInWorker(
  req: Omit<QuickRequest, "kind">,
  signal?: AbortSignal,
): Promise<QuickResult | undefined> {
  return startWorker(
    { kind: "quick", ...req },
    signal,
    (a) => "quick" in a ? a.quick : undefined,
  );
}

/**
 * Scan `root` in a Worker. Resolves with the tree and issues; rejects if the worker
 * fails; terminates the worker when `signal` aborts.
 */
export function scanInWorker(
  req: ScanRequest,
  signal?: AbortSignal,
): Promise<{ tree: Tree; issues: ScanIssue[] }> {
  return startWorker(req, signal, (a) => {
    if (!("tree" in a)) throw new Error("unexpected answer from the scan worker");
    return { tree: decodeTree(a.tree), issues: a.issues };
  });
}

// Worker side.
interface WorkerScope {
  onmessage: ((ev: MessageEvent<Request>) => void) | null;
  postMessage(message: unknown, transfer?: Transferable[]): void;
}
// deno-lint-ignore no-explicit-any
const WorkerGlobal = (globalThis as any).WorkerGlobalScope;
if (WorkerGlobal !== undefined && globalThis instanceof WorkerGlobal) {
  const scope = globalThis as unknown as WorkerScope;
  scope.onmessage = async (ev) => {
    try {
      const req = ev.data;
      const exclude = req.filter && await (await import("./filter.ts")).buildFilter(req.filter);
      if (req.kind === "quick") {
        const ix = readIndex(req.indexPath, req.manifestStat);
        const quick = ix &&
          quickCheck(req.root, ix, {
            side: "replica",
            exclude,
            now: req.now,
          });
        scope.postMessage({ ok: true, quick } satisfies ScanAnswer);
        return;
      }
      const { root, only } = req;
      const r = scanTree(root, { exclude, only });
      const tree = encodeTree(r.tree);
      const answer: ScanAnswer = { ok: true, tree, issues: r.issues };
      scope.postMessage(answer, [tree.nums.buffer as ArrayBuffer]);
    } catch (e) {
      const answer: ScanAnswer = { ok: false, message: (e as Error).message ?? String(e) };
      scope.postMessage(answer);
    }
  };
}
