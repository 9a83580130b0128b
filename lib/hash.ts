/**
 * Streaming SHA-256 over files, with one reused buffer (no allocation per file).
 *
 * @module
 */
import type * as NodeCrypto from "node:crypto";
import { errorCode, errorMessage } from "./errors.ts";
import type { FileNode, ScanIssue } from "./types.ts";

/** Size of the shared read buffer: 1 MiB. */
export const CHUNK = 1 << 20;
const buffer = new Uint8Array(CHUNK);

let nodeCrypto: typeof NodeCrypto | undefined;

/**
 * A fresh SHA-256 hasher. `node:crypto` is loaded on the first call, not when this module
 * is imported: importing it costs the process 17–20 ms of start-up, which a run with
 * nothing to hash (a no-op, `--help`, a refused configuration) need not pay
 * (bench/README.md).
 */
export function newHasher(): NodeCrypto.Hash {
  nodeCrypto ??= process.getBuiltinModule("node:crypto") as typeof NodeCrypto;
  return nodeCrypto.createHash("sha256");
}

/** Result of hashing one file. */
export interface HashResult {
  sha256: string;
  size: number;
}

/**
 * Hash a file's content with SHA-256, reading it in 1 MiB chunks.
 *
 * @example
 * ```ts
 * const { sha256, size } = hashFileSync("/etc/hostname");
 * ```
 */
export function hashFileSync(path: string): HashResult {
  const file = Deno.openSync(path, { read: true });
  try {
    const h = newHasher();
    let size = 0;
    for (;;) {
      const n = file.readSync(buffer);
      if (n === null || n === 0) break;
      h.update(n === CHUNK ? buffer : buffer.subarray(0, n));
      size += n;
    }
    return { sha256: h.digest("hex"), size };
  } finally {
    file.close();
  }
}

/**
 * Hash a file like {@linkcode hashFileSync}, awaiting `between()` every 64 MiB so signals
 * and timers get a turn during very large files; throws the signal's reason when aborted.
 */
export async function hashFileSliced(
  path: string,
  between: () => Promise<void>,
  signal?: AbortSignal,
): Promise<HashResult> {
  const file = Deno.openSync(path, { read: true });
  try {
    const h = newHasher();
    let size = 0;
    for (let sinceYield = 0;;) {
      signal?.throwIfAborted();
      const n = file.readSync(buffer);
      if (n === null || n === 0) break;
      h.update(n === CHUNK ? buffer : buffer.subarray(0, n));
      size += n;
      if ((sinceYield += n) >= 64 * CHUNK) {
        sinceYield = 0;
        await between();
      }
    }
    return { sha256: h.digest("hex"), size };
  } finally {
    file.close();
  }
}

/**
 * Copy up to `limit` bytes from `from` into `to`, feeding every byte to `hasher` (one read
 * of the source). Returns the bytes copied: fewer than `limit` means the end of the file.
 * Checks `signal` between chunks and throws its reason when aborted.
 */
export function copyAndHashSync(
  from: Deno.FsFile,
  to: Deno.FsFile,
  hasher: NodeCrypto.Hash,
  limit: number,
  signal?: AbortSignal,
): number {
  let size = 0;
  while (size < limit) {
    signal?.throwIfAborted();
    const n = from.readSync(size + CHUNK <= limit ? buffer : buffer.subarray(0, limit - size));
    if (n === null || n === 0) break;
    const chunk = n === CHUNK ? buffer : buffer.subarray(0, n);
    hasher.update(chunk);
    let off = 0;
    while (off < n) off += to.writeSync(chunk.subarray(off));
    size += n;
  }
  return size;
}

/**
 * Hash one file node in place. Returns an issue instead of throwing. If the file changed
 * size while it was read, the hash is dropped (the content is not what was stat'ed).
 */
export function hashNode(abs: string, path: string, n: FileNode): ScanIssue | undefined {
  try {
    const at = Date.now();
    const r = hashFileSync(abs);
    if (r.size !== n.size) {
      return {
        path,
        level: "error",
        code: "CHANGED",
        message: "file changed while it was being read",
      };
    }
    n.sha256 = r.sha256;
    n.hashedAt = at;
    return undefined;
  } catch (e) {
    return { path, level: "error", code: errorCode(e), message: errorMessage(e) };
  }
}
