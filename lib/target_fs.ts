/**
 * The local-folder target: the only code that writes into a replica.
 *
 * Rules it keeps:
 * - Content lands under a temporary name in the destination folder
 *   (`.mimeo-tmp-<8 hex>-<name>`), gets its mode and mtime, then is renamed into place.
 *   A crash leaves at most a temporary file, which the next run deletes.
 * - It never writes through a symlink: before anything is created inside a folder, every
 *   component of that folder below the replica root is checked with `lstat` to be a real
 *   folder (cached per run). Temporary files are created with `O_EXCL`, and renames and
 *   deletions act on the link itself.
 * - Folders whose final mode would stop the owner from writing into them get that mode
 *   at the end of the run ({@linkcode FsTarget.finish}).
 *
 * @module
 */
import { UnsafeConfigError } from "./errors.ts";
import { CHUNK, copyAndHashSync, hashFileSliced, type HashResult, newHasher } from "./hash.ts";
import { CTIME_TICK_MS, fingerprintOf } from "./scan.ts";
import { type Fingerprint, isWithin, parentOf } from "./types.ts";

/** A written but not yet committed file. */
export interface PendingWrite extends HashResult {
  /** Rename the temporary file into place; returns the replica fingerprint. */
  commit(): Fingerprint;
  /** Delete the temporary file. */
  discard(): void;
  /** The written file's birth time (ms), when the file system reports one. */
  bornAt?: number;
  /**
   * The source changed while it was written (what was hashed is not what was copied): to
   * be discarded and tried again, like a source whose stat changed.
   */
  changed?: boolean;
}

/** Metadata to give a file. */
export interface FileMeta {
  mode: number;
  mtime: number;
  /** Expected size: large files take the kernel-copy path. */
  size: number;
}

/** What `apply` needs from a replica; a remote replica would implement the same. */
export interface Target {
  readonly root: string;
  mkdir(path: string, mode: number): void;
  rename(from: string, to: string): void;
  /** Write the content of the file `source` to `path` via a temporary file (not yet in place). */
  writeFile(
    path: string,
    source: string,
    meta: FileMeta,
    signal?: AbortSignal,
  ): Promise<PendingWrite>;
  symlink(path: string, target: string): void;
  setMeta(path: string, kind: "file" | "dir", mode?: number, mtime?: number): Fingerprint;
  /** Set the folder `path`'s mtime (`""` is the replica folder itself). */
  setDirTime(path: string, mtime: number): void;
  remove(path: string): void;
  rmdir(path: string): void;
  /** Finish the run: apply deferred folder modes. */
  finish(): void;
}

/**
 * Bytes of the original name kept in a temporary name: `.mimeo-tmp-` + 8 hex + `-` is 20
 * bytes, and a name may have 255 bytes (NAME_MAX), counted in UTF-8.
 */
export const TEMP_BASE_MAX_BYTES = 200;

const utf8 = new TextEncoder();

/** The longest prefix of `s` that fits in `max` UTF-8 bytes, cut between code points. */
export function truncateUtf8(s: string, max: number): string {
  if (s.length * 3 <= max || utf8.encode(s).length <= max) return s;
  let bytes = 0;
  let end = 0;
  for (const ch of s) {
    const n = utf8.encode(ch).length;
    if (bytes + n > max) break;
    bytes += n;
    end += ch.length;
  }
  return s.slice(0, end);
}

/** Random words for temporary names, drawn 1,024 at a time (one call each: 1.2 µs a name). */
const randomPool = new Uint32Array(1024);
let randomLeft = 0;

/** 8 random lower-case hex digits (0.17 µs; a first sync of 200,000 files takes 200,000). */
function randomHex(): string {
  if (randomLeft === 0) {
    crypto.getRandomValues(randomPool);
    randomLeft = randomPool.length;
  }
  return randomPool[--randomLeft].toString(16).padStart(8, "0");
}

/** Yield to the event loop so signals and timers get a turn during long work. */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((r) => setTimeout(r, 0));
}

/** A replica folder on the local file system. */
export class FsTarget implements Target {
  #safeDirs = new Set<string>([""]);
  #deferredModes = new Map<string, number>();

  /** @param root absolute, already resolved path of the replica folder */
  constructor(readonly root: string) {}

  #abs(path: string): string {
    return `${this.root}/${path}`;
  }

  /** Throw unless every component of `dir` below the root is a real folder. */
  #checkDir(dir: string): void {
    if (this.#safeDirs.has(dir)) return;
    this.#checkDir(parentOf(dir));
    const st = Deno.lstatSync(this.#abs(dir));
    if (!st.isDirectory) {
      throw new UnsafeConfigError(
        `refusing to write through '${dir}': it is ${
          st.isSymlink ? "a symlink" : "not a folder"
        } in the replica`,
      );
    }
    this.#safeDirs.add(dir);
  }

  /**
   * Run `fn`; if the OS says permission denied and one of `dirs` is a folder its owner
   * cannot write into (say a mirrored 0555 folder, as in a module cache), add the owner's
   * rwx, remember the mode to put back in {@linkcode finish}, and try once more. (Root is
   * never denied, so this is for runs as an ordinary user.)
   */
  #unlocked<T>(dirs: string[], fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (!(e instanceof Deno.errors.PermissionDenied)) throw e;
      let changed = false;
      for (const d of new Set(dirs)) {
        let st: Deno.FileInfo;
        try {
          st = Deno.lstatSync(this.#abs(d));
        } catch {
          continue;
        }
        const mode = (st.mode ?? 0) & 0o7777;
        if (!st.isDirectory || (mode & 0o700) === 0o700) continue;
        Deno.chmodSync(this.#abs(d), mode | 0o700);
        if (!this.#deferredModes.has(d)) this.#deferredModes.set(d, mode);
        changed = true;
      }
      if (!changed) throw e;
      return fn();
    }
  }

  #forget(dir: string): void {
    for (const d of this.#safeDirs) if (d !== "" && isWithin(d, dir)) this.#safeDirs.delete(d);
  }

  #tempFor(path: string): string {
    const dir = parentOf(path);
    const base = truncateUtf8(path.slice(dir.length ? dir.length + 1 : 0), TEMP_BASE_MAX_BYTES);
    return `${dir ? dir + "/" : ""}.mimeo-tmp-${randomHex()}-${base}`;
  }

  mkdir(path: string, mode: number): void {
    this.#checkDir(parentOf(path));
    const abs = this.#abs(path);
    try {
      this.#unlocked([parentOf(path)], () => Deno.mkdirSync(abs, { mode: 0o700 }));
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists) || !Deno.lstatSync(abs).isDirectory) throw e;
    }
    this.#applyDirMode(path, mode);
    this.#safeDirs.add(path);
  }

  #applyDirMode(path: string, mode: number): void {
    // Keep the owner able to write into it until the run ends.
    const now = mode | 0o700;
    Deno.chmodSync(this.#abs(path), now);
    if (now !== mode) this.#deferredModes.set(path, mode);
    else this.#deferredModes.delete(path);
  }

  rename(from: string, to: string): void {
    this.#checkDir(parentOf(from));
    this.#checkDir(parentOf(to));
    // Moving a folder to another parent also rewrites its "..": it must be writable too.
    this.#unlocked(
      [parentOf(from), parentOf(to), from],
      () => Deno.renameSync(this.#abs(from), this.#abs(to)),
    );
    this.#forget(from);
    const moved = [...this.#deferredModes].filter(([d]) => isWithin(d, from));
    for (const [d, m] of moved) {
      this.#deferredModes.delete(d);
      this.#deferredModes.set(to + d.slice(from.length), m);
    }
  }

  async writeFile(
    path: string,
    source: string,
    meta: FileMeta,
    signal?: AbortSignal,
  ): Promise<PendingWrite> {
    this.#checkDir(parentOf(path));
    const tmp = this.#abs(this.#tempFor(path));
    let w: TempWrite & { changed?: boolean };
    if (meta.size >= KERNEL_COPY_MIN_BYTES) {
      // Large file: the kernel copies (copy_file_range, no trip through user space) into
      // a temporary file created first with O_EXCL, on one of Deno's blocking threads,
      // while this thread hashes the same bytes from the source: the two passes run at the
      // same time. The caller re-checks the source's stat after the copy (a source that
      // changed meanwhile is copied again), so the bytes hashed are the bytes copied.
      // Measured, applying a new 1 GiB file (bench/README.md): 1.5–1.7 s copied by the
      // kernel and then hashed back from the replica, 0.87–0.98 s both at once. (A whole
      // sync through user space instead of the kernel took 2.6 s against 1.8 s.)
      this.#unlocked([parentOf(path)], () => createTemp(tmp, meta.mode).close());
      try {
        const copying = Deno.copyFile(source, tmp);
        let result: HashResult;
        try {
          result = await hashFileSliced(source, yieldToEventLoop, signal);
        } catch (e) {
          await copying.catch(() => {}); // (the temporary file is removed below)
          throw e;
        }
        await copying;
        // Two reads of the source: a length that moved between them is a changed source.
        const changed = Deno.lstatSync(tmp).size !== result.size;
        Deno.utimeSync(tmp, new Date(), new Date(meta.mtime));
        w = { ...result, st: finishTemp(tmp, meta.mode), changed };
      } catch (e) {
        removeQuietly(tmp);
        throw e;
      }
    } else {
      w = this.#unlocked([parentOf(path)], () => writeTempSync(tmp, source, meta, signal));
    }
    const dest = this.#abs(path);
    return {
      sha256: w.sha256,
      size: w.size,
      commit: () => commitTemp(tmp, dest, w.st),
      discard: () => removeQuietly(tmp),
      changed: w.changed,
      bornAt: w.st.birthtime?.getTime(),
    };
  }

  /**
   * Check that new entries may be created in folder `dir` (every component below the root
   * a real folder, cached per run); throws {@linkcode UnsafeConfigError} otherwise. For
   * helpers that write on another thread ({@linkcode CopyHelper}).
   */
  prepareDir(dir: string): void {
    this.#checkDir(dir);
  }

  /** A temporary path (relative to the root) for new content of `path`. */
  tempPathFor(path: string): string {
    return this.#tempFor(path);
  }

  symlink(path: string, target: string): void {
    this.#checkDir(parentOf(path));
    const tmp = this.#abs(this.#tempFor(path));
    this.#unlocked([parentOf(path)], () => Deno.symlinkSync(target, tmp));
    try {
      Deno.renameSync(tmp, this.#abs(path));
    } catch (e) {
      removeQuietly(tmp);
      throw e;
    }
  }

  setMeta(path: string, kind: "file" | "dir", mode?: number, mtime?: number): Fingerprint {
    this.#checkDir(parentOf(path));
    const abs = this.#abs(path);
    const st = Deno.lstatSync(abs);
    if (kind === "file" ? !st.isFile : !st.isDirectory) {
      throw new Error(`'${path}' is no longer a ${kind === "file" ? "file" : "folder"}`);
    }
    if (kind === "dir") {
      if (mode !== undefined) this.#applyDirMode(path, mode);
    } else {
      if (mode !== undefined) Deno.chmodSync(abs, mode);
      if (mtime !== undefined) Deno.utimeSync(abs, new Date(), new Date(mtime));
    }
    return fingerprintOf(Deno.lstatSync(abs));
  }

  setDirTime(path: string, mtime: number): void {
    // A folder all the way up, no symlink (utime follows links); usually known already, as
    // the run wrote into it.
    this.#checkDir(path);
    Deno.utimeSync(path === "" ? this.root : this.#abs(path), new Date(), new Date(mtime));
  }

  remove(path: string): void {
    this.#checkDir(parentOf(path));
    const abs = this.#abs(path);
    try {
      if (Deno.lstatSync(abs).isDirectory) throw new Error(`'${path}' is now a folder`);
      this.#unlocked([parentOf(path)], () => Deno.removeSync(abs));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }

  rmdir(path: string): void {
    this.#checkDir(parentOf(path));
    try {
      this.#unlocked([parentOf(path)], () => Deno.removeSync(this.#abs(path)));
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    this.#forget(path);
    this.#deferredModes.delete(path);
  }

  finish(): void {
    const dirs = [...this.#deferredModes.keys()].sort().reverse();
    for (const d of dirs) {
      try {
        Deno.chmodSync(this.#abs(d), this.#deferredModes.get(d)!);
      } catch { /* the folder went away; nothing to restore */ }
    }
    this.#deferredModes.clear();
  }
}

/** Content written to a temporary file, with the file's stat taken right after. */
export interface TempWrite extends HashResult {
  st: Deno.FileInfo;
}

/**
 * Create a temporary file with O_EXCL and its final permission bits (the creating fd may
 * write even to a 0444 file). Measured on Deno 2.9: `open` and `FsFile.statSync` re-resolve
 * the whole path for the permission check (a readlink per component), while `lstatSync`,
 * `futimens`, reads and writes do not; so metadata is read back with lstat.
 */
function createTemp(tmp: string, mode: number): Deno.FsFile {
  return Deno.openSync(tmp, { write: true, createNew: true, mode: mode & 0o777 });
}

/** Stat a finished temporary file; chmod it when the umask or special bits got in the way. */
function finishTemp(tmp: string, mode: number): Deno.FileInfo {
  const st = Deno.lstatSync(tmp);
  if (((st.mode ?? 0) & 0o7777) !== mode) Deno.chmodSync(tmp, mode);
  return st;
}

/**
 * Copy the file `source` into a new temporary file `tmp`, hashing every byte on the way
 * (one read of the source), and give it `meta`'s mode and mtime. The temporary file is
 * removed when anything fails. Also used by the copy helper thread.
 */
export function writeTempSync(
  tmp: string,
  source: string,
  meta: Pick<FileMeta, "mode" | "mtime">,
  signal?: AbortSignal,
): TempWrite {
  const out = createTemp(tmp, meta.mode);
  try {
    let result: HashResult;
    try {
      const from = Deno.openSync(source, { read: true });
      try {
        const h = newHasher();
        const size = copyAndHashSync(from, out, h, Infinity, signal);
        result = { sha256: h.digest("hex"), size };
      } finally {
        from.close();
      }
      out.utimeSync(new Date(), new Date(meta.mtime));
    } finally {
      out.close();
    }
    return { ...result, st: finishTemp(tmp, meta.mode) };
  } catch (e) {
    removeQuietly(tmp);
    throw e;
  }
}

/**
 * Rename a temporary file into place (removing it if that fails); returns the replica
 * fingerprint. The inode stays, but the rename sets the file's ctime: when the clock has
 * left the second of the ctime taken when it was written (Deno's ctime has whole seconds),
 * the file is stat'ed again, or the next run would find a different ctime and hash the file
 * again. (Before: 6 of the 20,000 files of a first sync re-hashed by the run after it.)
 */
export function commitTemp(tmp: string, dest: string, st: Deno.FileInfo): Fingerprint {
  try {
    Deno.renameSync(tmp, dest);
  } catch (e) {
    removeQuietly(tmp);
    throw e;
  }
  const fp = fingerprintOf(st);
  if (Math.floor(Date.now() / CTIME_TICK_MS) === Math.floor(fp[1] / CTIME_TICK_MS)) return fp;
  try {
    const now = Deno.lstatSync(dest);
    if (now.ino === st.ino) return fingerprintOf(now);
  } catch { /* gone already: the next run sees that */ }
  return fp;
}

/** Files from this size on are copied by the kernel while this thread hashes the source. */
export const KERNEL_COPY_MIN_BYTES = 16 * CHUNK;

/** Delete a file, ignoring errors (it may be gone already). */
export function removeQuietly(abs: string): void {
  try {
    Deno.removeSync(abs);
  } catch { /* already gone */ }
}
