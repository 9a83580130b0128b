/**
 * Content-defined chunking (FastCDC: Xia et al., "FastCDC: a Fast and Efficient
 * Content-Defined Chunking Approach for Data Deduplication", USENIX ATC 2016), used for
 * delta transfer of large files to a remote replica. A boundary depends only on the bytes
 * just before it, so an insertion or deletion moves the boundaries next to it and leaves
 * every other chunk as it was: a changed large file sends only the chunks the server lacks.
 *
 * Written here rather than taken from npm: the registry has no maintained FastCDC for
 * JavaScript (only Rabin chunkers built for IPFS, in WebAssembly or native code), and the
 * algorithm is this one loop over a gear table. The table is derived from SHA-256 of a
 * fixed seed, so client and server agree on boundaries across versions; changing it (or the
 * sizes below) changes every chunk and is a protocol change.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";

/**
 * Chunk sizes: at least 16 KiB, about 64 KiB on average, at most 256 KiB. Smaller chunks
 * send less around an edit; each costs 36 bytes in the chunk list the server sends back (a
 * 1 GiB file's list is about 600 KB, as rsync's block checksums for it are).
 */
export const CHUNK_MIN = 16 * 1024;
/** See {@linkcode CHUNK_MIN}. */
export const CHUNK_AVG = 64 * 1024;
/** See {@linkcode CHUNK_MIN}. */
export const CHUNK_MAX = 256 * 1024;

/** Files at least this large are chunked for delta transfer (smaller ones go whole). */
export const CHUNKED_MIN_BYTES = 4 * 1024 * 1024;

/** One chunk: its length and the SHA-256 (hex) of its bytes. */
export type ChunkRef = [length: number, sha256: string];

/** 256 pseudo-random 32-bit values, fixed for ever (see the module doc). */
const GEAR: Uint32Array = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i += 8) {
    const d = createHash("sha256").update(`mimeo-fastcdc-gear-${i}`).digest();
    for (let k = 0; k < 8; k++) t[i + k] = d.readUInt32LE(k * 4);
  }
  return t;
})();

// Normalized chunking: a harder condition (more bits) before the average size, an easier
// one after it. The top bits of a shifting gear hash depend on the most bytes (bit 31 on
// the last 32), so the masks take bits from the top.
const MASK_S = 0xffffc000 >>> 0; // 18 bits
const MASK_L = 0xfffc0000 >>> 0; // 14 bits

/**
 * A streaming chunker: feed it the file's bytes in order, collect the boundaries.
 *
 * @example
 * ```ts
 * const c = new Chunker();
 * c.push(bytes);
 * const lengths = c.end(); // chunk lengths, in order
 * ```
 */
export class Chunker {
  #h = 0;
  #len = 0;
  readonly lengths: number[] = [];

  /** Feed the next bytes of the file. */
  push(buf: Uint8Array): void {
    let h = this.#h;
    let len = this.#len;
    const n = buf.length;
    let i = 0;
    while (i < n) {
      // Below the minimum no boundary can fall: skip the hash (FastCDC's cut-point skip).
      if (len < CHUNK_MIN) {
        const skip = Math.min(CHUNK_MIN - len, n - i);
        len += skip;
        i += skip;
        continue;
      }
      let cut = false;
      const mask = len < CHUNK_AVG ? MASK_S : MASK_L;
      const limit = Math.min(n, i + ((len < CHUNK_AVG ? CHUNK_AVG : CHUNK_MAX) - len));
      for (; i < limit; i++) {
        h = ((h << 1) + GEAR[buf[i]]) >>> 0;
        len++;
        if ((h & mask) === 0) {
          cut = true;
          i++;
          break;
        }
      }
      if (cut || len >= CHUNK_MAX) {
        this.lengths.push(len);
        len = 0;
        h = 0;
      }
    }
    this.#h = h;
    this.#len = len;
  }

  /** The last chunk's length is added (when there are bytes left); returns all lengths. */
  end(): number[] {
    if (this.#len > 0) this.lengths.push(this.#len);
    this.#len = 0;
    return this.lengths;
  }
}

/**
 * A chunk list in 36 bytes a chunk (a 4-byte big-endian length, then the 32 bytes of the
 * SHA-256), as base64: how it travels.
 */
export function packChunks(list: readonly ChunkRef[]): string {
  const out = new Uint8Array(list.length * 36);
  const view = new DataView(out.buffer);
  for (let i = 0; i < list.length; i++) {
    const [len, sha] = list[i];
    view.setUint32(i * 36, len);
    for (let k = 0; k < 32; k++) out[i * 36 + 4 + k] = parseInt(sha.slice(k * 2, k * 2 + 2), 16);
  }
  return Buffer.from(out.buffer).toString("base64");
}

/** The inverse of {@linkcode packChunks}; throws on malformed input. */
export function unpackChunks(text: string): ChunkRef[] {
  const bin = Buffer.from(text, "base64");
  if (bin.length % 36 !== 0) throw new Error("malformed chunk list");
  const out: ChunkRef[] = [];
  for (let i = 0; i < bin.length; i += 36) {
    out.push([bin.readUInt32BE(i), bin.toString("hex", i + 4, i + 36)]);
  }
  return out;
}
