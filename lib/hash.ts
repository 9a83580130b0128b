/**
 * Streaming SHA-256 over files, with one reused buffer (no allocation per file).
 *
 * @module
 */
import { createHash, type Hash } from "node:crypto";

/** Size of the shared read buffer: 1 MiB. */
export const CHUNK = 1 << 20;
const buffer = new Uint8Array(CHUNK);

/** A fresh SHA-256 hasher. */
export function newHasher(): Hash {
  return createHash("sha256");
}

/** The SHA-256 of an empty input. */
export const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

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
    const h = createHash("sha256");
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
 * Copy `from` into the already-open `to`, hashing every byte on the way (one read of the
 * source). Checks `signal` between chunks and throws its reason when aborted.
 */
export function copyAndHashSync(
  from: Deno.FsFile,
  to: Deno.FsFile,
  signal?: AbortSignal,
): HashResult {
  const h = createHash("sha256");
  let size = 0;
  for (;;) {
    signal?.throwIfAborted();
    const n = from.readSync(buffer);
    if (n === null || n === 0) break;
    const chunk = n === CHUNK ? buffer : buffer.subarray(0, n);
    h.update(chunk);
    let off = 0;
    while (off < n) off += to.writeSync(chunk.subarray(off));
    size += n;
  }
  return { sha256: h.digest("hex"), size };
}
