/**
 * Benchmark runner: mimeo vs `rsync -a --delete` vs `rclone sync`, same trees, same
 * scenarios, tool order rotated every repetition, every replica checked against its source.
 *
 * ```sh
 * deno task bench                          # everything, scale 1, 5 reps
 * deno task bench --quick                  # scale 0.05, 1 rep (smoke run, < 1 min)
 * deno task bench --scenarios 1,2,3 --reps 3 --tools rsync,rclone --out bench/results.md
 * ```
 *
 * See bench/README.md for what each scenario does.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import {
  generateTree,
  mainTreeSpec,
  manyTreeSpec,
  mutate,
  removeIfExists,
  renameLargestTop,
  type TreeSpec,
  type TreeStats,
  walk,
  type WalkEntry,
  writeBigFile,
} from "./gen.ts";
import { MIMEO_FLAGS, MIMEO_MAIN } from "./common.ts";

// ---------------------------------------------------------------------------------------------
// Options

type Tool = "mimeo" | "rsync" | "rclone";
const ALL_TOOLS: readonly Tool[] = ["mimeo", "rsync", "rclone"];
const ALL_SCENARIOS = ["1", "2", "3", "4", "5", "6"];

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const REPO_DIR = dirname(BENCH_DIR);

const GiB = 1024 * 1024 * 1024;

interface Options {
  scale: number;
  reps: number;
  scenarios: string[];
  tools: Tool[];
  dir: string;
  keep: boolean;
  out?: string;
  seed: number;
  verify: "auto" | "every" | "last";
  timeout: number;
  flush: boolean;
}

const HELP = `Usage: deno task bench [options]

  --quick            smoke run: --scale 0.05 --reps 1 (explicit --scale/--reps win)
  --scale S          shrink file counts and large-file sizes (default 1)
  --reps N           repetitions per scenario; the median is reported (default 5)
  --scenarios LIST   e.g. 1,2,3 (default 1,2,3,4,5,6)
  --tools LIST       subset of mimeo,rsync,rclone (default all three)
  --dir DIR          working directory (default bench/.work)
  --out FILE         also write the results (markdown) to FILE
  --seed N           tree/mutation seed (default 1)
  --verify MODE      when to check the replicas: every rep, the last rep of each scenario,
                     or auto (default): every rep, but only the last one in scenario 6
  --timeout SEC      kill a tool run after SEC seconds (default 1800)
  --no-flush         do not run \`sync\` (flush dirty pages) before each timed command
  --keep             keep the generated trees and replicas
  -h, --help         this help
`;

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      quick: { type: "boolean", default: false },
      scale: { type: "string" },
      reps: { type: "string" },
      scenarios: { type: "string" },
      tools: { type: "string" },
      dir: { type: "string" },
      out: { type: "string" },
      seed: { type: "string", default: "1" },
      verify: { type: "string", default: "auto" },
      timeout: { type: "string", default: "1800" },
      "no-flush": { type: "boolean", default: false },
      keep: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    Deno.exit(0);
  }
  const num = (name: string, v: string, min: number): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) {
      throw new Error(`--${name}: expected a number >= ${min}, got '${v}'`);
    }
    return n;
  };
  const scale = num("scale", values.scale ?? (values.quick ? "0.05" : "1"), 1e-6);
  const reps = Math.floor(num("reps", values.reps ?? (values.quick ? "1" : "5"), 1));
  const scenarios = (values.scenarios ?? ALL_SCENARIOS.join(",")).split(",").map((s) => s.trim())
    .filter((s) => s !== "");
  for (const s of scenarios) {
    if (!ALL_SCENARIOS.includes(s)) throw new Error(`--scenarios: unknown scenario '${s}' (1-6)`);
  }
  const tools = (values.tools ?? ALL_TOOLS.join(",")).split(",").map((s) => s.trim())
    .filter((s) => s !== "");
  for (const t of tools) {
    if (!(ALL_TOOLS as readonly string[]).includes(t)) {
      throw new Error(`--tools: unknown tool '${t}' (mimeo, rsync, rclone)`);
    }
  }
  if (values.verify !== "auto" && values.verify !== "every" && values.verify !== "last") {
    throw new Error(`--verify: expected 'auto', 'every' or 'last', got '${values.verify}'`);
  }
  return {
    scale,
    reps,
    scenarios: ALL_SCENARIOS.filter((s) => scenarios.includes(s)),
    tools: ALL_TOOLS.filter((t) => tools.includes(t)),
    dir: resolve(values.dir ?? join(BENCH_DIR, ".work")),
    keep: values.keep,
    out: values.out,
    seed: Math.floor(num("seed", values.seed, 0)),
    verify: values.verify,
    timeout: num("timeout", values.timeout, 1),
    flush: !values["no-flush"],
  };
}

// ---------------------------------------------------------------------------------------------
// Small helpers

function log(msg: string): void {
  console.error(msg);
}

const decoder = new TextDecoder();

/** Runs a command to completion (untimed); never throws for a missing binary. */
function run(cmd: string, args: string[], opts: { cwd?: string } = {}): {
  ok: boolean;
  code: number;
  out: string;
} {
  try {
    const r = new Deno.Command(cmd, { args, cwd: opts.cwd, stdin: "null" }).outputSync();
    return {
      ok: r.success,
      code: r.code,
      out: decoder.decode(r.stdout) + decoder.decode(r.stderr),
    };
  } catch (e) {
    return { ok: false, code: -1, out: e instanceof Error ? e.message : String(e) };
  }
}

function firstLine(s: string): string {
  return s.split("\n").map((l) => l.trim()).find((l) => l !== "") ?? "";
}

function lastLines(s: string, n: number): string {
  return s.trim().split("\n").slice(-n).join("\n");
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function fmtSecs(s: number): string {
  return s >= 10 ? s.toFixed(2) : s.toFixed(3);
}

/** A share (0–1) as a whole percentage. */
function fmtPct(x: number): string {
  return `${Math.round(x * 100)}%`;
}

function fmtMB(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function rotate<T>(xs: readonly T[], by: number): T[] {
  const k = xs.length === 0 ? 0 : by % xs.length;
  return [...xs.slice(k), ...xs.slice(0, k)];
}

// ---------------------------------------------------------------------------------------------
// Tools

function ensureTools(opts: Options): void {
  const need: string[] = [];
  if (opts.tools.includes("rsync") && !run("rsync", ["--version"]).ok) need.push("rsync");
  if (opts.tools.includes("rclone") && !run("rclone", ["version"]).ok) need.push("rclone");
  if (!run("/usr/bin/time", ["-f", "%M", "true"]).ok) need.push("time");
  if (!run("timeout", ["1", "true"]).ok) throw new Error("coreutils `timeout` is missing");
  if (need.length === 0) return;
  log(`missing: ${need.join(", ")}; installing with apt-get (rsync rclone hyperfine time)`);
  const update = run("apt-get", ["update"]);
  const install = update.ok
    ? run("apt-get", ["install", "-y", "rsync", "rclone", "hyperfine", "time"])
    : update;
  if (!install.ok) {
    throw new Error(`apt-get failed (are you root?):\n${lastLines(install.out, 10)}`);
  }
}

function toolVersion(tool: Tool): string {
  switch (tool) {
    case "rsync": {
      const m = /version\s+(\S+)/.exec(run("rsync", ["--version"]).out);
      return `rsync ${m ? m[1] : "?"}`;
    }
    case "rclone":
      return firstLine(run("rclone", ["version"]).out) || "rclone ?";
    case "mimeo": {
      let version = "?";
      try {
        version = JSON.parse(Deno.readTextFileSync(join(REPO_DIR, "deno.json"))).version ?? "?";
      } catch {
        // keep "?"
      }
      const git = run("git", ["describe", "--always", "--dirty"], { cwd: REPO_DIR });
      return `mimeo ${version}${
        git.ok ? ` (git ${git.out.trim()})` : ""
      } on deno ${Deno.version.deno}`;
    }
  }
}

function toolCommand(
  tool: Tool,
  src: string,
  dst: string,
): { cmd: string[]; cwd?: string; env?: Record<string, string> } {
  switch (tool) {
    case "mimeo":
      return {
        cmd: [
          Deno.execPath(),
          "run",
          ...MIMEO_FLAGS,
          MIMEO_MAIN,
          "sync",
          src,
          dst,
          "--quiet",
        ],
        cwd: REPO_DIR,
      };
    case "rsync":
      return { cmd: ["rsync", "-a", "--delete", `${src}/`, `${dst}/`] };
    case "rclone":
      return {
        cmd: ["rclone", "sync", "--links", "--create-empty-src-dirs", src, dst],
        env: { RCLONE_CONFIG: "/dev/null" },
      };
  }
}

/** mimeo keeps its manifest and index beside the replica: `DST.mimeo.json`, `DST.mimeo.idx` (plus any temp siblings). */
async function resetReplica(tool: Tool, dst: string): Promise<void> {
  await removeParallel([dst]);
  if (tool !== "mimeo") return;
  removeIfExists(`${dst}.mimeo.json`);
  const prefix = `${basename(dst)}.mimeo.`;
  try {
    for (const e of Deno.readDirSync(dirname(dst))) {
      if (e.name.startsWith(prefix)) removeIfExists(join(dirname(dst), e.name));
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/**
 * Removes `paths` recursively, each top folder's children concurrently (Deno runs async
 * removals on a thread pool; on this machine that is about twice as fast for big trees).
 */
async function removeParallel(paths: string[]): Promise<void> {
  const jobs: Promise<void>[] = [];
  for (const p of paths) {
    let children: string[];
    try {
      children = [...Deno.readDirSync(p)].map((e) => join(p, e.name));
    } catch {
      removeIfExists(p); // a file, or missing
      continue;
    }
    for (const c of children) jobs.push(Deno.remove(c, { recursive: true }));
  }
  await Promise.all(jobs);
  for (const p of paths) removeIfExists(p);
}

interface RunResult {
  ok: boolean;
  seconds: number;
  rssKB: number | null;
  /** CPUs' worth of work done by other processes during the run (busy CPU-s / wall s). */
  otherCpus: number | null;
  /**
   * Share of the run's wall time in which some task of the machine (the tool's included)
   * was stalled on I/O: the growth of "some total" in /proc/pressure/io, over the wall time.
   */
  ioStall: number | null;
  code: number;
  timedOut: boolean;
  output: string;
}

let currentChild: Deno.ChildProcess | null = null;

/** Busy CPU time of the whole machine so far (all CPUs, /proc/stat, USER_HZ = 100). */
function cpuBusySeconds(): number | null {
  const fields = safeRead("/proc/stat").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  if (fields.length < 8 || fields.some((f) => !Number.isFinite(f))) return null;
  // user nice system idle iowait irq softirq steal ...: everything but idle and iowait
  const busy = fields.slice(0, 8).reduce((a, b) => a + b, 0) - fields[3] - fields[4];
  return busy / 100;
}

/** Microseconds some task has been stalled on I/O since boot (PSI), when the kernel says. */
function ioStallMicros(): number | null {
  const m = /^some .*total=(\d+)/m.exec(safeRead("/proc/pressure/io"));
  return m ? Number(m[1]) : null;
}

/**
 * Runs one sync as `timeout -k 10 T /usr/bin/time -f '%M %U %S' -o F CMD...` and measures wall
 * time with performance.now() around the spawn. %M is the peak RSS (KB) of the largest process
 * among the tool and its waited-for children.
 */
async function runTool(tool: Tool, src: string, dst: string, opts: Options): Promise<RunResult> {
  const { cmd, cwd, env } = toolCommand(tool, src, dst);
  const rssFile = join(opts.dir, "tmp", `rss-${tool}.txt`);
  removeIfExists(rssFile);
  const args = [
    "-k",
    "10",
    String(opts.timeout),
    "/usr/bin/time",
    "-f",
    "%M %U %S",
    "-o",
    rssFile,
    ...cmd,
  ];
  const command = new Deno.Command("timeout", {
    args,
    cwd,
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
  const busy0 = cpuBusySeconds();
  const io0 = ioStallMicros();
  const t0 = performance.now();
  const child = command.spawn();
  currentChild = child;
  const out = await child.output();
  const seconds = (performance.now() - t0) / 1000;
  currentChild = null;
  const busy1 = cpuBusySeconds();
  const io1 = ioStallMicros();
  const ioStall = io0 !== null && io1 !== null && seconds > 0
    ? Math.min(1, Math.max(0, (io1 - io0) / 1e6 / seconds))
    : null;
  let rssKB: number | null = null;
  let otherCpus: number | null = null;
  try {
    const lines = Deno.readTextFileSync(rssFile).trim().split("\n");
    const [maxrss, user, sys] = lines[lines.length - 1].split(" ").map(Number);
    if (Number.isFinite(maxrss) && maxrss > 0) rssKB = maxrss;
    if (busy0 !== null && busy1 !== null && Number.isFinite(user + sys) && seconds > 0) {
      otherCpus = Math.max(0, (busy1 - busy0 - user - sys) / seconds);
    }
  } catch {
    // time was killed or never ran
  }
  return {
    ok: out.success,
    seconds,
    rssKB,
    otherCpus,
    ioStall,
    code: out.code,
    timedOut: out.code === 124,
    output: decoder.decode(out.stdout) + decoder.decode(out.stderr),
  };
}

// ---------------------------------------------------------------------------------------------
// Verification

interface VerifyResult {
  diffCount: number;
  diffs: string[];
  mtimeDiffs: number;
  modeDiffs: number;
  examples: string[];
}

const MAX_WHOLE = 32 * 1024 * 1024;
const CMP_CHUNK = 8 * 1024 * 1024;

function readFull(file: Deno.FsFile, buf: Uint8Array): number {
  let off = 0;
  while (off < buf.length) {
    const n = file.readSync(buf.subarray(off));
    if (n === null || n === 0) break;
    off += n;
  }
  return off;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b);
}

/** Which of `dsts` hold a byte-identical copy of `src` (sizes already known equal). */
function sameContent(src: string, dsts: string[], size: number): boolean[] {
  if (size <= MAX_WHOLE) {
    const a = Deno.readFileSync(src);
    return dsts.map((d) => bytesEqual(a, Deno.readFileSync(d)));
  }
  const equal = dsts.map(() => true);
  const sf = Deno.openSync(src);
  const dfs = dsts.map((d) => Deno.openSync(d));
  try {
    const a = new Uint8Array(CMP_CHUNK);
    const b = new Uint8Array(CMP_CHUNK);
    for (;;) {
      const n = readFull(sf, a);
      if (n === 0) break;
      for (let i = 0; i < dfs.length; i++) {
        if (!equal[i]) continue;
        const m = readFull(dfs[i], b);
        if (m !== n || !bytesEqual(a.subarray(0, n), b.subarray(0, m))) equal[i] = false;
      }
      if (n < CMP_CHUNK) break;
    }
  } finally {
    sf.close();
    for (const f of dfs) f.close();
  }
  return equal;
}

function walkMap(root: string): Map<string, WalkEntry> {
  try {
    return new Map(walk(root).map((e) => [e.path, e]));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return new Map();
    throw e;
  }
}

/**
 * Compares every replica in `dsts` with `src`: same relative paths, same types, same symlink
 * targets (not followed), byte-identical regular files. File and folder mtimes (to the ms)
 * and file permission bits are compared too but only counted as warnings.
 */
export function verifyAll(src: string, dsts: string[]): VerifyResult[] {
  const s = walkMap(src);
  const results: VerifyResult[] = dsts.map(() => ({
    diffCount: 0,
    diffs: [],
    mtimeDiffs: 0,
    modeDiffs: 0,
    examples: [],
  }));
  const diff = (r: VerifyResult, msg: string) => {
    r.diffCount++;
    if (r.diffs.length < 5) r.diffs.push(msg);
  };
  const maps = dsts.map(walkMap);
  const toCompare = new Map<string, number[]>(); // path -> indices of dsts to byte-compare
  maps.forEach((d, i) => {
    const r = results[i];
    for (const [path, se] of s) {
      const de = d.get(path);
      if (!de) {
        diff(r, `missing ${se.type} ${path}`);
        continue;
      }
      if (de.type !== se.type) {
        diff(r, `type ${path}: ${de.type}, want ${se.type}`);
        continue;
      }
      if (se.type === "symlink" && de.target !== se.target) {
        diff(r, `symlink ${path} -> ${de.target}, want -> ${se.target}`);
      }
      if (se.type === "dir" && de.mtimeMs !== se.mtimeMs && r.mtimeDiffs++ === 0) {
        r.examples.push(
          `mtime ${path}/: ${new Date(de.mtimeMs).toISOString()}, source ${
            new Date(se.mtimeMs).toISOString()
          }`,
        );
      }
      if (se.type !== "file") continue;
      if (de.size !== se.size) {
        diff(r, `size ${path}: ${de.size}, want ${se.size}`);
        continue;
      }
      if (de.mtimeMs !== se.mtimeMs) {
        if (r.mtimeDiffs++ === 0) {
          r.examples.push(
            `mtime ${path}: ${new Date(de.mtimeMs).toISOString()}, source ${
              new Date(se.mtimeMs).toISOString()
            }`,
          );
        }
      }
      if (de.mode !== se.mode) {
        if (r.modeDiffs++ === 0) {
          r.examples.push(`mode ${path}: ${de.mode.toString(8)}, source ${se.mode.toString(8)}`);
        }
      }
      const list = toCompare.get(path);
      if (list) list.push(i);
      else toCompare.set(path, [i]);
    }
    for (const [path, de] of d) if (!s.has(path)) diff(r, `extra ${de.type} ${path}`);
  });
  for (const [path, idx] of toCompare) {
    const size = s.get(path)!.size;
    if (size === 0) continue;
    const eq = sameContent(join(src, path), idx.map((i) => join(dsts[i], path)), size);
    eq.forEach((ok, k) => {
      if (!ok) diff(results[idx[k]], `content ${path}`);
    });
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// Results

interface Series {
  times: number[];
  rssKB: number[];
  otherCpus: number[];
  ioStall: number[];
  failed: number;
  wrong: number;
  verified: number;
  mtimeWarn: number;
  modeWarn: number;
  notes: string[];
}

interface Row {
  id: string;
  title: string;
  detail: string[];
  per: Map<Tool, Series>;
  /** Wall times of bench/floor.ts on the same trees (rows that walk both whole trees). */
  floor?: number[];
}

function newRow(id: string, title: string, tools: Tool[]): Row {
  const per = new Map<Tool, Series>();
  for (const t of tools) {
    per.set(t, {
      times: [],
      rssKB: [],
      otherCpus: [],
      ioStall: [],
      failed: 0,
      wrong: 0,
      verified: 0,
      mtimeWarn: 0,
      modeWarn: 0,
      notes: [],
    });
  }
  return { id, title, detail: [], per };
}

/**
 * Time bench/floor.ts (a bare stat walk of both trees on two threads, Deno's least cost
 * for noticing a change) on the source and mimeo's replica, with mimeo's V8 flags.
 */
async function timeFloor(src: string, dst: string): Promise<number | null> {
  const flags = MIMEO_FLAGS.filter((f) => !f.startsWith("--allow-write"));
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...flags, join(BENCH_DIR, "floor.ts"), src, dst],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  const seconds = (performance.now() - t0) / 1000;
  if (!out.success) {
    log(`  (floor walk failed: ${firstLine(decoder.decode(out.stderr))})`);
    return null;
  }
  return seconds;
}

function note(series: Series, msg: string): void {
  if (series.notes.length < 3 && !series.notes.includes(msg)) series.notes.push(msg);
}

/** The median if every rep succeeded and verified; null otherwise. */
function goodMedian(s: Series | undefined): number | null {
  if (!s || s.failed > 0 || s.wrong > 0 || s.times.length === 0) return null;
  return median(s.times);
}

function timeCell(s: Series | undefined): string {
  if (!s) return "—";
  if (s.failed > 0) {
    return s.failed === s.times.length + s.failed ? "FAILED" : `FAILED ${s.failed}×`;
  }
  if (s.times.length === 0) return "—";
  const m = fmtSecs(median(s.times));
  return s.wrong > 0 ? `WRONG (${m})` : m;
}

function ratioCell(a: Series | undefined, b: Series | undefined): string {
  const x = goodMedian(a);
  const y = goodMedian(b);
  if (x === null || y === null || y === 0) return "—";
  return `${(x / y).toFixed(2)}×`;
}

function rssCell(s: Series | undefined): string {
  if (!s || s.rssKB.length === 0) return "—";
  return (Math.max(...s.rssKB) / 1024).toFixed(0);
}

function correctnessCell(row: Row): string {
  const parts: string[] = [];
  for (const [tool, s] of row.per) {
    let status = s.failed > 0 && s.times.length === 0
      ? "FAILED"
      : s.wrong > 0
      ? "WRONG"
      : s.verified > 0
      ? "OK"
      : "unchecked";
    if (s.failed > 0 && s.times.length > 0) status += ` (${s.failed} failed)`;
    const warn: string[] = [];
    if (s.mtimeWarn > 0) warn.push(`mtime≠ ${s.mtimeWarn}`);
    if (s.modeWarn > 0) warn.push(`mode≠ ${s.modeWarn}`);
    parts.push(`${tool} ${status}${warn.length ? ` (warn: ${warn.join(", ")})` : ""}`);
  }
  return parts.join("; ");
}

// ---------------------------------------------------------------------------------------------
// The benchmark

interface Tree {
  name: string;
  spec: TreeSpec;
  base: string;
  src: string;
  dst: Map<Tool, string>;
  stats: TreeStats | null;
  inSync: Map<Tool, boolean>;
}

class Bench {
  readonly rows: Row[] = [];
  readonly trees = new Map<string, Tree>();

  constructor(readonly opts: Options) {}

  async tree(name: "main" | "many"): Promise<Tree> {
    let t = this.trees.get(name);
    if (t) return t;
    const base = join(this.opts.dir, name);
    const spec = name === "main"
      ? mainTreeSpec(this.opts.scale, this.opts.seed)
      : manyTreeSpec(this.opts.scale, this.opts.seed);
    t = {
      name,
      spec,
      base,
      src: join(base, "src"),
      dst: new Map(this.opts.tools.map((tool) => [tool, join(base, `dst-${tool}`)])),
      stats: null,
      inSync: new Map(this.opts.tools.map((tool) => [tool, false])),
    };
    await removeParallel([base]);
    Deno.mkdirSync(base, { recursive: true });
    const t0 = performance.now();
    log(`generating ${name} tree in ${t.src} ...`);
    t.stats = generateTree(t.src, spec);
    log(
      `  ${t.stats.files} files, ${t.stats.dirs} folders, ${t.stats.symlinks} symlinks, ` +
        `${fmtMB(t.stats.bytes)}; largest top-level folder '${t.stats.largestTop.name}' ` +
        `${fmtMB(t.stats.largestTop.bytes)}; ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
    this.trees.set(name, t);
    return t;
  }

  flush(): void {
    if (this.opts.flush) run("sync", []);
  }

  /** Untimed sync of every tool whose replica is not known to be in sync. */
  async ensureSynced(t: Tree): Promise<void> {
    for (const tool of this.opts.tools) {
      if (t.inSync.get(tool)) continue;
      const r = await runTool(tool, t.src, t.dst.get(tool)!, this.opts);
      t.inSync.set(tool, r.ok);
      if (!r.ok) log(`  (untimed ${tool} sync failed, exit ${r.code}: ${firstLine(r.output)})`);
    }
  }

  /** One timed repetition: every tool in rotated order, then the replicas are verified. */
  async timedRep(t: Tree, row: Row, rep: number): Promise<void> {
    const { opts } = this;
    const label = `[${row.id} rep ${rep + 1}/${opts.reps}]`;
    const synced: Tool[] = [];
    for (const tool of rotate(opts.tools, rep)) {
      const series = row.per.get(tool)!;
      this.flush();
      const r = await runTool(tool, t.src, t.dst.get(tool)!, opts);
      const rss = r.rssKB === null ? "?" : `${(r.rssKB / 1024).toFixed(0)} MB`;
      if (r.ok) {
        if (r.rssKB !== null) series.rssKB.push(r.rssKB);
        if (r.otherCpus !== null) series.otherCpus.push(r.otherCpus);
        if (r.ioStall !== null) series.ioStall.push(r.ioStall);
        series.times.push(r.seconds);
        synced.push(tool);
        const others = r.otherCpus === null ? "?" : r.otherCpus.toFixed(2);
        const stall = r.ioStall === null ? "" : `, I/O stall ${fmtPct(r.ioStall)}`;
        log(
          `${label} ${tool.padEnd(6)} ${
            fmtSecs(r.seconds)
          } s, peak RSS ${rss}, other CPU ${others}${stall}`,
        );
      } else {
        series.failed++;
        const why = r.timedOut ? `timed out after ${opts.timeout} s` : `exit ${r.code}`;
        note(series, `${why}: ${firstLine(r.output)}`);
        log(`${label} ${tool.padEnd(6)} FAILED (${why}) after ${fmtSecs(r.seconds)} s`);
        if (r.output.trim() !== "") log(lastLines(r.output, 5).replace(/^/gm, "    "));
      }
      t.inSync.set(tool, r.ok);
    }
    if (row.floor && t.dst.has("mimeo")) {
      this.flush();
      const f = await timeFloor(t.src, t.dst.get("mimeo")!);
      if (f !== null) {
        row.floor.push(f);
        log(`${label} floor  ${fmtSecs(f)} s (bench/floor.ts: stat walk of both trees)`);
      }
    }
    // Checking 4 x 200k files takes 30-60 s here, so by default scenario 6 checks its last rep only.
    const lastOnly = opts.verify === "last" || (opts.verify === "auto" && row.id.startsWith("6"));
    if (synced.length === 0 || (lastOnly && rep !== opts.reps - 1)) return;
    const t0 = performance.now();
    const results = verifyAll(t.src, synced.map((tool) => t.dst.get(tool)!));
    const parts: string[] = [];
    synced.forEach((tool, i) => {
      const v = results[i];
      const series = row.per.get(tool)!;
      series.verified++;
      series.mtimeWarn = Math.max(series.mtimeWarn, v.mtimeDiffs);
      series.modeWarn = Math.max(series.modeWarn, v.modeDiffs);
      for (const ex of v.examples) note(series, `warn: ${ex}`);
      if (v.diffCount > 0) {
        series.wrong++;
        t.inSync.set(tool, false);
        note(series, `WRONG: ${v.diffCount} differences, e.g. ${v.diffs.slice(0, 2).join("; ")}`);
        parts.push(`${tool} WRONG (${v.diffCount})`);
        for (const d of v.diffs) log(`    ${tool}: ${d}`);
      } else {
        const w = [
          v.mtimeDiffs ? `${v.mtimeDiffs} mtime≠` : "",
          v.modeDiffs ? `${v.modeDiffs} mode≠` : "",
        ]
          .filter((x) => x).join(", ");
        parts.push(`${tool} OK${w ? ` (${w})` : ""}`);
      }
    });
    log(`${label} verify: ${parts.join(", ")} [${((performance.now() - t0) / 1000).toFixed(1)} s]`);
  }

  async warmUp(): Promise<void> {
    const base = join(this.opts.dir, "warm");
    removeIfExists(base);
    generateTree(join(base, "src"), mainTreeSpec(0.001, 7));
    for (const tool of this.opts.tools) {
      const r = await runTool(tool, join(base, "src"), join(base, `dst-${tool}`), this.opts);
      if (!r.ok) {
        log(`warm-up: ${tool} FAILED (exit ${r.code}): ${firstLine(r.output)} — continuing`);
      }
    }
  }

  // --- scenarios ---------------------------------------------------------------------------

  async scenario1(): Promise<void> {
    const t = await this.tree("main");
    const s = t.stats!;
    const row = newRow("1", `1. first sync, ${s.files} files / ${fmtMB(s.bytes)}`, this.opts.tools);
    this.rows.push(row);
    for (let rep = 0; rep < this.opts.reps; rep++) {
      await Promise.all(this.opts.tools.map((tool) => resetReplica(tool, t.dst.get(tool)!)));
      await this.timedRep(t, row, rep);
    }
  }

  async scenario2(): Promise<void> {
    const t = await this.tree("main");
    const row = newRow("2", "2. no-op (nothing changed)", this.opts.tools);
    row.floor = [];
    this.rows.push(row);
    for (let rep = 0; rep < this.opts.reps; rep++) {
      await this.ensureSynced(t);
      await this.timedRep(t, row, rep);
    }
  }

  async scenario3(): Promise<void> {
    const t = await this.tree("main");
    const row = newRow("3", "3. 1% edited, 1% added, 1% deleted", this.opts.tools);
    row.floor = [];
    this.rows.push(row);
    for (let rep = 0; rep < this.opts.reps; rep++) {
      await this.ensureSynced(t);
      const m = mutate(t.src, this.opts.seed, rep, { fraction: 0.01, maxSize: 65536 });
      if (rep === 0) {
        row.detail.push(
          `per rep: ${m.edited} edited (${m.sameSize} same-size), ${m.added} added, ${m.deleted} deleted`,
        );
      }
      log(`[3 rep ${rep + 1}] mutated: ${JSON.stringify(m)}`);
      await this.timedRep(t, row, rep);
    }
  }

  async scenario4(): Promise<void> {
    const t = await this.tree("main");
    const row = newRow("4", "4. largest top-level folder renamed", this.opts.tools);
    this.rows.push(row);
    for (let rep = 0; rep < this.opts.reps; rep++) {
      await this.ensureSynced(t);
      const [from, to, bytes] = renameLargestTop(t.src, rep + 1);
      if (rep === 0) row.title = `4. largest top-level folder (${fmtMB(bytes)}) renamed`;
      log(`[4 rep ${rep + 1}] renamed ${from} -> ${to} (${fmtMB(bytes)})`);
      await this.timedRep(t, row, rep);
    }
  }

  async scenario5(): Promise<void> {
    const t = await this.tree("main");
    const size = Math.max(1 << 20, Math.round(GiB * this.opts.scale));
    const row = newRow("5", `5. one new ${fmtMB(size)} file added`, this.opts.tools);
    this.rows.push(row);
    const blob = join(this.opts.dir, "blob", `big-${size}.bin`);
    removeIfExists(dirname(blob));
    Deno.mkdirSync(dirname(blob), { recursive: true });
    const t0 = performance.now();
    writeBigFile(blob, size, this.opts.seed);
    log(`generated ${blob} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const target = join(t.src, "huge-new-file.bin");
    for (let rep = 0; rep < this.opts.reps; rep++) {
      await this.ensureSynced(t);
      try {
        Deno.linkSync(blob, target);
      } catch {
        Deno.copyFileSync(blob, target);
      }
      await this.timedRep(t, row, rep);
      removeIfExists(target);
      for (const tool of this.opts.tools) t.inSync.set(tool, false);
    }
    await this.ensureSynced(t);
    removeIfExists(dirname(blob));
  }

  async scenario6(): Promise<void> {
    const t = await this.tree("many");
    const s = t.stats!;
    const a = newRow(
      "6a",
      `6a. ${s.files} small files (${fmtMB(s.bytes)}): no-op`,
      this.opts.tools,
    );
    const b = newRow("6b", `6b. ${s.files} small files: 1% edited/added/deleted`, this.opts.tools);
    a.floor = [];
    b.floor = [];
    this.rows.push(a, b);
    log(`[6] initial untimed sync of the many-files tree`);
    await this.ensureSynced(t);
    for (let rep = 0; rep < this.opts.reps; rep++) {
      await this.ensureSynced(t);
      await this.timedRep(t, a, rep);
    }
    for (let rep = 0; rep < this.opts.reps; rep++) {
      await this.ensureSynced(t);
      const m = mutate(t.src, this.opts.seed, 1000 + rep, { fraction: 0.01, maxSize: 4097 });
      if (rep === 0) {
        b.detail.push(
          `per rep: ${m.edited} edited (${m.sameSize} same-size), ${m.added} added, ${m.deleted} deleted`,
        );
      }
      await this.timedRep(t, b, rep);
    }
  }

  /** The working data (not the --dir folder itself, which may hold other things). */
  workDirs(): string[] {
    return ["main", "many", "blob", "warm", "tmp"].map((name) => join(this.opts.dir, name));
  }

  /** Synchronous cleanup for Ctrl-C: blocks the event loop so no scenario step runs meanwhile. */
  cleanupSync(): void {
    if (!this.opts.keep) { for (const d of this.workDirs()) removeIfExists(d); }
  }

  async cleanup(): Promise<void> {
    if (this.opts.keep) {
      log(`--keep: leaving ${this.opts.dir}`);
      return;
    }
    const t0 = performance.now();
    const dirs = this.workDirs();
    // main/ and many/ hold src and one replica per tool: remove those side by side.
    await removeParallel(dirs.flatMap((d) => {
      try {
        return [...Deno.readDirSync(d)].map((e) => join(d, e.name));
      } catch {
        return [];
      }
    }));
    for (const d of dirs) removeIfExists(d);
    log(`removed the working data in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
}

// ---------------------------------------------------------------------------------------------
// Report

function machineInfo(opts: Options): string[] {
  const cpu = /model name\s*:\s*(.+)/.exec(safeRead("/proc/cpuinfo"))?.[1]?.trim() ?? "?";
  const memKB = Number(/MemTotal:\s*(\d+)/.exec(safeRead("/proc/meminfo"))?.[1] ?? 0);
  const nproc = run("nproc", []).out.trim() || String(navigator.hardwareConcurrency);
  const kernel = run("uname", ["-sr"]).out.trim();
  // `df` names ext4 as such; `stat -f` says "ext2/ext3" for the whole family.
  const df = run("df", ["--output=fstype", opts.dir]);
  const fs = (df.ok && df.out.trim().split("\n").at(-1)) ||
    run("stat", ["-f", "-c", "%T", opts.dir]).out.trim();
  return [
    `machine: ${cpu}, nproc ${nproc}, ${
      (memKB / 1024 / 1024).toFixed(0)
    } GiB RAM, ${kernel}, work dir on ${fs}`,
    `tools: ${opts.tools.map(toolVersion).join("; ")}`,
    `load average at start: ${loadAvg().join(" ")}`,
  ];
}

/** The 1-, 5- and 15-minute load averages. */
function loadAvg(): number[] {
  return safeRead("/proc/loadavg").split(/\s+/).slice(0, 3).map(Number);
}

/** /proc files need --allow-all in Deno 2, so read them through `cat`. */
function safeRead(path: string): string {
  return run("cat", [path]).out;
}

function report(bench: Bench, header: string[]): string {
  const { opts, rows } = bench;
  const lines: string[] = [];
  lines.push(`## Latest results`, "");
  lines.push(
    `Run ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC: \`${header[0]}\``,
    "",
  );
  for (const h of header.slice(1)) lines.push(`- ${h}`);
  const others = rows.flatMap((r) => [...r.per.values()].flatMap((s) => s.otherCpus));
  if (others.length > 0) {
    lines.push(
      `- CPU used outside the timed tool during timed runs (other programs, kernel threads), in CPUs: ` +
        `median ${median(others).toFixed(2)}, max ${Math.max(...others).toFixed(2)}; ` +
        `load average at the end ${loadAvg().join(" ")}`,
    );
  }
  const stalls = rows.flatMap((r) => [...r.per.values()].flatMap((s) => s.ioStall));
  if (stalls.length > 0) {
    lines.push(
      `- share of each timed run with some task stalled on I/O (/proc/pressure/io; the tool's ` +
        `own waits included): median ${fmtPct(median(stalls))}, max ${fmtPct(Math.max(...stalls))}`,
    );
  }
  for (const t of bench.trees.values()) {
    const s = t.stats!;
    lines.push(
      `- ${t.name} tree: ${s.files} files, ${s.dirs} folders, ${s.symlinks} symlinks, ${
        fmtMB(s.bytes)
      }` +
        (t.name === "main" ? `; largest top-level folder ${fmtMB(s.largestTop.bytes)}` : ""),
    );
  }
  lines.push(
    `- scale ${opts.scale}, reps ${opts.reps} (median reported), seed ${opts.seed}; replicas checked ${
      {
        auto: "after every rep (scenario 6: last rep)",
        every: "after every rep",
        last: "after the last rep",
      }[
        opts.verify
      ]
    }; ` +
      `tool order rotated each rep${opts.flush ? ", `sync` before each timed run" : ""}`,
    "",
  );
  const sel = (t: Tool) => opts.tools.includes(t);
  lines.push(
    "| scenario | mimeo median s | rsync median s | rclone median s | mimeo÷rsync | mimeo÷rclone | mimeo peak RSS MB | correctness |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
  );
  for (const row of rows) {
    const m = row.per.get("mimeo");
    const r = row.per.get("rsync");
    const c = row.per.get("rclone");
    lines.push(
      `| ${row.title} | ${timeCell(m)} | ${timeCell(r)} | ${timeCell(c)} | ` +
        `${sel("mimeo") && sel("rsync") ? ratioCell(m, r) : "—"} | ` +
        `${sel("mimeo") && sel("rclone") ? ratioCell(m, c) : "—"} | ${rssCell(m)} | ${
          correctnessCell(row)
        } |`,
    );
  }
  const floored = rows.filter((r) => r.floor?.length);
  if (floored.length > 0) {
    lines.push(
      "",
      "Deno's floor: `bench/floor.ts` walks the source and mimeo's replica at the same time (two " +
        "threads), one `readDir` per folder and one `lstat` per entry, and does nothing else. " +
        "It is what a plain walk of both trees costs in Deno. Every change detection pays its " +
        "`lstat` calls; the listing it can skip (mimeo lists only folders whose fingerprint " +
        "changed), so a no-op may go somewhat below it, a run with changes hardly.",
      "",
      "| scenario | floor median s | floor÷rsync | mimeo÷floor | mimeo − floor s |",
      "| --- | ---: | ---: | ---: | ---: |",
    );
    for (const row of floored) {
      const f = median(row.floor!);
      const m = goodMedian(row.per.get("mimeo"));
      const r = goodMedian(row.per.get("rsync"));
      lines.push(
        `| ${row.id} | ${fmtSecs(f)} | ${r ? `${(f / r).toFixed(2)}×` : "—"} | ${
          m !== null ? `${(m / f).toFixed(2)}×` : "—"
        } | ${m !== null ? fmtSecs(m - f) : "—"} |`,
      );
    }
  }
  lines.push("", "Peak RSS, MB (max over reps; for rsync the largest of its processes):", "");
  lines.push(
    `| scenario | ${opts.tools.join(" | ")} |`,
    `| --- |${opts.tools.map(() => " ---: |").join("")}`,
  );
  for (const row of rows) {
    lines.push(`| ${row.id} | ${opts.tools.map((t) => rssCell(row.per.get(t))).join(" | ")} |`);
  }
  lines.push("", "All runs, seconds:", "");
  for (const row of rows) {
    for (const d of row.detail) lines.push(`- ${row.id}: ${d}`);
    if (row.floor?.length) lines.push(`- ${row.id} floor: ${row.floor.map(fmtSecs).join(", ")}`);
    for (const [tool, s] of row.per) {
      const times = s.times.map(fmtSecs).join(", ") || "none";
      const others = s.otherCpus.length
        ? `; other CPU ${s.otherCpus.map((x) => x.toFixed(2)).join(", ")}`
        : "";
      const stalls = s.ioStall.length ? `; I/O stall ${s.ioStall.map(fmtPct).join(", ")}` : "";
      lines.push(
        `- ${row.id} ${tool}: ${times}${s.failed ? `; ${s.failed} failed` : ""}${others}${stalls}`,
      );
      for (const n of s.notes) lines.push(`  - ${n}`);
    }
  }
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------------------------------------
// Main

function checkDisk(opts: Options): void {
  const df = run("df", ["-Pk", opts.dir]);
  const availKB = Number(df.out.trim().split("\n").pop()?.split(/\s+/)[3] ?? NaN);
  if (!Number.isFinite(availKB)) return;
  const copies = opts.tools.length + 1;
  let needGB = 0;
  if (opts.scenarios.some((s) => "12345".includes(s))) needGB += 0.4 * copies;
  if (opts.scenarios.includes("5")) needGB += 1.1 * copies;
  if (opts.scenarios.includes("6")) needGB += 0.85 * copies;
  needGB *= opts.scale;
  if (availKB / 1e6 < needGB * 1.2) {
    log(
      `warning: ${(availKB / 1e6).toFixed(1)} GB free in ${opts.dir}, this run needs about ${
        needGB.toFixed(1)
      } GB`,
    );
  }
}

async function main(): Promise<void> {
  let opts: Options;
  try {
    opts = parseOptions(Deno.args);
  } catch (e) {
    console.error(`bench: ${e instanceof Error ? e.message : e}\n\n${HELP}`);
    Deno.exit(2);
  }
  Deno.mkdirSync(join(opts.dir, "tmp"), { recursive: true });
  ensureTools(opts);
  checkDisk(opts);
  const bench = new Bench(opts);
  Deno.addSignalListener("SIGINT", () => {
    log("\ninterrupted");
    try {
      currentChild?.kill("SIGTERM");
    } catch {
      // already gone
    }
    bench.cleanupSync();
    Deno.exit(130);
  });
  const header = [`deno task bench ${Deno.args.join(" ")}`.trim(), ...machineInfo(opts)];
  for (const h of header) log(h);
  if (loadAvg()[0] > 0.5) {
    log("warning: the machine is busy (1-min load average > 0.5); timings will be noisy");
  }
  const t0 = performance.now();
  try {
    await bench.warmUp();
    const scenarios: Record<string, () => Promise<void>> = {
      "1": () => bench.scenario1(),
      "2": () => bench.scenario2(),
      "3": () => bench.scenario3(),
      "4": () => bench.scenario4(),
      "5": () => bench.scenario5(),
      "6": () => bench.scenario6(),
    };
    for (const id of opts.scenarios) {
      log(`--- scenario ${id}`);
      await scenarios[id]();
    }
  } finally {
    await bench.cleanup();
  }
  const md = report(bench, header);
  console.log(md);
  if (opts.out) {
    Deno.writeTextFileSync(opts.out, md);
    log(`wrote ${opts.out}`);
  }
  log(`total ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

if (import.meta.main) await main();
