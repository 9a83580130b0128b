/**
 * Path validation done before anything is touched: the source must be a folder, the
 * replica must not be a file, the two must not overlap (also through symlinks or `..`),
 * and the manifest and log file must live outside both. Also checks Deno permissions so
 * a missing flag is one clear line, not a stack trace.
 *
 * @module
 */
import { indexPathFor } from "./manifest_index.ts";
import { basename, dirname, resolve } from "node:path";
import { MimeoError, PermissionMissingError, UnsafeConfigError, UsageError } from "./errors.ts";

/**
 * The physical absolute path of `p`: symlinks resolved for the part that exists, the rest
 * appended (so a replica that does not exist yet still resolves).
 */
export function resolvePhysical(p: string): string {
  const abs = resolve(p);
  try {
    return Deno.realPathSync(abs);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory)) throw e;
  }
  const parent = dirname(abs);
  if (parent === abs) return abs;
  return `${resolvePhysical(parent).replace(/\/$/, "")}/${basename(abs)}`;
}

/** Whether `a` is `b` or inside it (absolute, normalized paths). */
export function isInside(a: string, b: string): boolean {
  if (b === "/") return true;
  return a === b || a.startsWith(b.endsWith("/") ? b : `${b}/`);
}

/** The default manifest path: beside the replica, `<replica>.mimeo.json`. */
export function defaultManifestPath(replica: string): string {
  return `${resolve(replica).replace(/\/+$/, "")}.mimeo.json`;
}

/** Resolved, validated paths of a sync. */
export interface SyncPaths {
  source: string;
  replica: string;
  manifest: string;
}

/** Whether Deno grants `name` on `path` now (never prompts). */
export function granted(name: "read" | "write", path: string): boolean {
  return Deno.permissions.querySync({ name, path }).state === "granted";
}

function need(name: "read" | "write", path: string): void {
  if (!granted(name, path)) {
    throw new PermissionMissingError(
      `mimeo needs --allow-${name} for '${path}' (run it with --allow-read --allow-write)`,
    );
  }
}

/** Throw unless Deno grants read (and write, when asked) on a path. */
export function checkPermissions(read: string[], write: string[]): void {
  for (const p of read) need("read", p);
  for (const p of write) need("write", p);
}

/**
 * Validate and resolve the paths of a sync. Throws a typed error (exit 2) for every
 * unsafe or impossible configuration. Reads only; writes nothing.
 *
 * @example
 * ```ts
 * const { source, replica, manifest } = validatePaths("src", "backup");
 * ```
 */
export function validatePaths(
  source: string,
  replica: string,
  manifest?: string,
  extra: { logFile?: string; writes?: boolean } = {},
): SyncPaths {
  const writes = extra.writes ?? true;
  checkPermissions([resolve(source), resolve(replica)], writes ? [resolve(replica)] : []);
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(source);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UsageError(`Source '${source}' does not exist`);
    }
    throw new UsageError(`Cannot read source '${source}': ${(e as Error).message}`);
  }
  if (!st.isDirectory) throw new UsageError(`Source '${source}' is not a folder`);
  const src = Deno.realPathSync(source);
  try {
    const r = Deno.statSync(replica);
    if (!r.isDirectory) {
      throw new UnsafeConfigError(`Replica '${replica}' exists and is not a folder`);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotADirectory) {
      throw new UnsafeConfigError(
        `Replica '${replica}' cannot be a folder: a part of its path is a file`,
      );
    }
    if (e instanceof MimeoError) throw e;
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new UsageError(`Cannot read replica '${replica}': ${(e as Error).message}`);
    }
  }
  const rep = resolvePhysical(replica);
  if (isInside(rep, src) || isInside(src, rep)) {
    const what = src === rep
      ? "are the same folder"
      : isInside(rep, src)
      ? "overlap: the replica is inside the source"
      : "overlap: the source is inside the replica";
    throw new UnsafeConfigError(
      `Source '${source}' and replica '${replica}' ${what} ('${src}', '${rep}')`,
    );
  }
  const man = resolvePhysical(manifest ?? defaultManifestPath(replica));
  checkPermissions([man], writes ? [man] : []);
  if (extra.logFile) checkPermissions([], [resolvePhysical(extra.logFile)]);
  const checks = [
    ["Manifest", man],
    ["Manifest index", indexPathFor(man)],
    ["Log file", extra.logFile],
  ] as const;
  for (const [label, p] of checks) {
    if (!p) continue;
    const abs = label === "Log file" ? resolvePhysical(p) : p;
    if (isInside(abs, src) || isInside(abs, rep)) {
      throw new UnsafeConfigError(
        `${label} '${p}' must be outside the source and the replica (it would be ${
          isInside(abs, src) ? "mirrored from the source" : "deleted from the replica"
        })`,
      );
    }
  }
  if (manifest !== undefined) checkManifestPlace(manifest, man);
  return { source: src, replica: rep, manifest: man };
}

/**
 * Refuse a `--manifest` path that could never be written, before a run copies anything
 * only to fail at its end, every time: a folder, a path below a file, or one whose folder
 * does not exist. (The default path, beside the replica, has the replica's own folder,
 * which the run creates.)
 */
function checkManifestPlace(given: string, man: string): void {
  let st: Deno.FileInfo | undefined;
  try {
    st = Deno.statSync(man);
  } catch (e) {
    if (e instanceof Deno.errors.NotADirectory) {
      throw new UsageError(`Manifest '${given}' cannot be written: a part of its path is a file`);
    }
    if (!(e instanceof Deno.errors.NotFound)) return; // met, and reported, when it is read
  }
  if (st?.isDirectory) {
    throw new UsageError(`Manifest '${given}' is a folder; --manifest names the file to write`);
  }
  if (!st) {
    try {
      if (Deno.statSync(dirname(man)).isDirectory) return;
    } catch { /* reported below */ }
    throw new UsageError(`Manifest '${given}' cannot be written: its folder does not exist`);
  }
}

/**
 * Refuse a run whose manifest could not be written where it goes: a folder mimeo may not
 * write in (a replica that is a mount point in a folder of root's, say) or a read-only
 * one. The run would copy everything, fail at its end, and, with no manifest, re-hash the
 * whole replica on every later run. Unlike the checks above this writes: an empty file
 * beside the manifest, removed at once (permission bits alone do not tell, with ACLs,
 * read-only mounts or root). A folder that does not exist yet is made by the run; other
 * failures (a full disk, which the run's deletions may cure) are left to the run.
 *
 * @example
 * ```ts
 * checkManifestWritable("/media/usb.mimeo.json"); // throws UsageError when /media is read-only
 * ```
 */
export function checkManifestWritable(man: string): void {
  const probe = `${man}.tmp-${Deno.pid}-probe`;
  try {
    Deno.openSync(probe, { write: true, createNew: true, mode: 0o600 }).close();
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (e instanceof Deno.errors.PermissionDenied || code === "EROFS") {
      const why = code === "EROFS" ? "is on a read-only file system" : "is not writable";
      throw new UsageError(
        `Cannot write the manifest '${man}': its folder '${
          dirname(man)
        }' ${why}; pass --manifest FILE to keep it in a folder mimeo can write`,
      );
    }
    return;
  }
  try {
    Deno.removeSync(probe);
  } catch { /* it was written, which is what this checks */ }
}
