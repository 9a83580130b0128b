/**
 * `manifest DIR` (hash a folder into a manifest) and `verify REPLICA` (re-hash a replica
 * against its manifest).
 *
 * @module
 */
import { errorMessage, UsageError } from "./errors.ts";
import { buildFilter } from "./filter.ts";
import { type Manifest, ManifestError, modeString, readManifest } from "./manifest.ts";
import { checkPermissions, defaultManifestPath, resolvePhysical } from "./paths.ts";
import { hashNode } from "./hash.ts";
import { lockReplica } from "./lock.ts";
import { scanTree } from "./scan.ts";
import { yieldToEventLoop } from "./target_fs.ts";
import type { ScanIssue } from "./types.ts";

/** Options for {@linkcode buildManifest}. */
export interface BuildManifestOptions {
  exclude?: string[];
  ignoreFiles?: string[];
  signal?: AbortSignal;
}

/** A folder's manifest plus anything that could not be read. */
export interface BuiltManifest {
  manifest: Manifest;
  issues: ScanIssue[];
}

function requireDir(dir: string, what: string): string {
  checkPermissions([resolvePhysical(dir)], []);
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`${what} '${dir}' does not exist`);
    throw new UsageError(`Cannot read ${what.toLowerCase()} '${dir}': ${(e as Error).message}`);
  }
  if (!st.isDirectory) throw new UsageError(`${what} '${dir}' is not a folder`);
  return Deno.realPathSync(dir);
}

/**
 * Walk and hash every file of a folder into a manifest (no stat cache).
 *
 * @example
 * ```ts
 * const { manifest } = await buildManifest("dist");
 * console.log(treeDigest(manifest.entries));
 * ```
 */
export async function buildManifest(
  dir: string,
  options: BuildManifestOptions = {},
): Promise<BuiltManifest> {
  const root = requireDir(dir, "Folder");
  const exclude = await buildFilter({
    patterns: options.exclude,
    ignoreFiles: options.ignoreFiles,
  });
  const { tree, issues } = scanTree(root, { exclude, signal: options.signal });
  let last = performance.now();
  for (const [p, n] of tree) {
    if (n.type !== "file") continue;
    const issue = hashNode(`${root}/${p}`, p, n);
    if (issue) {
      issues.push(issue);
      tree.delete(p);
    }
    if (performance.now() - last > 50) {
      options.signal?.throwIfAborted();
      await yieldToEventLoop();
      last = performance.now();
    }
  }
  return { manifest: { entries: tree, cache: new Map() }, issues };
}

/** One difference found by {@linkcode verify}. */
export interface Mismatch {
  path: string;
  problem: "missing" | "extra" | "type" | "content" | "mode" | "mtime" | "target" | "unreadable";
  expected?: string;
  actual?: string;
}

/** Result of {@linkcode verify}. */
export interface VerifyReport {
  replica: string;
  manifest: string;
  checked: number;
  mismatches: Mismatch[];
}

/** Options for {@linkcode verify}. */
export interface VerifyOptions {
  /** @default "<replica>.mimeo.json" */
  manifest?: string;
  exclude?: string[];
  signal?: AbortSignal;
}

/**
 * Re-hash every file of a replica and compare everything with its manifest.
 *
 * @example
 * ```ts
 * const r = await verify("backup");
 * if (r.mismatches.length) Deno.exit(1);
 * ```
 */
export async function verify(replica: string, options: VerifyOptions = {}): Promise<VerifyReport> {
  const root = requireDir(replica, "Replica");
  using _lock = lockReplica(root, "verify");
  const manifestPath = resolvePhysical(options.manifest ?? defaultManifestPath(replica));
  checkPermissions([manifestPath], []);
  let m: Manifest;
  try {
    m = readManifest(manifestPath, true);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) {
      throw new UsageError(`No manifest at '${manifestPath}' (use --manifest to name it)`);
    }
    if (e instanceof ManifestError) throw new UsageError(e.message);
    throw new UsageError(`Cannot read manifest '${manifestPath}': ${errorMessage(e)}`);
  }
  const exclude = await buildFilter({ patterns: options.exclude });
  const { tree, issues } = scanTree(root, { exclude, signal: options.signal });
  const mismatches: Mismatch[] = issues.filter((i) => i.level === "error").map((i) => ({
    path: i.path,
    problem: "unreadable" as const,
    actual: i.message,
  }));
  let checked = 0;
  let last = performance.now();
  for (const [p, want] of m.entries) {
    const got = tree.get(p);
    checked++;
    if (!got) {
      mismatches.push({ path: p, problem: "missing", expected: want.type });
      continue;
    }
    if (got.type !== want.type) {
      mismatches.push({ path: p, problem: "type", expected: want.type, actual: got.type });
      continue;
    }
    if (want.type === "file" && got.type === "file") {
      if (got.size !== want.size) {
        mismatches.push({
          path: p,
          problem: "content",
          expected: `${want.size} bytes`,
          actual: `${got.size} bytes`,
        });
      } else {
        const issue = hashNode(`${root}/${p}`, p, got);
        if (issue) mismatches.push({ path: p, problem: "unreadable", actual: issue.message });
        else if (got.sha256 !== want.sha256) {
          mismatches.push({
            path: p,
            problem: "content",
            expected: `sha256 ${want.sha256}`,
            actual: `sha256 ${got.sha256}`,
          });
        }
      }
      if (got.mode !== want.mode) {
        mismatches.push({
          path: p,
          problem: "mode",
          expected: modeString(want.mode),
          actual: modeString(got.mode),
        });
      }
      if (got.mtime !== want.mtime) {
        mismatches.push({
          path: p,
          problem: "mtime",
          expected: new Date(want.mtime).toISOString(),
          actual: new Date(got.mtime).toISOString(),
        });
      }
    } else if (want.type === "dir" && got.type === "dir" && got.mode !== want.mode) {
      mismatches.push({
        path: p,
        problem: "mode",
        expected: modeString(want.mode),
        actual: modeString(got.mode),
      });
    } else if (want.type === "symlink" && got.type === "symlink" && got.target !== want.target) {
      mismatches.push({ path: p, problem: "target", expected: want.target, actual: got.target });
    }
    if (performance.now() - last > 50) {
      options.signal?.throwIfAborted();
      await yieldToEventLoop();
      last = performance.now();
    }
  }
  for (const p of tree.keys()) {
    if (!m.entries.has(p)) {
      mismatches.push({ path: p, problem: "extra", actual: tree.get(p)!.type });
    }
  }
  mismatches.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return { replica: root, manifest: manifestPath, checked, mismatches };
}
