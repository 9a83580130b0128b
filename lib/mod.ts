/**
 * mimeo as a library: the same engine the CLI runs.
 *
 * @example
 * ```ts
 * import { sync, verify } from "./lib/mod.ts";
 * const report = await sync({ source: "dist", replica: "/srv/www", exclude: ["*.map"] });
 * console.log(report.done, report.exitCode);
 * const check = await verify("/srv/www");
 * console.log(check.mismatches.length === 0);
 * ```
 *
 * @module
 */
export {
  type ProgressInfo,
  summaryFields,
  sync,
  type SyncOptions,
  type SyncReport,
} from "./sync.ts";
export { buildManifest, type Mismatch, verify, type VerifyReport } from "./verify.ts";
export { applyOp, type Op, type Plan, plan, type PlanOptions } from "./plan.ts";
export {
  type Manifest,
  parseManifest,
  readManifest,
  serializeManifest,
  treeDigest,
  writeManifest,
} from "./manifest.ts";
export { scanTree } from "./scan.ts";
export {
  BusyError,
  ExitCode,
  MimeoError,
  RefusedError,
  UnsafeConfigError,
  UsageError,
} from "./errors.ts";
export type { DirNode, FileNode, LinkNode, Node, Tree } from "./types.ts";
