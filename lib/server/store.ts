/**
 * The server's content store for one replica: contents staged by SHA-256 until a plan
 * places them, partial uploads kept for resuming, and the chunk lists of large contents
 * (for delta transfer). It lives in `DIR/.mimeo/NAME/`, beside the replica and never in
 * it (the replica holds exactly the source's entries), on the same file system (a staged
 * content is linked or renamed, not copied, where it can be).
 *
 * Nothing enters the store unchecked: every content and chunk is hashed as it lands, under
 * a temporary name, and kept only when its hash is the one announced.
 *
 * @module
 */
import { newHasher } from "../hash.ts";
import { CHUNKED_MIN_BYTES, Chunker, type ChunkRef } from "../source/chunker.ts";
import { removeQuietly } from "../target_fs.ts";
import { isSha256, ProtocolError, type Recipe } from "../replica/remote/protocol.ts";

const BUF = 1 << 20;

/** A content that could not be stored (its bytes do not have the announced hash). */
export class ContentMismatchError extends Error {
  constructor(readonly sha256: string) {
    super(`content does not match its announced hash ${sha256.slice(0, 12)}…`);
    this.name = "ContentMismatchError";
  }
}

/** Hash (and, for large contents, chunk) a file: one read. */
export function digestFile(
  abs: string,
  chunk: boolean,
): { sha256: string; size: number; chunks?: ChunkRef[] } {
  const f = Deno.openSync(abs, { read: true });
  try {
    const h = newHasher();
    const chunker = chunk ? new Chunker() : undefined;
    const buf = new Uint8Array(BUF);
    // The chunks' hashes: the bytes of the chunk being filled are hashed as they come.
    const chunks: ChunkRef[] = [];
    let ch = chunk ? newHasher() : undefined;
    let inChunk = 0;
    let size = 0;
    for (;;) {
      const n = f.readSync(buf);
      if (n === null || n === 0) break;
      const b = buf.subarray(0, n);
      h.update(b);
      size += n;
      if (chunker && ch) {
        const before = chunker.lengths.length;
        chunker.push(b);
        let off = 0;
        for (let k = before; k < chunker.lengths.length; k++) {
          const take = chunker.lengths[k] - inChunk;
          ch.update(b.subarray(off, off + take));
          chunks.push([chunker.lengths[k], ch.digest("hex")]);
          ch = newHasher();
          off += take;
          inChunk = 0;
        }
        ch.update(b.subarray(off));
        inChunk += n - off;
      }
    }
    if (chunker && ch) {
      const last = chunker.end();
      if (last.length > chunks.length) chunks.push([last[last.length - 1], ch.digest("hex")]);
    }
    return { sha256: h.digest("hex"), size, chunks: chunk ? chunks : undefined };
  } finally {
    f.close();
  }
}

/** The store of one replica (see the module doc). */
export class ContentStore {
  readonly stage: string;
  readonly chunkDir: string;

  /** @param dir the store's folder, `DIR/.mimeo/NAME` */
  constructor(readonly dir: string) {
    this.stage = `${dir}/stage`;
    this.chunkDir = `${dir}/chunks`;
    Deno.mkdirSync(this.stage, { recursive: true, mode: 0o700 });
    Deno.mkdirSync(this.chunkDir, { recursive: true, mode: 0o700 });
  }

  /** The staged file of a content. */
  blob(sha: string): string {
    return `${this.stage}/${sha}`;
  }

  has(sha: string): boolean {
    try {
      return Deno.lstatSync(this.blob(sha)).isFile;
    } catch {
      return false;
    }
  }

  /** Bytes already received of an interrupted upload of `sha`. */
  partSize(sha: string): number {
    try {
      return Deno.lstatSync(`${this.blob(sha)}.part`).size;
    } catch {
      return 0;
    }
  }

  /** A content's recorded chunk list, if any. */
  chunksOf(sha: string): ChunkRef[] | undefined {
    try {
      const raw = JSON.parse(Deno.readTextFileSync(`${this.chunkDir}/${sha}.json`));
      if (Array.isArray(raw)) return raw as ChunkRef[];
    } catch { /* none yet, or damaged: recomputed when needed */ }
    return undefined;
  }

  recordChunks(sha: string, chunks: ChunkRef[]): void {
    const tmp = `${this.chunkDir}/.${sha}.${crypto.randomUUID()}`;
    Deno.writeTextFileSync(tmp, JSON.stringify(chunks));
    Deno.renameSync(tmp, `${this.chunkDir}/${sha}.json`);
  }

  /**
   * Append `body` to the partial upload of `sha` at `offset` (which must be the bytes
   * received so far). When the content is complete it is checked and staged. Returns the
   * bytes now held (`size` when complete). A body cut short keeps what arrived.
   */
  async receive(
    sha: string,
    size: number,
    offset: number,
    body: ReadableStream<Uint8Array>,
  ): Promise<number> {
    if (this.has(sha)) return size;
    const part = `${this.blob(sha)}.part`;
    const have = this.partSize(sha);
    if (offset !== have) throw new ProtocolError(`upload of ${sha} must resume at ${have}`);
    const f = Deno.openSync(part, { write: true, create: true, append: true, mode: 0o600 });
    let got = have;
    try {
      for await (const b of body) {
        if (got + b.length > size) throw new ProtocolError("upload is longer than announced");
        let off = 0;
        while (off < b.length) off += f.writeSync(b.subarray(off));
        got += b.length;
      }
    } finally {
      f.close();
    }
    if (got < size) return got;
    this.#keep(sha, part, size);
    return size;
  }

  /** Check a complete temporary file against `sha` and stage it (chunking large ones). */
  #keep(sha: string, tmp: string, size: number): void {
    let d: ReturnType<typeof digestFile>;
    try {
      d = digestFile(tmp, size >= CHUNKED_MIN_BYTES);
    } catch (e) {
      removeQuietly(tmp);
      throw e;
    }
    if (d.sha256 !== sha || d.size !== size) {
      removeQuietly(tmp);
      throw new ContentMismatchError(sha);
    }
    if (d.chunks) this.recordChunks(sha, d.chunks);
    Deno.renameSync(tmp, this.blob(sha));
  }

  /** Stage one content given whole in memory (a pack frame); false when its hash differs. */
  put(sha: string, bytes: Uint8Array): boolean {
    if (!isSha256(sha)) return false;
    const h = newHasher();
    h.update(bytes);
    if (h.digest("hex") !== sha) return false;
    if (this.has(sha)) return true;
    const tmp = `${this.blob(sha)}.${crypto.randomUUID()}.tmp`;
    Deno.writeFileSync(tmp, bytes, { mode: 0o600 });
    Deno.renameSync(tmp, this.blob(sha));
    return true;
  }

  /**
   * Stage a content the replica already holds at `abs` (a hard link, so that the replica's
   * path can change meanwhile; a copy where links are not possible). The replica file is
   * checked to still be a plain file; its hash was checked when the replica was scanned,
   * and the copy into place checks it again.
   */
  adopt(sha: string, abs: string): void {
    if (this.has(sha)) return;
    const st = Deno.lstatSync(abs);
    if (!st.isFile) throw new Error("the replica's copy is no longer a file");
    const tmp = `${this.blob(sha)}.${crypto.randomUUID()}.tmp`;
    try {
      Deno.linkSync(abs, tmp);
    } catch {
      Deno.copyFileSync(abs, tmp);
    }
    if (!Deno.lstatSync(tmp).isFile) {
      removeQuietly(tmp);
      throw new Error("the replica's copy is no longer a file");
    }
    Deno.renameSync(tmp, this.blob(sha));
  }

  /**
   * Build content `sha` from a recipe: pieces of the basis file `baseAbs` (the replica's
   * copy of content `recipe.base`) and chunks from the store, then check the whole and
   * stage it.
   */
  assemble(sha: string, recipe: Recipe, baseAbs: string): void {
    if (this.has(sha)) return;
    const tmp = `${this.blob(sha)}.${crypto.randomUUID()}.tmp`;
    const out = Deno.openSync(tmp, { write: true, createNew: true, mode: 0o600 });
    let size = 0;
    let base: Deno.FsFile | undefined;
    try {
      for (const [from, len] of recipe.pieces) {
        let bytes: Uint8Array;
        if (typeof from === "string") {
          bytes = Deno.readFileSync(this.blob(from));
          if (bytes.length !== len) throw new ContentMismatchError(from);
        } else {
          base ??= Deno.openSync(baseAbs, { read: true });
          bytes = new Uint8Array(len);
          base.seekSync(from, Deno.SeekMode.Start);
          let off = 0;
          while (off < len) {
            const n = base.readSync(bytes.subarray(off));
            if (n === null || n === 0) throw new Error("the replica's copy changed");
            off += n;
          }
        }
        let off = 0;
        while (off < bytes.length) off += out.writeSync(bytes.subarray(off));
        size += bytes.length;
      }
    } catch (e) {
      out.close();
      base?.close();
      removeQuietly(tmp);
      throw e;
    }
    out.close();
    base?.close();
    this.#keep(sha, tmp, size);
  }

  /**
   * The chunk list of the replica's file at `abs`, whose content is `sha` (recorded, or
   * computed now and recorded); undefined when the file no longer has that content.
   */
  chunkList(sha: string, abs: string): ChunkRef[] | undefined {
    const known = this.chunksOf(sha);
    if (known) return known;
    const d = digestFile(abs, true);
    if (d.sha256 !== sha || !d.chunks) return undefined;
    this.recordChunks(sha, d.chunks);
    return d.chunks;
  }

  /**
   * After a run: drop staged contents, partial uploads no run resumed for a week, and the
   * chunk lists of contents no longer held.
   */
  prune(keep: Set<string>): void {
    const weekAgo = Date.now() - 7 * 24 * 3600 * 1000;
    for (const d of safeList(this.stage)) {
      const abs = `${this.stage}/${d.name}`;
      if (!d.name.endsWith(".part")) removeQuietly(abs);
      else {
        try {
          if ((Deno.lstatSync(abs).mtime?.getTime() ?? 0) < weekAgo) removeQuietly(abs);
        } catch { /* gone */ }
      }
    }
    for (const d of safeList(this.chunkDir)) {
      const sha = d.name.replace(/\.json$/, "");
      if (!keep.has(sha)) removeQuietly(`${this.chunkDir}/${d.name}`);
    }
  }
}

function safeList(dir: string): Deno.DirEntry[] {
  try {
    return [...Deno.readDirSync(dir)];
  } catch {
    return [];
  }
}
