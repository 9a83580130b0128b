/**
 * The planner: a pure function from (source tree, replica tree) to an ordered list of
 * operations that makes the replica equal to the source. No I/O happens here.
 *
 * Order of the plan, each step simulated on a virtual copy of the replica so that every
 * operation is valid at the moment it runs:
 *
 * 0. special files found in the replica (in no tree) are deleted;
 * 1. folder renames (a folder moved in the source becomes one rename in the replica);
 * 2. file renames (content already in the replica under a path that goes away);
 * 3. type conflicts (a folder where the source has a file, or the reverse) are cleared;
 * 4. new folders, parents first;
 * 5. file content (`copy`, `update`), metadata-only changes (`meta`), symlinks;
 * 6. deletions, deepest first;
 * 7. folder permission changes and folder times, deepest first: a folder's mtime is set
 *    to the source's when it differs or when an operation above added, removed or renamed
 *    an entry in it (which sets it to the time of the run).
 *
 * @module
 */
import { comparePaths } from "./manifest.ts";
import {
  depthOf,
  type DirNode,
  type FileNode,
  isWithin,
  type Node,
  parentOf,
  type Tree,
} from "./types.ts";

/** Create a folder. */
export interface MkdirOp {
  op: "mkdir";
  path: string;
  mode: number;
}
/** Rename a replica entry (a file or a whole folder) instead of copying it again. */
export interface RenameOp {
  op: "rename";
  from: string;
  to: string;
  kind: "file" | "dir";
}
/** Copy a file from the source: `copy` for a new path, `update` to replace content. */
export interface CopyOp {
  op: "copy" | "update";
  path: string;
  size: number;
  mtime: number;
  mode: number;
  /** Known source hash; absent when it will be computed while copying. */
  sha256?: string;
}
/** Change mode and/or mtime without touching content. */
export interface MetaOp {
  op: "meta";
  path: string;
  kind: "file" | "dir";
  mode?: number;
  mtime?: number;
}
/** Create or replace a symlink. */
export interface SymlinkOp {
  op: "symlink";
  path: string;
  target: string;
}
/** Delete a file or symlink. */
export interface DeleteOp {
  op: "delete";
  path: string;
  kind: "file" | "symlink";
}
/** Remove an (emptied) folder. */
export interface RmdirOp {
  op: "rmdir";
  path: string;
}

/** Set a folder's mtime to the source's (as `rsync -a` does), after everything inside it. */
export interface DirtimeOp {
  op: "dirtime";
  path: string;
  mtime: number;
}

/** One planned operation. */
export type Op =
  | MkdirOp
  | RenameOp
  | CopyOp
  | MetaOp
  | SymlinkOp
  | DeleteOp
  | RmdirOp
  | DirtimeOp;

/** Options for {@linkcode plan}. */
export interface PlanOptions {
  /**
   * Plan deletions of replica entries that are not in the source. Turned off when the
   * source scan had errors, so a read error can never look like a deletion.
   * @default true
   */
  allowDelete?: boolean;
  /**
   * Detect moved files and folders and rename them in the replica.
   * @default true
   */
  renames?: boolean;
  /**
   * Give folders the source's mtime (`dirtime` operations), where the source's is known.
   * @default true
   */
  dirTimes?: boolean;
  /**
   * Folders the trees leave out (outside a partial run's roots) whose replica mtime differs
   * from the source's: path → the source's mtime. Each gets a `dirtime` operation.
   */
  dirTimesOutside?: ReadonlyMap<string, number>;
  /**
   * Special files found in the replica (FIFOs, sockets, devices), which are in no tree and
   * never in the source: extra entries, deleted first (as rsync --delete does), unless
   * `allowDelete` is off.
   */
  replicaSpecials?: readonly string[];
}

/** The result of {@linkcode plan}. */
export interface Plan {
  ops: Op[];
  /** Replica entries not deleted because `allowDelete` was off. */
  deletesSkipped: string[];
  /** Bytes that `copy`/`update` operations will read from the source. */
  bytesToCopy: number;
}

const TEMP_NAME = /(^|\/)\.mimeo-tmp-[0-9a-f]{8}-[^/]*$/;

/** Whether a relative path is one of mimeo's temporary names (left behind by a crash). */
export function isTempPath(path: string): boolean {
  return TEMP_NAME.test(path);
}

/**
 * Apply one operation's effect to a tree in place (nodes are replaced, never mutated).
 * The planner uses it to simulate; `apply` uses it to record what really happened.
 */
export function applyOp(tree: Tree, op: Op, file?: FileNode): void {
  switch (op.op) {
    case "mkdir":
      tree.set(op.path, { type: "dir", mode: op.mode });
      return;
    case "rename": {
      const node = tree.get(op.from);
      if (!node) return;
      if (node.type === "dir") {
        const moved: [string, Node][] = [];
        for (const [p, n] of tree) {
          if (isWithin(p, op.from)) moved.push([op.to + p.slice(op.from.length), n]);
        }
        for (const [p] of moved) tree.delete(op.from + p.slice(op.to.length));
        for (const [p, n] of moved) tree.set(p, n);
      } else {
        tree.delete(op.from);
        tree.set(op.to, file ?? node);
      }
      return;
    }
    case "copy":
    case "update":
      tree.set(
        op.path,
        file ??
          { type: "file", size: op.size, mtime: op.mtime, mode: op.mode, sha256: op.sha256 },
      );
      return;
    case "meta": {
      const n = tree.get(op.path);
      if (n?.type === "file") {
        tree.set(
          op.path,
          file ?? { ...n, mode: op.mode ?? n.mode, mtime: op.mtime ?? n.mtime },
        );
      } else if (n?.type === "dir") tree.set(op.path, { ...n, mode: op.mode ?? n.mode });
      return;
    }
    case "dirtime": {
      const n = tree.get(op.path);
      if (n?.type === "dir") tree.set(op.path, { ...n, mtime: op.mtime });
      return;
    }
    case "symlink":
      tree.set(op.path, { type: "symlink", target: op.target });
      return;
    case "delete":
    case "rmdir":
      tree.delete(op.path);
      return;
  }
}

/**
 * The folders a file moved between, from its new path `p` and old path `q`: both paths
 * without the longest run of trailing segments they share (`a/x/f` and `b/x/f` give `a`
 * and `b`); undefined when the last segments differ. When one path is all shared tail (a
 * folder moved deeper or shallower under the same name), one segment is given back so that
 * both folders are non-empty: `x/y/a/1` and `a/1` give `x/y/a` and `a`.
 *
 * It compares characters from the end instead of splitting the paths: it runs once per
 * moved file (9,000 of them when the benchmark renames its largest folder).
 */
export function commonSuffixParents(p: string, q: string): [string, string] | undefined {
  let i = p.length, j = q.length;
  while (i > 0 && j > 0 && p.charCodeAt(i - 1) === q.charCodeAt(j - 1)) {
    i--;
    j--;
  }
  // p.slice(i) === q.slice(j): past the mismatch a "/" in one is a "/" in the other. The
  // shared segments start at the mismatch when a segment starts there on both sides, else
  // after the first "/" past it.
  const SLASH = 47;
  let x = i, y = j;
  if (!((i === 0 || p.charCodeAt(i - 1) === SLASH) && (j === 0 || q.charCodeAt(j - 1) === SLASH))) {
    const s = p.indexOf("/", i);
    if (s < 0) return undefined; // the last segments differ
    x = s + 1;
    y = j + (x - i);
  }
  if (x === 0 || y === 0) {
    // One side is all tail: give one segment back.
    const s = p.indexOf("/", x);
    if (s < 0) return undefined; // (the paths are equal and have one segment)
    y += s + 1 - x;
    x = s + 1;
  }
  return [p.slice(0, x - 1), q.slice(0, y - 1)];
}

/**
 * Diff a source tree against a replica tree into an ordered list of operations.
 * Pure: reads only its arguments and returns new data.
 *
 * @example
 * ```ts
 * const src = new Map([["a.txt", { type: "file", size: 1, mtime: 0, mode: 0o644, sha256: "…" }]]);
 * const { ops } = plan(src, new Map());
 * // [{ op: "copy", path: "a.txt", … }]
 * ```
 */
export function plan(src: Tree, rep: Tree, options: PlanOptions = {}): Plan {
  const allowDelete = options.allowDelete ?? true;
  const dirTimes = options.dirTimes ?? true;
  const V: Tree = new Map(rep);
  const ops: Op[] = [];
  const emit = (op: Op) => {
    ops.push(op);
    applyOp(V, op);
  };
  const srcPaths = [...src.keys()].sort();
  const deletesSkipped: string[] = [];

  // 0. Special files in the replica, first: a folder or file of the source may need the name.
  for (const path of options.replicaSpecials ?? []) {
    if (allowDelete) emit({ op: "delete", path, kind: "file" });
    else deletesSkipped.push(path);
  }

  /** Make sure every ancestor of `path` is a folder in V, creating missing ones. */
  const ensureParents = (path: string): boolean => {
    const chain: string[] = [];
    for (let d = parentOf(path); d !== ""; d = parentOf(d)) chain.push(d);
    for (let i = chain.length - 1; i >= 0; i--) {
      const v = V.get(chain[i]);
      if (v?.type === "dir") continue;
      const s = src.get(chain[i]);
      if (v || s?.type !== "dir") return false;
    }
    for (let i = chain.length - 1; i >= 0; i--) {
      if (!V.has(chain[i])) {
        emit({ op: "mkdir", path: chain[i], mode: (src.get(chain[i]) as DirNode).mode });
      }
    }
    return true;
  };

  /** A replica file whose content is not needed at its own path any more. */
  const isRenameSource = (q: string, v: Node | undefined): v is FileNode & { sha256: string } => {
    if (v?.type !== "file" || !v.sha256) return false;
    const s = src.get(q);
    return !(s?.type === "file" && s.sha256 === v.sha256);
  };

  /** Replica files whose content could move elsewhere, by hash (V as it is now). */
  const renameSources = (): Map<string, string[]> => {
    const index = new Map<string, string[]>();
    for (const [q, v] of V) {
      if (!isRenameSource(q, v)) continue;
      const list = index.get(v.sha256);
      if (list) list.push(q);
      else index.set(v.sha256, [q]);
    }
    return index;
  };

  if (options.renames ?? true) {
    // 1. Folder renames, found by votes: a new source file whose content sits in the
    // replica under a vanishing path with the same tail votes for (old folder → new folder),
    // weighted by bytes.
    const removed = renameSources();
    if (removed.size > 0) {
      const votes = new Map<string, { from: string; to: string; weight: number }>();
      for (const p of srcPaths) {
        const s = src.get(p)!;
        if (s.type !== "file" || !s.sha256 || V.has(p)) continue;
        const qs = removed.get(s.sha256);
        if (!qs) continue;
        for (let k = 0; k < qs.length && k < 4; k++) {
          const pair = commonSuffixParents(p, qs[k]);
          if (!pair) continue;
          const [to, from] = pair;
          const key = `${from}\0${to}`;
          const v = votes.get(key);
          if (v) v.weight += s.size + 1;
          else votes.set(key, { from, to, weight: s.size + 1 });
        }
      }
      const candidates = [...votes.values()].sort((a, b) =>
        b.weight - a.weight || comparePaths(a.from, b.from) || comparePaths(a.to, b.to)
      );
      const accepted: { from: string; to: string }[] = [];
      for (const c of candidates) {
        if (V.get(c.from)?.type !== "dir" || src.get(c.from)?.type === "dir") continue;
        if (V.has(c.to) || src.get(c.to)?.type !== "dir") continue;
        if (isWithin(c.to, c.from) || isWithin(c.from, c.to)) continue;
        if (
          accepted.some((a) =>
            isWithin(c.from, a.from) || isWithin(a.from, c.from) || isWithin(c.to, a.to) ||
            isWithin(a.to, c.to) || isWithin(c.to, a.from) || isWithin(c.from, a.to)
          )
        ) continue;
        accepted.push(c);
      }
      accepted.sort((a, b) => depthOf(a.to) - depthOf(b.to) || comparePaths(a.to, b.to));
      for (const c of accepted) {
        if (V.get(c.from)?.type !== "dir" || V.has(c.to)) continue;
        if (ensureParents(c.to)) emit({ op: "rename", from: c.from, to: c.to, kind: "dir" });
      }
    }

    // 2. File renames: content in the replica under a path that no longer needs it.
    const byHash = renameSources();
    if (byHash.size > 0) {
      for (const p of srcPaths) {
        const s = src.get(p)!;
        if (s.type !== "file" || !s.sha256 || V.has(p)) continue;
        const qs = byHash.get(s.sha256);
        if (!qs) continue;
        while (qs.length) {
          const q = qs.shift()!;
          const v = V.get(q);
          if (v?.type !== "file" || v.sha256 !== s.sha256) continue;
          if (ensureParents(p)) emit({ op: "rename", from: q, to: p, kind: "file" });
          else qs.unshift(q);
          break;
        }
      }
    }
  }

  // 3. Type conflicts that involve a folder: clear the replica's side first.
  for (const p of srcPaths) {
    const s = src.get(p)!;
    const v = V.get(p);
    if (!v || v.type === s.type || (v.type !== "dir" && s.type !== "dir")) continue;
    if (v.type === "dir") {
      const inside = [...V.keys()].filter((q) => isWithin(q, p)).sort().reverse();
      for (const q of inside) {
        const n = V.get(q)!;
        emit(n.type === "dir" ? { op: "rmdir", path: q } : { op: "delete", path: q, kind: n.type });
      }
    } else {
      emit({ op: "delete", path: p, kind: v.type });
    }
  }

  // 4. New folders, parents first (srcPaths is sorted, so a parent precedes its children).
  for (const p of srcPaths) {
    const s = src.get(p)!;
    if (s.type === "dir" && !V.has(p)) emit({ op: "mkdir", path: p, mode: s.mode });
  }

  // 5. Content, metadata and symlinks.
  let bytesToCopy = 0;
  for (const p of srcPaths) {
    const s = src.get(p)!;
    const v = V.get(p);
    if (s.type === "file") {
      if (v?.type === "file" && v.sha256 && v.sha256 === s.sha256 && v.size === s.size) {
        if (v.mode !== s.mode || v.mtime !== s.mtime) {
          const op: MetaOp = { op: "meta", path: p, kind: "file" };
          if (v.mode !== s.mode) op.mode = s.mode;
          if (v.mtime !== s.mtime) op.mtime = s.mtime;
          emit(op);
        }
        continue;
      }
      const op: CopyOp = {
        op: v?.type === "file" ? "update" : "copy",
        path: p,
        size: s.size,
        mtime: s.mtime,
        mode: s.mode,
      };
      if (s.sha256) op.sha256 = s.sha256;
      bytesToCopy += s.size;
      emit(op);
    } else if (s.type === "symlink") {
      if (v?.type === "symlink" && v.target === s.target) continue;
      emit({ op: "symlink", path: p, target: s.target });
    }
  }

  // 6. Deletions, deepest first (reverse sorted order puts children before parents).
  const extras = [...V.keys()].filter((q) => !src.has(q)).sort().reverse();
  for (const q of extras) {
    if (!allowDelete && !isTempPath(q)) {
      deletesSkipped.push(q);
      continue;
    }
    const n = V.get(q)!;
    if (n.type === "dir" && deletesSkipped.some((d) => isWithin(d, q))) {
      deletesSkipped.push(q);
      continue;
    }
    emit(n.type === "dir" ? { op: "rmdir", path: q } : { op: "delete", path: q, kind: n.type });
  }

  // 7. Folder modes and times, deepest first, after everything inside them is written.
  // Setting a folder's mode or times changes neither its parent nor what is inside it.
  const touched = foldersTouched(ops);
  for (let i = srcPaths.length - 1; i >= 0; i--) {
    const p = srcPaths[i];
    const s = src.get(p)!;
    const v = V.get(p);
    if (s.type !== "dir" || v?.type !== "dir") continue;
    if (v.mode !== s.mode) emit({ op: "meta", path: p, kind: "dir", mode: s.mode });
    if (dirTimes && s.mtime !== undefined && (v.mtime !== s.mtime || touched.has(p))) {
      emit({ op: "dirtime", path: p, mtime: s.mtime });
    }
  }
  const outside = (dirTimes && options.dirTimesOutside) || new Map<string, number>();
  for (const p of [...outside.keys()].filter((p) => !src.has(p)).sort().reverse()) {
    emit({ op: "dirtime", path: p, mtime: outside.get(p)! });
  }

  return { ops, deletesSkipped, bytesToCopy };
}

/**
 * The folders whose listing `ops` change (an entry added, removed or renamed in them), and
 * folders moved by a rename: each gets the time of the run as its mtime ("" is the root).
 */
export function foldersTouched(ops: readonly Op[]): Set<string> {
  const touched = new Set<string>();
  for (const op of ops) {
    switch (op.op) {
      case "rename":
        touched.add(parentOf(op.from));
        touched.add(parentOf(op.to));
        if (op.kind === "dir") touched.add(op.to);
        break;
      case "meta":
      case "dirtime":
        break;
      default:
        touched.add(parentOf(op.path));
    }
  }
  return touched;
}

/** Count operations by kind, for summaries. */
export function countOps(ops: readonly Op[]): Record<Op["op"], number> {
  const c: Record<Op["op"], number> = {
    mkdir: 0,
    rename: 0,
    copy: 0,
    update: 0,
    meta: 0,
    symlink: 0,
    delete: 0,
    rmdir: 0,
    dirtime: 0,
  };
  for (const o of ops) c[o.op]++;
  return c;
}
