/**
 * The in-memory shape of a tree: what the scanner produces, what the planner diffs, and
 * what the manifest records. Paths are relative, POSIX-style, without a leading `./`.
 *
 * @module
 */

/** A stat fingerprint used by the hash cache: `[inode, ctime in ms]`. */
export type Fingerprint = readonly [ino: number, ctime: number];

/** A regular file. `sha256` is absent when it is not known yet (hashed later, or never). */
export interface FileNode {
  type: "file";
  size: number;
  /** Modification time, milliseconds since the epoch (integer). */
  mtime: number;
  /** Permission bits (`mode & 0o7777`). */
  mode: number;
  sha256?: string;
  /** Stat fingerprint of this file where it was scanned (source or replica). */
  fp?: Fingerprint;
  /** When the hash was computed (ms since the epoch); for the racy-timestamp rule. */
  hashedAt?: number;
  /**
   * For a replica file mimeo just wrote or moved: its birth time (ms, the file system's own
   * clock), when the file system reports one; for the replica's trust rule
   * (`isReplicaTrustworthy`). Not recorded in the manifest.
   */
  bornAt?: number;
}

/** A folder. */
export interface DirNode {
  type: "dir";
  mode: number;
  /**
   * Modification time (ms since the epoch, integer) where the folder was stat'ed; absent
   * when not known (a node read from a manifest, which does not record folder times).
   */
  mtime?: number;
}

/** A symbolic link, recorded by its target text, never followed. */
export interface LinkNode {
  type: "symlink";
  target: string;
}

/** Any entry of a tree. */
export type Node = FileNode | DirNode | LinkNode;

/** A tree: relative path → entry. The root itself is not an entry. */
export type Tree = Map<string, Node>;

/** One path that could not be read while scanning. */
export interface ScanIssue {
  path: string;
  /** `error` entries make the scan incomplete; `warning` ones (special files) do not. */
  level: "error" | "warning";
  code: string;
  message: string;
  /** Set on problems found in the replica (they never stop deletions). */
  side?: "replica";
}

/** The parent folder of a relative path (`""` for top-level entries). */
export function parentOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "" : path.slice(0, i);
}

/** Whether `path` is `dir` itself or inside it. */
export function isWithin(path: string, dir: string): boolean {
  return path === dir || (path.length > dir.length && path.startsWith(dir) &&
    path.charCodeAt(dir.length) === 47);
}

/** Number of `/`-separated segments in a relative path. */
export function depthOf(path: string): number {
  let n = 1;
  for (let i = 0; i < path.length; i++) if (path.charCodeAt(i) === 47) n++;
  return n;
}
