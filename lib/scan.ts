/**
 * Walk a folder into a {@linkcode Tree}, and reuse recorded hashes through the stat cache.
 *
 * The walk is synchronous on purpose: `Deno.lstatSync` costs ~4 µs where an awaited
 * `Deno.lstat` costs ~50 µs, and a scan is nothing but metadata calls. One unreadable
 * path is an issue in the result, never a thrown error: the walk goes on.
 *
 * @module
 */
import { errorCode, errorMessage } from "./errors.ts";
import type { Manifest } from "./manifest.ts";
import type { FileNode, Fingerprint, Node, ScanIssue, Tree } from "./types.ts";

/**
 * A file whose mtime is closer than this to the moment it was hashed is not trusted from
 * the cache later: a same-size rewrite within one timestamp tick would keep its stat.
 * Deno reports ctime in whole seconds, so the window spans more than one second.
 */
export const RACY_WINDOW_MS = 2000;

/** Deno reports ctime in whole seconds: a change within the same second keeps it. */
export const CTIME_TICK_MS = 1000;

/** A file's stat fingerprint: inode and ctime (0 where the file system reports none). */
export function fingerprintOf(st: Deno.FileInfo): Fingerprint {
  return [st.ino ?? 0, st.ctime?.getTime() ?? 0];
}

/**
 * Whether a source file's mtime is too close to the moment `at` for its stat to vouch for
 * content read then: within the racy window before `at`. A mtime ahead of `at` (a file
 * from a camera, an archive or a server with a clock ahead) never leaves that window, so
 * with a known ctime (`ctime` > 0) it is left to the ctime rule instead: a later write,
 * even one that puts the same mtime back, stamps a ctime in a later second than the one
 * recorded, since a hash is trusted only once the recorded ctime's second has ended.
 * Without a ctime, a mtime ahead stays racy.
 */
export function isRacyMtime(mtime: number, at: number, ctime: number): boolean {
  if (mtime > at) return ctime <= 0;
  return at - mtime < RACY_WINDOW_MS;
}

/**
 * Whether a file's recorded hash may be trusted later from its stat fingerprint: the hash
 * must have been taken (`hashedAt`) outside the mtime's racy window (see
 * {@linkcode isRacyMtime}) and after the ctime's second had ended. Otherwise a later
 * same-size rewrite could keep the whole fingerprint. Nodes without `hashedAt` were
 * trusted from the cache and stay trusted.
 */
export function isTrustworthy(n: FileNode): boolean {
  if (n.hashedAt === undefined) return true;
  return !isRacyMtime(n.mtime, n.hashedAt, n.fp?.[1] ?? 0) &&
    (!n.fp || n.hashedAt >= n.fp[1] + CTIME_TICK_MS);
}

/**
 * Whether a replica file's recorded hash may be trusted later from its stat fingerprint.
 * mimeo sets the mtime of what it writes to the source's; an ordinary write afterwards sets
 * the mtime and the ctime to the time of that write, which goes unseen only if it keeps the
 * exact millisecond mtime and the ctime's second. Trusted when one of these rules out that
 * a later write lands on the recorded mtime:
 * - the mtime is older than the file's birth time (`bornAt`, known for files mimeo just
 *   wrote or moved): a later write's time is at least the birth time;
 * - the mtime lies outside the ctime's second: a later write within that second sets a
 *   mtime in that second, and one in another second sets a different ctime;
 * - the mtime is older than the moment the content was known by the racy window.
 * The first two compare only timestamps of the replica's own file system, no clock. (A
 * write that also puts the mtime back, within the same second, is the one case stat cannot
 * see; `verify` and `--checksum` re-read.)
 */
export function isReplicaTrustworthy(n: FileNode): boolean {
  if (n.hashedAt === undefined) return true;
  if (n.hashedAt - n.mtime >= RACY_WINDOW_MS) return true;
  if (n.bornAt !== undefined && n.mtime < n.bornAt) return true;
  const ctime = n.fp?.[1] ?? 0;
  return ctime > 0 && Math.floor(n.mtime / CTIME_TICK_MS) !== Math.floor(ctime / CTIME_TICK_MS);
}

/** Decides whether a relative path is excluded; `isDir` adds the trailing-slash form. */
export type PathFilter = (path: string, isDir: boolean) => boolean;

/** Options for {@linkcode scanTree}. */
export interface ScanOptions {
  /** Paths for which this returns true are skipped, with everything below them. */
  exclude?: PathFilter;
  /** Checked between folders; an aborted scan throws the signal's reason. */
  signal?: AbortSignal;
  /**
   * Only walk below these relative paths (watch mode re-scans what changed). The result
   * then holds these subtrees plus their ancestors.
   * @default undefined (the whole tree)
   */
  only?: string[];
}

/** Result of {@linkcode scanTree}. */
export interface ScanResult {
  tree: Tree;
  issues: ScanIssue[];
}

/**
 * Whether a file still has the stat it had when `n` was taken: a regular file with the
 * same size and mtime and, when `n` has a fingerprint, the same inode and ctime. Used after
 * a copy, to tell whether the source changed while it was read.
 */
export function sameStat(n: Pick<FileNode, "size" | "mtime" | "fp">, st: Deno.FileInfo): boolean {
  return st.isFile && st.size === n.size && mtimeMs(st) === n.mtime &&
    (!n.fp || ((st.ino ?? 0) === n.fp[0] && (st.ctime?.getTime() ?? 0) === n.fp[1]));
}

/** A stat result's mtime as the trees and the manifest hold it: integer milliseconds. */
export function mtimeMs(st: Deno.FileInfo): number {
  return Math.trunc(st.mtime?.getTime() ?? 0);
}

/** The node for a stat result (`abs` is read only for symlinks), or `"special"`. */
export function nodeFromStat(st: Deno.FileInfo, abs: string): Node | "special" {
  if (st.isFile) {
    // Every optional field is declared up front: one object shape for all file nodes, so
    // filling in the hash later does not reallocate 200,000 objects.
    return {
      type: "file",
      size: st.size,
      mtime: mtimeMs(st),
      mode: (st.mode ?? 0o644) & 0o7777,
      sha256: undefined,
      fp: fingerprintOf(st),
      hashedAt: undefined,
    };
  }
  if (st.isDirectory) {
    return {
      type: "dir",
      mode: (st.mode ?? 0o755) & 0o7777,
      mtime: mtimeMs(st),
    };
  }
  if (st.isSymlink) return { type: "symlink", target: Deno.readLinkSync(abs) };
  return "special";
}

/**
 * Whether `name`, listed in the folder `absDir`, is a name no Deno call can reach: Deno
 * gives names as text, so bytes that are not valid UTF-8 come back as U+FFFD and the name
 * it returns does not exist. Checked only after a "not found": the name must have U+FFFD
 * and still be listed (a file that was merely deleted is not).
 */
export function unaddressable(absDir: string, name: string): boolean {
  if (!name.includes("\uFFFD")) return false;
  try {
    for (const d of Deno.readDirSync(absDir)) if (d.name === name) return true;
  } catch { /* the folder went too: the name is simply gone */ }
  return false;
}

/** The scan issue for a name that {@linkcode unaddressable} found. */
export function badNameIssue(path: string): ScanIssue {
  return {
    path,
    level: "error",
    code: "EILSEQ",
    message:
      "the name is not valid UTF-8 (shown with U+FFFD for the bad bytes); mimeo cannot read, copy or delete it: rename it",
  };
}

/** The scan warning for a FIFO, socket or device, which is never mirrored. */
function specialIssue(path: string): ScanIssue {
  return {
    path,
    level: "warning",
    code: "SPECIAL",
    message: "special file (FIFO, socket or device) skipped",
  };
}

/** The node for one path, or `"special"` for FIFOs, sockets and devices. Throws on I/O errors. */
export function statNode(abs: string): Node | "special" {
  return nodeFromStat(Deno.lstatSync(abs), abs);
}

/**
 * Walk `root` (a folder) into a tree of relative paths. Symlinks are recorded, never
 * followed; special files are skipped with a warning; unreadable paths become issues.
 *
 * @example
 * ```ts
 * const { tree, issues } = scanTree("./dist");
 * console.log(tree.size, issues.length);
 * ```
 */
export function scanTree(root: string, options: ScanOptions = {}): ScanResult {
  const { exclude, signal } = options;
  const tree: Tree = new Map();
  const issues: ScanIssue[] = [];
  const issue = (path: string, err: unknown) =>
    issues.push({ path, level: "error", code: errorCode(err), message: errorMessage(err) });
  const stack: string[] = [];

  if (options.only) {
    for (const rel of options.only) {
      // Ancestors first, so the subtree hangs on real folders.
      const parts = rel.split("/");
      let ok = true;
      for (let i = 1; i <= parts.length && ok; i++) {
        const p = parts.slice(0, i).join("/");
        if (tree.has(p)) {
          if (tree.get(p)!.type !== "dir") ok = false;
          continue;
        }
        let node: Node | "special";
        try {
          node = statNode(`${root}/${p}`);
        } catch (e) {
          if (!(e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory)) {
            issue(p, e);
          } else if (
            e instanceof Deno.errors.NotFound &&
            unaddressable(
              i === 1 ? root : `${root}/${parts.slice(0, i - 1).join("/")}`,
              parts[i - 1],
            )
          ) {
            // Not gone: listed, but not reachable by its name (a path from a listing).
            issues.push(badNameIssue(p));
          }
          ok = false;
          break;
        }
        if (node === "special") issues.push(specialIssue(p)); // (as in a full walk)
        if (node === "special" || (exclude && exclude(p, node.type === "dir"))) {
          ok = false;
          break;
        }
        tree.set(p, node);
        if (node.type !== "dir") ok = false;
        else if (i === parts.length) stack.push(p);
      }
    }
  } else {
    stack.push("");
  }

  while (stack.length) {
    signal?.throwIfAborted();
    const dir = stack.pop()!;
    const absDir = dir === "" ? root : `${root}/${dir}`;
    let names: Deno.DirEntry[];
    try {
      names = [...Deno.readDirSync(absDir)];
    } catch (e) {
      issue(dir || ".", e);
      continue;
    }
    for (const d of names) {
      const rel = dir === "" ? d.name : `${dir}/${d.name}`;
      if (exclude && exclude(rel, d.isDirectory)) continue;
      const abs = `${absDir}/${d.name}`;
      let node: Node | "special";
      try {
        node = statNode(abs);
      } catch (e) {
        if (e instanceof Deno.errors.NotFound && unaddressable(absDir, d.name)) {
          issues.push(badNameIssue(rel));
        } else issue(rel, e);
        continue;
      }
      if (node === "special") {
        issues.push(specialIssue(rel));
        continue;
      }
      tree.set(rel, node);
      if (node.type === "dir") stack.push(rel);
    }
  }
  return { tree, issues };
}

/**
 * Reuse hashes recorded for the source when a file's size, mtime, inode and ctime all
 * match the fingerprint stored when it was hashed, and its mtime is not within
 * {@linkcode RACY_WINDOW_MS} of `now`. Files moved inside a renamed folder keep their
 * inode and ctime, so they are found by inode too. Returns how many hashes were reused.
 */
export function reuseSourceHashes(src: Tree, old: Manifest | undefined, now: number): number {
  if (!old) return 0;
  let byIno: Map<number, string> | undefined;
  let reused = 0;
  for (const [p, n] of src) {
    if (n.type !== "file" || !n.fp || isRacyMtime(n.mtime, now, n.fp[1])) continue;
    let e = old.entries.get(p);
    let c = old.cache.get(p);
    if (!(e?.type === "file" && c?.src && c.src[0] === n.fp[0])) {
      if (!byIno) {
        byIno = new Map();
        for (const [q, r] of old.cache) if (r.src) byIno.set(r.src[0], q);
      }
      const q = byIno.get(n.fp[0]);
      if (q === undefined) continue;
      e = old.entries.get(q);
      c = old.cache.get(q);
    }
    if (
      e?.type === "file" && c?.src && e.size === n.size && e.mtime === n.mtime &&
      c.src[0] === n.fp[0] && c.src[1] === n.fp[1]
    ) {
      n.sha256 = e.sha256;
      reused++;
    }
  }
  return reused;
}

/**
 * Reuse hashes recorded for the replica's own files when the file still has the size,
 * mtime, mode, inode and ctime recorded after mimeo wrote it. A file changed behind
 * mimeo's back fails the check and is left without a hash (unknown content).
 */
export function reuseReplicaHashes(rep: Tree, old: Manifest | undefined): number {
  if (!old) return 0;
  let reused = 0;
  for (const [p, n] of rep) {
    if (n.type !== "file" || !n.fp) continue;
    const e = old.entries.get(p);
    const c = old.cache.get(p);
    if (
      e?.type === "file" && c?.dst && e.size === n.size && e.mtime === n.mtime &&
      e.mode === n.mode && c.dst[0] === n.fp[0] && c.dst[1] === n.fp[1]
    ) {
      n.sha256 = e.sha256;
      reused++;
    }
  }
  return reused;
}
