/**
 * Test helpers: temporary folders, running the CLI as a subprocess the way users do, and
 * full snapshots of trees for equality checks.
 */
import { createHash } from "node:crypto";
import nodeAssert from "node:assert/strict";

/** Deep strict equality (node:assert), named like Deno's std for readability. */
export function assertEquals<T>(actual: unknown, expected: T, msg?: string): asserts actual is T {
  nodeAssert.deepStrictEqual(actual, expected, msg);
}
/** Truthiness assertion. */
export function assert(value: unknown, msg?: string): asserts value {
  nodeAssert.ok(value, msg);
}
/** Regex assertion. */
export function assertMatch(text: string, re: RegExp, msg?: string): void {
  nodeAssert.match(text, re, msg);
}
/** Negative regex assertion. */
export function assertNotMatch(text: string, re: RegExp, msg?: string): void {
  nodeAssert.doesNotMatch(text, re, msg);
}

/** The repository root. */
export const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
/** The CLI entry point. */
export const MAIN = `${ROOT}/main.ts`;

/** A temporary folder removed when disposed (`await using dir = await tempDir()`). */
export async function tempDir(prefix = "mimeo-test-"): Promise<
  { path: string; [Symbol.asyncDispose](): Promise<void> }
> {
  const path = await Deno.makeTempDir({ prefix });
  return {
    path,
    async [Symbol.asyncDispose]() {
      // Make read-only folders removable again before deleting.
      await new Deno.Command("chmod", { args: ["-R", "u+rwx", path] }).output().catch(() => {});
      await Deno.remove(path, { recursive: true }).catch(() => {});
    },
  };
}

/** What a CLI run produced. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options for {@linkcode mimeo}. */
export interface CliOptions {
  cwd?: string;
  /** Deno permission flags. @default ["--allow-read", "--allow-write"] */
  permissions?: string[];
  env?: Record<string, string>;
}

/** The `deno run` command that runs the CLI as a user would. */
function cli(args: string[], o: CliOptions): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--quiet",
      ...(o.permissions ?? ["--allow-read", "--allow-write"]),
      MAIN,
      ...args,
    ],
    cwd: o.cwd,
    env: { NO_COLOR: "1", ...o.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

/** Run `deno run <permissions> main.ts ...args` and wait for it. */
export async function mimeo(args: string[], o: CliOptions = {}): Promise<CliResult> {
  const r = await cli(args, o).output();
  const dec = new TextDecoder();
  return { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
}

/** Start the CLI without waiting (for signals, watch mode, kills). */
export function spawnMimeo(args: string[], o: CliOptions = {}): Deno.ChildProcess {
  return cli(args, o).spawn();
}

/** Collect a child's output and exit code. */
export async function finish(child: Deno.ChildProcess): Promise<CliResult> {
  const r = await child.output();
  const dec = new TextDecoder();
  return { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr) };
}

/** One entry of a snapshot. */
export type SnapEntry =
  | { type: "file"; sha256: string; size: number; mode: string; mtime: number }
  | { type: "dir"; mode: string; mtime: number }
  | { type: "symlink"; target: string }
  | { type: "other" };

/**
 * Every entry under `root`, by relative path: content hash, mode, mtime (files and folders,
 * to the millisecond), link target. With `root`, the folder itself too, as `.`.
 */
export function snapshot(
  root: string,
  opts: { mtimes?: boolean; root?: boolean } = {},
): Record<string, SnapEntry> {
  const out: Record<string, SnapEntry> = {};
  const dirEntry = (st: Deno.FileInfo): SnapEntry => ({
    type: "dir",
    mode: ((st.mode ?? 0) & 0o7777).toString(8).padStart(4, "0"),
    mtime: opts.mtimes === false ? 0 : Math.trunc(st.mtime!.getTime()),
  });
  if (opts.root) out["."] = dirEntry(Deno.statSync(root));
  const walk = (rel: string) => {
    const abs = rel ? `${root}/${rel}` : root;
    for (const e of [...Deno.readDirSync(abs)].sort((a, b) => a.name < b.name ? -1 : 1)) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      const st = Deno.lstatSync(`${root}/${p}`);
      const mode = ((st.mode ?? 0) & 0o7777).toString(8).padStart(4, "0");
      if (st.isSymlink) out[p] = { type: "symlink", target: Deno.readLinkSync(`${root}/${p}`) };
      else if (st.isDirectory) {
        out[p] = dirEntry(st);
        walk(p);
      } else if (st.isFile) {
        const data = Deno.readFileSync(`${root}/${p}`);
        out[p] = {
          type: "file",
          sha256: createHash("sha256").update(data).digest("hex"),
          size: st.size,
          mode,
          mtime: opts.mtimes === false ? 0 : st.mtime!.getTime(),
        };
      } else out[p] = { type: "other" };
    }
  };
  walk("");
  return out;
}

/**
 * Assert the replica holds exactly the source's entries (content, modes, mtimes, links), and
 * that the replica folder itself has the source folder's mode and mtime.
 */
export function assertMirror(source: string, replica: string, msg?: string): void {
  assertEquals(snapshot(replica, { root: true }), snapshot(source, { root: true }), msg);
}

/** Write a tree: `path -> content` for files, `path/` -> null for folders, `{link}` for symlinks. */
export function writeTree(
  root: string,
  spec: Record<string, string | Uint8Array | null | { link: string }>,
): void {
  for (const [p, v] of Object.entries(spec)) {
    const abs = `${root}/${p.replace(/\/$/, "")}`;
    const parent = abs.slice(0, abs.lastIndexOf("/"));
    Deno.mkdirSync(parent, { recursive: true });
    if (v === null) Deno.mkdirSync(abs, { recursive: true });
    else if (typeof v === "string") Deno.writeTextFileSync(abs, v);
    else if (v instanceof Uint8Array) Deno.writeFileSync(abs, v);
    else Deno.symlinkSync(v.link, abs);
  }
}

/** Parse JSON Lines text into objects. */
export function jsonLines(text: string): Record<string, unknown>[] {
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
}

/** Set a file's mtime to a fixed past time (keeps the racy-timestamp window out of tests). */
export function age(path: string, msAgo = 60_000): void {
  const t = new Date(Date.now() - msAgo);
  Deno.utimeSync(path, t, t);
}

/** Age every file under root (see {@linkcode age}). */
export function ageTree(root: string, msAgo = 60_000): void {
  for (const [p, e] of Object.entries(snapshot(root, { mtimes: false }))) {
    if (e.type === "file") age(`${root}/${p}`, msAgo);
  }
}

/** Wait until `check` returns true, polling; throws after `timeoutMs`. */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what = "condition",
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** A seeded PRNG (mulberry32): small, fast, replayable from `MIMEO_SEED`. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  u32(): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  next(): number {
    return this.u32() / 4294967296;
  }
  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error("pick from an empty list");
    return items[Math.floor(this.next() * items.length)];
  }
  weighted<T>(table: readonly (readonly [number, T])[]): T {
    const total = table.reduce((s, [w]) => s + w, 0);
    let r = this.next() * total;
    for (const [w, v] of table) {
      if ((r -= w) < 0) return v;
    }
    return table[table.length - 1][1];
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    const words = new Uint32Array(out.buffer, 0, n >>> 2);
    for (let i = 0; i < words.length; i++) words[i] = this.u32();
    for (let i = words.length * 4; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }

  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [items[i], items[j]] = [items[j], items[i]];
    }
    return items;
  }
}

/** An integer from the environment (test knobs such as `MIMEO_SEED`), or `fallback`. */
export function envInt(name: string, fallback: number): number {
  const v = Deno.env.get(name);
  if (v === undefined || v.trim() === "") return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new Error(`${name} must be an integer, got '${v}'`);
  return n;
}

// ---- shared by the adversarial tests (crash, differential) ----

const q = (s: string) => JSON.stringify(s);

export function show(e: SnapEntry | undefined): string {
  if (!e) return "absent";
  if (e.type === "file") {
    return `file ${e.size} B mode ${e.mode} mtime ${e.mtime} ${e.sha256.slice(0, 8)}`;
  }
  if (e.type === "dir") return `dir mode ${e.mode} mtime ${e.mtime}`;
  if (e.type === "symlink") return `symlink -> ${q(e.target)}`;
  return "other";
}

export function snapDiff(
  actual: Record<string, SnapEntry>,
  expected: Record<string, SnapEntry>,
  labels: [string, string],
): string[] {
  const keys = [...new Set([...Object.keys(actual), ...Object.keys(expected)])].sort();
  const out: string[] = [];
  for (const k of keys) {
    if (JSON.stringify(actual[k]) !== JSON.stringify(expected[k])) {
      out.push(`  ${q(k)}: ${labels[0]} ${show(actual[k])}; ${labels[1]} ${show(expected[k])}`);
    }
  }
  return out;
}

/** assertMirror, with a short readable diff in the message. */
export function assertSame(
  actual: Record<string, SnapEntry>,
  expected: Record<string, SnapEntry>,
  what: string,
  labels: [string, string] = ["got", "want"],
): void {
  const diff = snapDiff(actual, expected, labels);
  assertEquals(
    actual,
    expected,
    `${what}:\n${diff.slice(0, 25).join("\n")}${
      diff.length > 25 ? `\n  … ${diff.length - 25} more` : ""
    }`,
  );
}

/**
 * What an interrupted or failed run must leave behind: the replica's manifest verifies
 * against its bytes, and the next sync exits 0 with an exact mirror.
 */
export async function assertRecovers(src: string, dst: string): Promise<void> {
  const v = await mimeo(["verify", dst]);
  assertEquals(v.code, 0, cliText(v));
  const again = await mimeo(["sync", src, dst, "-q"]);
  assertEquals(again.code, 0, cliText(again));
  assertMirror(src, dst);
}

export function cliText(r: CliResult): string {
  return `exit ${r.code}\n--- stderr ---\n${r.stderr.slice(0, 4000)}\n--- stdout ---\n${
    r.stdout.slice(0, 2000)
  }`;
}

export function exists(abs: string): boolean {
  try {
    Deno.lstatSync(abs);
    return true;
  } catch {
    return false;
  }
}
