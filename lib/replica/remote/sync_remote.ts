/**
 * A run into a remote replica, as steps: the replica side says what it holds (the server
 * scans its folder against its manifest); the source side scans and hashes; the planner
 * (the same pure `plan()`) decides; the safety rules (the same `checkDeletes`, empty-source
 * refusal) refuse before anything is touched; only contents the server holds nowhere are
 * sent (large files by their missing chunks); the server applies the plan with the same
 * apply and record code as a local run and streams its events back.
 *
 * @module
 */
import { type OpFailure, recordFailure } from "../../apply.ts";
import { VERSION } from "../../cli.ts";
import { errorMessage, MimeoError, RefusedError, UsageError } from "../../errors.ts";
import { filterOf, filterRules } from "../../filter.ts";
import { hashNode } from "../../hash.ts";
import { logEvent } from "../../log.ts";
import type { Manifest } from "../../manifest.ts";
import { type CopyOp, type Op, plan } from "../../plan.ts";
import { checkPermissions } from "../../paths.ts";
import { reuseSourceHashes, scanTree } from "../../scan.ts";
import { CHUNKED_MIN_BYTES, type ChunkRef, unpackChunks } from "../../source/chunker.ts";
import { digestFile } from "../../server/store.ts";
import {
  checkDeletes,
  finish,
  newReport,
  rootOps,
  rootStat,
  type SyncOptions,
  type SyncReport,
} from "../../sync.ts";
import type { FileNode, ScanIssue, Tree } from "../../types.ts";
import { RemoteClient, RemoteError } from "./client.ts";
import { decodeTree, encodeTree, type NeedItem, parseRemote, type Recipe } from "./protocol.ts";

/** Files smaller than this go in packs; larger ones as resumable uploads of their own. */
const PACK_FILE_MAX = 1024 * 1024;
/** A pack's size before it is sent. */
const PACK_TARGET = 8 * 1024 * 1024;

function validSource(source: string): string {
  checkPermissions([source], []);
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(source);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new UsageError(`Source '${source}' does not exist`);
    }
    throw new UsageError(`Cannot read source '${source}': ${errorMessage(e)}`);
  }
  if (!st.isDirectory) throw new UsageError(`Source '${source}' is not a folder`);
  return Deno.realPathSync(source);
}

/** The source's stat cache from what the server's manifest recorded of it. */
function cacheManifest(rows: [string, number, number, string, number, number][]): Manifest {
  const entries: Tree = new Map();
  const cache: Manifest["cache"] = new Map();
  for (const [p, size, mtime, sha256, ino, ctime] of rows) {
    entries.set(p, { type: "file", size, mtime, mode: 0, sha256 });
    cache.set(p, { src: [ino, ctime] });
  }
  return { entries, cache };
}

/** Frames for a pack: 32 bytes of SHA-256, a big-endian 4-byte length, the bytes. */
class PackBuilder {
  parts: Uint8Array[] = [];
  size = 0;
  shas: string[] = [];
  add(sha: string, bytes: Uint8Array): void {
    const head = new Uint8Array(36);
    for (let i = 0; i < 32; i++) head[i] = parseInt(sha.slice(i * 2, i * 2 + 2), 16);
    new DataView(head.buffer).setUint32(32, bytes.length);
    this.parts.push(head, bytes);
    this.size += 36 + bytes.length;
    this.shas.push(sha);
  }
  take(): Uint8Array {
    const out = new Uint8Array(this.size);
    let off = 0;
    for (const p of this.parts) {
      out.set(p, off);
      off += p.length;
    }
    this.parts = [];
    this.size = 0;
    this.shas = [];
    return out;
  }
}

/** Read `length` bytes at `offset` of a file. */
function readAt(f: Deno.FsFile, offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  f.seekSync(offset, Deno.SeekMode.Start);
  let off = 0;
  while (off < length) {
    const n = f.readSync(out.subarray(off));
    if (n === null || n === 0) throw new Error("file changed while it was being sent");
    off += n;
  }
  return out;
}

/**
 * Mirror `options.source` into the remote replica `options.replica`
 * (`http(s)://HOST:PORT/NAME`). Same report, refusals and exit codes as a local run.
 */
export async function syncRemote(options: SyncOptions): Promise<SyncReport> {
  const t0 = performance.now();
  const marks: Record<string, number> = {};
  let tMark = t0;
  const mark = (name: string) => {
    const now = performance.now();
    marks[name] = Math.round((now - tMark) * 10) / 10;
    tMark = now;
  };
  const dryRun = options.dryRun ?? false;
  const dirTimes = options.dirTimes ?? true;
  let loc;
  try {
    loc = parseRemote(options.replica);
  } catch (e) {
    throw new UsageError(errorMessage(e));
  }
  if (options.manifest) {
    throw new UsageError(
      "--manifest names a local file: a remote replica's manifest is kept by its server",
    );
  }
  const source = validSource(options.source);
  const filterOptions = {
    patterns: options.exclude,
    ignoreFiles: options.ignoreFiles,
    sourceRoot: source,
  };
  const rules = filterRules(filterOptions);
  const exclude = await filterOf(rules);
  const client = new RemoteClient(loc, { token: options.token, caFile: options.caFile });
  const rootWant = rootStat(source)!;
  const progress = options.progress;
  progress?.({ phase: "scan", opsDone: 0, opsTotal: 0, bytesDone: 0, bytesTotal: 0 });
  const opened = await client.open({
    dryRun,
    checksum: options.checksum ?? false,
    exclude: options.deleteExcluded ? [] : rules,
    rootMode: rootWant.mode,
    client: VERSION,
  });
  try {
    const state = { ...opened, ...(await client.state()) };
    mark("open");
    const rep = decodeTree(state.tree);
    const replicaIssues: ScanIssue[] = state.issues.filter((i) => i.level === "error")
      .map((i) => ({ ...i, side: "replica" as const }));
    const specials = state.issues.filter((i) => i.code === "SPECIAL").map((i) => i.path);
    const now = Date.now();
    const srcScan = scanTree(source, { exclude, signal: options.signal });
    const src = srcScan.tree;
    const issues = [...srcScan.issues];
    if (!options.checksum) reuseSourceHashes(src, cacheManifest(state.sourceCache), now);
    mark("scan");

    // Every source file gets its hash: content travels by hash. A large file that replaces
    // one in the replica is chunked in the same read, for the delta.
    progress?.({ phase: "hash", opsDone: 0, opsTotal: 0, bytesDone: 0, bytesTotal: 0 });
    const chunksOf = new Map<string, ChunkRef[]>();
    let hashedSource = 0;
    for (const [p, n] of src) {
      if (n.type !== "file" || n.sha256) continue;
      hashedSource++;
      const r = rep.get(p);
      if (n.size >= CHUNKED_MIN_BYTES && r?.type === "file") {
        try {
          const at = Date.now();
          const d = digestFile(`${source}/${p}`, true);
          if (d.size !== n.size) {
            throw Object.assign(new Error("file changed while it was being read"), {
              code: "CHANGED",
            });
          }
          n.sha256 = d.sha256;
          n.hashedAt = at;
          chunksOf.set(p, d.chunks!);
        } catch (e) {
          issues.push({
            path: p,
            level: "error",
            code: (e as { code?: string }).code ?? "EIO",
            message: errorMessage(e),
          });
        }
        continue;
      }
      const issue = hashNode(`${source}/${p}`, p, n);
      if (issue) issues.push(issue);
    }
    // An unreadable file is not mirrored this run (and deletes are held back).
    for (const i of issues) {
      const n = src.get(i.path);
      if (i.level === "error" && n?.type === "file" && !n.sha256) src.delete(i.path);
    }
    mark("hash");
    for (const [side, list] of [["source", issues], ["replica", replicaIssues]] as const) {
      for (const i of list) {
        logEvent(i.level, {
          event: i.level === "error" ? "scan-error" : "skip",
          side,
          path: i.path,
          code: i.code,
          message: `${side === "replica" ? "(replica) " : ""}${i.path}: ${i.message}`,
        });
      }
    }
    const sourceErrors = issues.some((i) => i.level === "error");
    if (src.size === 0 && rep.size > 0 && !options.allowEmptySource && !sourceErrors) {
      throw new RefusedError(
        `Source '${options.source}' is empty${
          exclude ? " after exclusions" : ""
        } but the replica holds ${rep.size} entries; refusing to delete them all (is a drive unmounted?). Pass --allow-empty-source to mirror an empty folder`,
      );
    }
    const p = plan(src, rep, {
      allowDelete: !sourceErrors,
      renames: options.renames ?? true,
      dirTimes,
      replicaSpecials: specials,
    });
    mark("plan");
    if (p.deletesSkipped.length) {
      logEvent("warning", {
        event: "deletes-skipped",
        count: p.deletesSkipped.length,
        message:
          `not deleting ${p.deletesSkipped.length} entries from the replica as there were read errors in the source`,
      });
    }
    checkDeletes(p, rep.size, options, !state.manifest && state.existed);

    const report = newReport(
      { source, replica: options.replica, manifest: `${loc.url.replace(/\/+$/, "")}.mimeo.json` },
      dryRun,
      src.size,
    );
    report.ops = p.ops;
    report.scanIssues = [...issues, ...replicaIssues];
    report.deletesSkipped = p.deletesSkipped.length;
    report.hashed = { source: hashedSource, replica: 0 };
    if (sourceErrors || replicaIssues.length) report.exitCode = 1;
    const rootPlanned = rootOps(rootWant, state.root, dryRun, dirTimes, p.ops);
    if (dryRun) {
      report.ops = [...p.ops, ...rootPlanned];
      return finish(report, t0, marks);
    }
    if (
      p.ops.length === 0 && rootPlanned.length === 0 && state.manifest &&
      sameCache(src, state.sourceCache)
    ) {
      report.digest = state.digest;
      return finish(report, t0, marks);
    }

    // Send what the server lacks.
    const failures: OpFailure[] = [];
    const copies = p.ops.filter((o): o is CopyOp => o.op === "copy" || o.op === "update");
    const pathOf = new Map<string, string>();
    const items: NeedItem[] = [];
    for (const op of copies) {
      const n = src.get(op.path) as FileNode;
      op.sha256 = n.sha256;
      if (pathOf.has(n.sha256!)) continue;
      pathOf.set(n.sha256!, op.path);
      const delta = op.op === "update" && chunksOf.has(op.path);
      items.push({ sha256: n.sha256!, size: n.size, path: op.path, ...(delta ? { delta } : {}) });
    }
    const answer = items.length ? await client.need(items) : { whole: [], basis: [] };
    mark("need");
    const basisOf = new Map(answer.basis.map((b) => [b.sha256, b]));
    let bytesTotal = 0;
    for (const w of answer.whole) {
      bytesTotal += (src.get(pathOf.get(w.sha256)!) as FileNode).size - w.have;
    }
    let sent = 0;
    const lost = new Set<string>();
    /** Whose content a pack frame is (a small file's own, or a chunk of a large one). */
    const ownerOf = new Map<string, string>();
    const fail = (sha: string, e: unknown) => {
      if (lost.has(sha)) return;
      lost.add(sha);
      recordFailure(failures, "copy", pathOf.get(sha)!, e, "cannot send: ");
    };
    const changedWhileSent = () =>
      Object.assign(new Error("the file changed while it was being sent"), { code: "CHANGED" });
    const tick = () =>
      progress?.({
        phase: "apply",
        opsDone: 0,
        opsTotal: p.ops.length,
        bytesDone: sent,
        bytesTotal,
      });
    const pack = new PackBuilder();
    const flush = async () => {
      if (!pack.size) return;
      const r = await client.pack(pack.take());
      for (const sha of r.rejected) {
        const owner = ownerOf.get(sha);
        if (owner) fail(owner, changedWhileSent());
      }
      tick();
    };
    const frame = async (owner: string, sha: string, bytes: Uint8Array) => {
      if (ownerOf.has(sha)) return; // (sent already: a chunk that repeats)
      ownerOf.set(sha, owner);
      pack.add(sha, bytes);
      sent += bytes.length;
      if (pack.size >= PACK_TARGET) await flush();
    };
    const recipes: Record<string, Recipe> = {};
    for (const w of answer.whole) {
      const path = pathOf.get(w.sha256)!;
      const n = src.get(path) as FileNode;
      const abs = `${source}/${path}`;
      try {
        // A large file that replaces one: the chunks the old one has are not sent.
        const basis = basisOf.get(w.sha256);
        const chunks = chunksOf.get(path);
        if (basis && chunks && w.have === 0) {
          const old = new Map<string, number>();
          let at = 0;
          for (const [len, c] of unpackChunks(basis.chunks)) {
            if (!old.has(c)) old.set(c, at);
            at += len;
          }
          const pieces: Recipe["pieces"] = [];
          let reused = 0;
          using f = Deno.openSync(abs, { read: true });
          let offset = 0;
          for (const [len, c] of chunks) {
            const from = old.get(c);
            const last = pieces[pieces.length - 1];
            if (from !== undefined) {
              reused += len;
              if (last && typeof last[0] === "number" && last[0] + last[1] === from) last[1] += len;
              else pieces.push([from, len]);
            } else {
              await frame(w.sha256, c, readAt(f, offset, len));
              pieces.push([c, len]);
            }
            offset += len;
          }
          // (With nothing in common, the chunks framed are the whole file: the same recipe.)
          recipes[w.sha256] = { base: basis.base, pieces };
          bytesTotal -= reused;
          continue;
        }
        if (n.size < PACK_FILE_MAX) {
          await frame(w.sha256, w.sha256, Deno.readFileSync(abs));
          continue;
        }
        using f = Deno.openSync(abs, { read: true });
        f.seekSync(w.have, Deno.SeekMode.Start);
        const have = await client.blob(w.sha256, n.size, w.have, f.readable);
        sent += n.size - w.have;
        tick();
        if (have !== n.size) throw new Error("the server did not receive all of it");
      } catch (e) {
        if (e instanceof MimeoError && !(e instanceof RemoteError)) throw e;
        if (e instanceof RemoteError && !/does not match/.test(e.message)) throw e;
        fail(w.sha256, e instanceof RemoteError ? changedWhileSent() : e);
      }
    }
    await flush();
    mark("send");

    // Apply on the server; its events are this run's events.
    const ops: Op[] = lost.size
      ? p.ops.filter((o) => !((o.op === "copy" || o.op === "update") && lost.has(o.sha256!)))
      : p.ops;
    let opsDone = 0;
    const result = await client.apply({
      ops,
      source: encodeTree(src),
      recipes,
      root: rootWant,
      dirTimes,
      exclude: options.deleteExcluded ? [] : rules,
    }, (l) => {
      logEvent(l.log, l.ev as { event: string });
      if (l.log === "info" || l.log === "error") {
        opsDone++;
        progress?.({ phase: "apply", opsDone, opsTotal: ops.length, bytesDone: sent, bytesTotal });
      }
    });
    mark("apply");
    report.ops = [...p.ops, ...result.rootOps];
    report.done = result.done;
    report.failures = [...failures, ...(result.failures as OpFailure[])];
    report.bytesCopied = sent;
    report.stopped = result.stopped;
    report.digest = result.digest;
    report.manifestWritten = result.manifestWritten;
    return finish(report, t0, marks);
  } finally {
    await client.close();
  }
}

/** Whether the source's fingerprints are the ones the manifest recorded (nothing to record). */
function sameCache(src: Tree, rows: [string, number, number, string, number, number][]): boolean {
  let files = 0;
  for (const n of src.values()) if (n.type === "file") files++;
  if (files !== rows.length) return false;
  for (const [p, size, mtime, sha, ino, ctime] of rows) {
    const n = src.get(p);
    if (
      n?.type !== "file" || n.size !== size || n.mtime !== mtime || n.sha256 !== sha || !n.fp ||
      n.fp[0] !== ino || n.fp[1] !== ctime
    ) return false;
  }
  return true;
}
