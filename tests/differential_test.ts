/**
 * Randomized differential test: random changes to a source tree (and, every few rounds,
 * to the replica behind mimeo's back), then one `mimeo sync`; afterwards the replica must
 * hold exactly the source's entries, the source must be untouched, no temporary file may
 * remain, nothing outside both trees may be written, and `verify` must pass.
 *
 * Knobs (read with Deno.env.get; tests run with --allow-env):
 * - `MIMEO_SEED`   seed of the PRNG (default 1); printed in test names and failures.
 * - `MIMEO_ROUNDS` rounds of the main random loop (default 80).
 *
 * Replay a failure: `MIMEO_SEED=<seed> MIMEO_ROUNDS=<round> deno test --allow-read
 * --allow-write --allow-run --allow-env tests/differential_test.ts`.
 */
import {
  assert,
  assertEquals,
  assertSame,
  cliText,
  envInt,
  exists,
  mimeo,
  Rng,
  snapshot,
  tempDir,
  writeTree,
} from "./helpers.ts";
import { CLIENT_PERMS, startServer } from "./remote_helpers.ts";

const SEED = envInt("MIMEO_SEED", 1);
const ROUNDS = envInt("MIMEO_ROUNDS", 80);
/** Rounds of the same loop into a remote replica. */
const REMOTE_ROUNDS = envInt("MIMEO_REMOTE_ROUNDS", 30);
/** Run `verify` after every this many rounds. */
const VERIFY_EVERY = 3;
/** Tamper with the replica before every this many rounds. */
const TAMPER_EVERY = 3;

const YEAR = 365 * 24 * 3600 * 1000;
const MAX_REL_BYTES = 2800;
const enc = new TextEncoder();
const byteLen = (s: string) => enc.encode(s).length;
const parentOf = (p: string) => (p.includes("/") ? p.slice(0, p.lastIndexOf("/")) : "");
const join = (dir: string, name: string) => (dir ? `${dir}/${name}` : name);
const q = (s: string) => JSON.stringify(s);

type Kind = "file" | "dir" | "symlink";
interface Ent {
  path: string;
  kind: Kind;
  depth: number;
}

/** Every entry under root (symlinks not followed), in a deterministic order. */
function listTree(root: string): Ent[] {
  const out: Ent[] = [];
  const walk = (rel: string, depth: number) => {
    const names = [...Deno.readDirSync(rel ? `${root}/${rel}` : root)]
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of names) {
      const p = join(rel, e.name);
      const kind: Kind = e.isSymlink ? "symlink" : e.isDirectory ? "dir" : "file";
      out.push({ path: p, kind, depth });
      if (kind === "dir") walk(p, depth + 1);
    }
  };
  walk("", 1);
  return out;
}

/** Random changes to a tree, logged as text so a failing round can be read back. */
class Fuzzer {
  log: string[] = [];
  /** Manifests of the last few rounds, to put a stale one back. */
  manifests: string[] = [];
  #n = 0;

  constructor(
    readonly rng: Rng,
    readonly src: string,
    readonly dst: string,
    readonly outside: string,
  ) {}

  // ---- names, sizes, times -------------------------------------------------------------

  name(): string {
    const n = this.#n++;
    const r = this.rng;
    const style = r.weighted<() => string>([
      [30, () => `f${n}`],
      [6, () => `file ${n} with spaces.txt`],
      [5, () => `ünïcødé-${n}-日本語`],
      [3, () => `emoji-😀🎉-${n}`],
      [3, () => `it's "quoted" \`${n}\``],
      [3, () => `${r.pick(["-", "--", "-rf "])}${n}`],
      [4, () => `${r.pick([".hidden", "..x", "...", ".dot."])}${n}`],
      [3, () => `${"L".repeat(r.int(200, 235))}-${n}`],
      // Long names in multi-byte characters: 200-250 bytes, within the 255-byte limit.
      [2, () => {
        const ch = r.pick(["長", "é", "ж", "😀"]);
        return `${ch.repeat(Math.floor(r.int(200, 246) / byteLen(ch)))}${n % 1000}`;
      }],
      [3, () => `glob[*]?{a,b}!#${n}`],
      [2, () => (r.chance(0.5) ? `café-${n}` : `cafe\u0301-${n}`)],
      [2, () => ` spaced ${n} `],
      [2, () => `back\\slash-${n}`],
      [1, () => `tab\there-${n}`],
      [2, () => `${n}.tar.gz`],
    ]);
    return style();
  }

  /** A path in `dir` that does not exist yet and fits the length limits. */
  fresh(root: string, dir: string): string | undefined {
    for (let i = 0; i < 6; i++) {
      const name = this.name();
      const p = join(dir, name);
      if (byteLen(name) > 255 || byteLen(p) > MAX_REL_BYTES) continue;
      if (!exists(`${root}/${p}`)) return p;
    }
    return undefined;
  }

  size(): number {
    const r = this.rng.next();
    if (r < 0.12) return 0;
    if (r < 0.22) return this.rng.pick([1, 7, 100, 4096]); // many equal sizes
    if (r < 0.245 && this.bigFiles() < 6) return this.rng.int(1 << 20, 3 << 20);
    return Math.floor(Math.exp(this.rng.next() * Math.log(200 * 1024)));
  }

  bigFiles(): number {
    let n = 0;
    for (const e of listTree(this.src)) {
      if (e.kind === "file" && Deno.lstatSync(`${this.src}/${e.path}`).size > 1 << 20) n++;
    }
    return n;
  }

  /** A past time with a millisecond part; now and then before 1970. */
  pastTime(): Date {
    if (this.rng.chance(0.03)) return new Date(-this.rng.int(1, 20 * YEAR));
    return new Date(Date.now() - this.rng.int(3_000, 8 * YEAR));
  }

  setMtime(abs: string, notEqualTo?: number): void {
    let t = this.pastTime();
    while (t.getTime() === notEqualTo) t = this.pastTime();
    Deno.utimeSync(abs, t, t);
  }

  // ---- picking entries -------------------------------------------------------------------

  ents(root = this.src): Ent[] {
    return listTree(root);
  }
  dirs(root = this.src): Ent[] {
    return [
      { path: "", kind: "dir", depth: 0 },
      ...this.ents(root).filter((e) => e.kind === "dir"),
    ];
  }
  of(kind: Kind, root = this.src): Ent[] {
    return this.ents(root).filter((e) => e.kind === kind);
  }

  // ---- source changes --------------------------------------------------------------------

  writeNew(root: string, p: string, size = this.size()): void {
    Deno.writeFileSync(`${root}/${p}`, this.rng.bytes(size));
    if (this.rng.chance(0.5)) this.setMtime(`${root}/${p}`);
    if (this.rng.chance(0.2)) Deno.chmodSync(`${root}/${p}`, this.fileMode());
  }

  fileMode(): number {
    return this.rng.weighted([
      [10, 0o644],
      [4, 0o600],
      [4, 0o755],
      [3, 0o444],
      [3, 0o700],
      [1, 0o4755],
      [1, 0o2755],
    ]);
  }

  dirMode(): number {
    return this.rng.weighted([
      [10, 0o755],
      [4, 0o700],
      [4, 0o750],
      [1, 0o555],
      [1, 0o2755],
      [1, 0o1777],
    ]);
  }

  addFile(): void {
    const dir = this.rng.pick(this.dirs()).path;
    const p = this.fresh(this.src, dir);
    if (!p) return;
    const size = this.size();
    this.writeNew(this.src, p, size);
    this.log.push(`add file ${q(p)} (${size} B)`);
  }

  addDuplicate(): void {
    const files = this.of("file");
    if (!files.length) return this.addFile();
    const from = this.rng.pick(files).path;
    const p = this.fresh(this.src, this.rng.pick(this.dirs()).path);
    if (!p) return;
    Deno.writeFileSync(`${this.src}/${p}`, Deno.readFileSync(`${this.src}/${from}`));
    if (this.rng.chance(0.5)) this.setMtime(`${this.src}/${p}`);
    this.log.push(`add duplicate ${q(p)} of ${q(from)}`);
  }

  editFile(): void {
    const files = this.of("file");
    if (!files.length) return this.addFile();
    const p = this.rng.pick(files).path;
    const abs = `${this.src}/${p}`;
    const old = Deno.lstatSync(abs).size;
    let size = this.size();
    while (size === old) size = this.size();
    Deno.writeFileSync(abs, this.rng.bytes(size));
    if (this.rng.chance(0.4)) this.setMtime(abs);
    this.log.push(`edit ${q(p)} ${old} -> ${size} B`);
  }

  /** Same size, different bytes, and a different (past) mtime. */
  sameSizeEdit(root = this.src, what = "same-size edit"): void {
    const files = this.of("file", root).filter((e) => Deno.lstatSync(`${root}/${e.path}`).size > 0);
    if (!files.length) return;
    const p = this.rng.pick(files).path;
    const abs = `${root}/${p}`;
    const st = Deno.lstatSync(abs);
    const data = Deno.readFileSync(abs);
    for (let i = 0, n = this.rng.int(1, 3); i < n; i++) {
      data[this.rng.int(0, data.length - 1)] ^= this.rng.int(1, 255);
    }
    Deno.writeFileSync(abs, data);
    this.setMtime(abs, st.mtime!.getTime());
    this.log.push(`${what} ${q(p)} (${data.length} B, new mtime)`);
  }

  deleteFile(): void {
    const c = this.ents().filter((e) => e.kind !== "dir");
    if (!c.length) return;
    const p = this.rng.pick(c).path;
    Deno.removeSync(`${this.src}/${p}`);
    this.log.push(`delete ${q(p)}`);
  }

  /** Folders, mostly small ones (so one deletion does not wipe half the tree). */
  victimDirs(): Ent[] {
    const ents = this.ents();
    const dirs = ents.filter((e) => e.kind === "dir");
    if (this.rng.chance(0.15)) return dirs;
    return dirs.filter((d) => ents.filter((e) => e.path.startsWith(`${d.path}/`)).length <= 12);
  }

  deleteDir(): void {
    const c = this.victimDirs();
    if (!c.length) return;
    const p = this.rng.pick(c).path;
    Deno.removeSync(`${this.src}/${p}`, { recursive: true });
    this.log.push(`delete folder ${q(p)}`);
  }

  renameFile(): void {
    const c = this.ents().filter((e) => e.kind !== "dir");
    if (!c.length) return;
    const from = this.rng.pick(c).path;
    const dir = this.rng.chance(0.3) ? parentOf(from) : this.rng.pick(this.dirs()).path;
    const base = from.slice(from.lastIndexOf("/") + 1);
    let to: string | undefined = join(dir, base);
    if (to === from || exists(`${this.src}/${to}`) || this.rng.chance(0.4)) {
      to = this.fresh(this.src, dir);
    }
    if (!to || byteLen(to) > MAX_REL_BYTES) return;
    Deno.renameSync(`${this.src}/${from}`, `${this.src}/${to}`);
    this.log.push(`move ${q(from)} -> ${q(to)}`);
    if (this.rng.chance(0.15) && !this.isLink(to)) {
      Deno.writeFileSync(`${this.src}/${to}`, this.rng.bytes(this.size()), { append: true });
      this.log.push(`  and append to it`);
    }
  }

  isLink(p: string): boolean {
    return Deno.lstatSync(`${this.src}/${p}`).isSymlink;
  }

  renameDir(): void {
    const all = this.of("dir");
    if (!all.length) return;
    const deep = all.filter((e) => e.depth >= 3);
    const from = this.rng.pick(deep.length && this.rng.chance(0.5) ? deep : all).path;
    const targets = this.dirs().filter((d) => d.path !== from && !d.path.startsWith(`${from}/`));
    const dir = this.rng.chance(0.25) ? parentOf(from) : this.rng.pick(targets).path;
    const base = from.slice(from.lastIndexOf("/") + 1);
    let to: string | undefined = join(dir, base);
    if (to === from || exists(`${this.src}/${to}`) || this.rng.chance(0.5)) {
      to = this.fresh(this.src, dir);
    }
    if (!to) return;
    const longest = this.ents().filter((e) => e.path.startsWith(`${from}/`))
      .reduce((m, e) => Math.max(m, byteLen(e.path) - byteLen(from)), 0);
    if (byteLen(to) + longest > MAX_REL_BYTES) return;
    Deno.renameSync(`${this.src}/${from}`, `${this.src}/${to}`);
    this.log.push(`move folder ${q(from)} -> ${q(to)}`);
  }

  swap(): void {
    const files = this.of("file");
    if (files.length < 2) return;
    const a = this.rng.pick(files).path;
    const b = this.rng.pick(files.filter((e) => e.path !== a)).path;
    const tmp = this.fresh(this.src, parentOf(a));
    if (!tmp) return;
    Deno.renameSync(`${this.src}/${a}`, `${this.src}/${tmp}`);
    Deno.renameSync(`${this.src}/${b}`, `${this.src}/${a}`);
    Deno.renameSync(`${this.src}/${tmp}`, `${this.src}/${b}`);
    this.log.push(`swap ${q(a)} <-> ${q(b)} (via ${q(tmp)})`);
  }

  fillDir(p: string): void {
    Deno.mkdirSync(`${this.src}/${p}`);
    for (let i = 0, n = this.rng.int(0, 3); i < n; i++) {
      const c = this.fresh(this.src, p);
      if (c) this.writeNew(this.src, c);
    }
    if (this.rng.chance(0.3)) {
      const sub = this.fresh(this.src, p);
      if (sub) Deno.mkdirSync(`${this.src}/${sub}`);
    }
  }

  typeChange(): void {
    const ents = this.ents();
    const kind = this.rng.weighted<string>([
      [3, "file->dir"],
      [2, "dir->file"],
      [2, "file->symlink"],
      [2, "symlink->file"],
      [2, "symlink->dir"],
      [1, "dir->symlink"],
    ]);
    const [from] = kind.split("->");
    const c = from === "dir" ? this.victimDirs() : ents.filter((e) => e.kind === from);
    if (!c.length) return;
    const p = this.rng.pick(c).path;
    const abs = `${this.src}/${p}`;
    Deno.removeSync(abs, { recursive: from === "dir" });
    if (kind.endsWith("dir")) this.fillDir(p);
    else if (kind.endsWith("file")) this.writeNew(this.src, p);
    else Deno.symlinkSync(this.linkTarget(p), abs);
    this.log.push(`type change ${kind} ${q(p)}`);
  }

  linkTarget(linkPath: string): string {
    const up = "../".repeat(linkPath.split("/").length - 1);
    const ents = this.ents();
    return this.rng.weighted<() => string>([
      [4, () => (ents.length ? up + this.rng.pick(ents).path : "nothing-here")],
      [3, () => {
        const d = this.dirs();
        return up + (this.rng.pick(d).path || ".");
      }],
      [2, () => `${this.outside}/victim`],
      [2, () => `${this.outside}/victim/a.txt`],
      [2, () => `missing/${this.name()}`],
      [1, () => "/nonexistent/dir/x"],
      [1, () => this.rng.pick([".", "..", "../..", linkPath.slice(linkPath.lastIndexOf("/") + 1)])],
      [1, () => `weird target ünï "q" ${this.name()}`],
    ])();
  }

  addSymlink(): void {
    const p = this.fresh(this.src, this.rng.pick(this.dirs()).path);
    if (!p) return;
    const target = this.linkTarget(p);
    Deno.symlinkSync(target, `${this.src}/${p}`);
    this.log.push(`symlink ${q(p)} -> ${q(target)}`);
  }

  chmodFile(): void {
    const files = this.of("file");
    if (!files.length) return;
    const p = this.rng.pick(files).path;
    const mode = this.fileMode();
    Deno.chmodSync(`${this.src}/${p}`, mode);
    this.log.push(`chmod ${mode.toString(8)} ${q(p)}`);
  }

  chmodDir(): void {
    const dirs = this.of("dir");
    if (!dirs.length) return;
    const p = this.rng.pick(dirs).path;
    const mode = this.dirMode();
    Deno.chmodSync(`${this.src}/${p}`, mode);
    this.log.push(`chmod folder ${mode.toString(8)} ${q(p)}`);
  }

  touch(): void {
    const files = this.of("file");
    if (!files.length) return;
    const p = this.rng.pick(files).path;
    const abs = `${this.src}/${p}`;
    this.setMtime(abs, Deno.lstatSync(abs).mtime!.getTime());
    this.log.push(`set mtime ${q(p)}`);
  }

  mkdirEmpty(): void {
    let p = this.fresh(this.src, this.rng.pick(this.dirs()).path);
    if (!p) return;
    Deno.mkdirSync(`${this.src}/${p}`);
    for (let i = 0, n = this.rng.int(0, 2); i < n && p; i++) {
      p = this.fresh(this.src, p);
      if (p) Deno.mkdirSync(`${this.src}/${p}`);
    }
    this.log.push(`empty folder(s) up to ${q(p ?? "?")}`);
  }

  deepPath(): void {
    let p = this.rng.pick(this.dirs().filter((d) => d.depth <= 3)).path;
    const levels = this.rng.int(10, 14);
    for (let i = 0; i < levels; i++) {
      const next = join(p, this.rng.chance(0.8) ? `d${this.#n++}` : this.name().slice(0, 30));
      if (byteLen(next) > MAX_REL_BYTES - 300 || exists(`${this.src}/${next}`)) break;
      Deno.mkdirSync(`${this.src}/${next}`);
      p = next;
    }
    const f = this.fresh(this.src, p);
    if (f) this.writeNew(this.src, f);
    this.log.push(`deep path ${q(f ?? p)}`);
  }

  /** A second name for an existing file (a hard link). */
  addHardLink(): void {
    const files = this.of("file");
    if (!files.length) return;
    const from = this.rng.pick(files).path;
    const p = this.fresh(this.src, this.rng.pick(this.dirs()).path);
    if (!p) return;
    Deno.linkSync(`${this.src}/${from}`, `${this.src}/${p}`);
    this.log.push(`hard link ${q(p)} to ${q(from)}`);
  }

  /** Two names that differ only by Unicode normalization or by case, side by side. */
  addTwins(): void {
    const dir = this.rng.pick(this.dirs()).path;
    const n = this.#n++;
    const [a, b] = this.rng.chance(0.5)
      ? [`café ${n}`, `cafe\u0301 ${n}`]
      : [`Twin${n}.TXT`, `twin${n}.txt`];
    const ents = [join(dir, a), join(dir, b)];
    if (ents.some((p) => exists(`${this.src}/${p}`) || byteLen(p) > MAX_REL_BYTES)) return;
    this.writeNew(this.src, ents[0], 10);
    if (this.rng.chance(0.5)) Deno.mkdirSync(`${this.src}/${ents[1]}`);
    else this.writeNew(this.src, ents[1], 10);
    this.log.push(`twins ${q(ents[0])} and ${q(ents[1])}`);
  }

  /** A new folder with a few files and maybe a subfolder. */
  addSubtree(): void {
    const p = this.fresh(this.src, this.rng.pick(this.dirs()).path);
    if (!p) return;
    this.fillDir(p);
    for (let i = 0, n = this.rng.int(2, 6); i < n; i++) {
      const f = this.fresh(this.src, p);
      if (f) this.writeNew(this.src, f);
    }
    this.log.push(`add folder with files ${q(p)}`);
  }

  mutateSource(count: number): void {
    const files = this.of("file").length;
    const crowded = files > 240;
    const sparse = files < 120;
    for (let i = 0; i < count; i++) {
      const op = this.rng.weighted<() => void>([
        [crowded ? 8 : sparse ? 30 : 20, () => this.addFile()],
        [crowded ? 1 : sparse ? 8 : 3, () => this.addSubtree()],
        [4, () => this.addDuplicate()],
        [8, () => this.editFile()],
        [8, () => this.sameSizeEdit()],
        [crowded ? 14 : 6, () => this.deleteFile()],
        [crowded ? 6 : sparse ? 1 : 2, () => this.deleteDir()],
        [8, () => this.renameFile()],
        [6, () => this.renameDir()],
        [4, () => this.swap()],
        [6, () => this.typeChange()],
        [5, () => this.addSymlink()],
        [5, () => this.chmodFile()],
        [4, () => this.chmodDir()],
        [5, () => this.touch()],
        [4, () => this.mkdirEmpty()],
        [1, () => this.deepPath()],
        [2, () => this.addHardLink()],
        [2, () => this.addTwins()],
      ]);
      op();
    }
  }

  initial(): void {
    for (let i = 0; i < 6; i++) this.mkdirEmpty();
    for (let i = 0; i < 20; i++) this.addSubtree();
    this.deepPath();
    this.deepPath();
    for (let i = 0; i < 60; i++) this.addFile();
    for (let i = 0; i < 6; i++) this.addSymlink();
    for (let i = 0; i < 3; i++) this.chmodDir();
  }

  // ---- replica tampering -----------------------------------------------------------------

  tamper(count: number, manifest: string): void {
    const d = this.dst;
    for (let i = 0; i < count; i++) {
      const ents = this.ents(d);
      const files = ents.filter((e) => e.kind === "file");
      const dirs = ents.filter((e) => e.kind === "dir");
      const kind = this.rng.weighted<string>([
        [4, "same-size"],
        [3, "resize"],
        [3, "delete"],
        [3, "extra-file"],
        [2, "extra-dir"],
        [1, "extra-link"],
        [3, "chmod-file"],
        [2, "chmod-dir"],
        [3, "dir->outside-link"],
        [2, "file->outside-link"],
        [3, "touch"],
        [2, "stale-temp"],
        [2, "dir->file"],
        [2, "file->dir"],
        [1, "no-manifest"],
        [1, "bad-manifest"],
        [2, "stale-manifest"],
        [1, "no-index"],
        [1, "bad-index"],
      ]);
      const fileP = files.length ? this.rng.pick(files).path : undefined;
      const dirP = dirs.length ? this.rng.pick(dirs).path : undefined;
      switch (kind) {
        case "same-size":
          if (this.rng.chance(0.5)) this.sameSizeEdit(d, "replica: same-size edit");
          else if (fileP && Deno.lstatSync(`${d}/${fileP}`).size > 0) {
            // The OS sets the mtime.
            const data = Deno.readFileSync(`${d}/${fileP}`);
            data[0] ^= 0x5a;
            Deno.writeFileSync(`${d}/${fileP}`, data);
            this.log.push(`replica: same-size edit (OS mtime) ${q(fileP)}`);
          }
          break;
        case "resize":
          if (!fileP) break;
          Deno.writeFileSync(`${d}/${fileP}`, this.rng.bytes(this.rng.int(1, 3000)), {
            append: this.rng.chance(0.5),
          });
          this.log.push(`replica: resize ${q(fileP)}`);
          break;
        case "delete":
          if (!fileP) break;
          Deno.removeSync(`${d}/${fileP}`);
          this.log.push(`replica: delete ${q(fileP)}`);
          break;
        case "extra-file":
        case "extra-dir":
        case "extra-link": {
          const p = this.fresh(d, this.rng.pick([...dirs, { path: "" }]).path);
          if (!p) break;
          if (kind === "extra-file") this.writeNew(d, p, this.rng.int(0, 5000));
          else if (kind === "extra-link") Deno.symlinkSync(`${this.outside}/victim`, `${d}/${p}`);
          else {
            Deno.mkdirSync(`${d}/${p}/inner`, { recursive: true });
            Deno.writeTextFileSync(`${d}/${p}/inner/x.txt`, "extra");
            Deno.chmodSync(`${d}/${p}`, this.rng.pick([0o755, 0o555, 0o700]));
          }
          this.log.push(`replica: ${kind} ${q(p)}`);
          break;
        }
        case "chmod-file":
          if (!fileP) break;
          Deno.chmodSync(`${d}/${fileP}`, this.fileMode());
          this.log.push(`replica: chmod ${q(fileP)}`);
          break;
        case "chmod-dir":
          if (!dirP) break;
          Deno.chmodSync(`${d}/${dirP}`, this.dirMode());
          this.log.push(`replica: chmod folder ${q(dirP)}`);
          break;
        case "dir->outside-link":
          if (!dirP) break;
          Deno.removeSync(`${d}/${dirP}`, { recursive: true });
          Deno.symlinkSync(`${this.outside}/victim`, `${d}/${dirP}`);
          this.log.push(`replica: folder ${q(dirP)} replaced by a symlink to outside/victim`);
          break;
        case "file->outside-link":
          if (!fileP) break;
          Deno.removeSync(`${d}/${fileP}`);
          Deno.symlinkSync(`${this.outside}/victim/a.txt`, `${d}/${fileP}`);
          this.log.push(`replica: file ${q(fileP)} replaced by a symlink to outside/victim/a.txt`);
          break;
        case "touch":
          if (!fileP) break;
          this.setMtime(`${d}/${fileP}`, Deno.lstatSync(`${d}/${fileP}`).mtime!.getTime());
          this.log.push(`replica: touch ${q(fileP)}`);
          break;
        case "stale-temp": {
          const dir = this.rng.pick([...dirs, { path: "" }]).path;
          const p = join(dir, `.mimeo-tmp-${this.rng.u32().toString(16).padStart(8, "0")}-x`);
          Deno.writeFileSync(`${d}/${p}`, this.rng.bytes(100));
          this.log.push(`replica: stale temp file ${q(p)}`);
          break;
        }
        case "dir->file":
          if (!dirP) break;
          Deno.removeSync(`${d}/${dirP}`, { recursive: true });
          Deno.writeFileSync(`${d}/${dirP}`, this.rng.bytes(this.rng.int(0, 200)));
          this.log.push(`replica: folder ${q(dirP)} replaced by a file`);
          break;
        case "file->dir":
          if (!fileP) break;
          Deno.removeSync(`${d}/${fileP}`);
          Deno.mkdirSync(`${d}/${fileP}/x/y`, { recursive: true });
          Deno.writeTextFileSync(`${d}/${fileP}/x/y/z.txt`, "in the way");
          this.log.push(`replica: file ${q(fileP)} replaced by a folder tree`);
          break;
        case "no-manifest":
          if (!exists(manifest)) break;
          Deno.removeSync(manifest);
          this.log.push(`replica: manifest deleted`);
          break;
        case "stale-manifest": {
          if (this.manifests.length < 2) break;
          const back = this.rng.int(2, this.manifests.length);
          Deno.writeTextFileSync(manifest, this.manifests[this.manifests.length - back]);
          this.log.push(`replica: manifest replaced by the one from ${back - 1} syncs earlier`);
          break;
        }
        case "bad-manifest":
          Deno.writeTextFileSync(manifest, '{"version": 1, "entr');
          this.log.push(`replica: manifest truncated`);
          break;
        case "no-index":
        case "bad-index": {
          const idx = manifest.replace(/\.json$/, ".idx");
          if (!exists(idx)) break;
          if (kind === "no-index") Deno.removeSync(idx);
          else {
            const b = Deno.readFileSync(idx);
            Deno.writeFileSync(idx, b.subarray(0, this.rng.int(0, b.length - 1)));
          }
          this.log.push(`replica: manifest index ${kind === "no-index" ? "deleted" : "truncated"}`);
          break;
        }
      }
    }
  }
}

// ---- checks ----------------------------------------------------------------------------

interface Sandbox {
  base: string;
  src: string;
  dst: string;
  outside: string;
  manifest: string;
  /** A remote replica's URL (the server serves `dst`'s folder): what the CLI is given. */
  url?: string;
  /** Where `dst` and its manifest are (`base`, or the served folder). */
  home: string;
}

function makeSandbox(base: string, home = base): Sandbox {
  const s: Sandbox = {
    base,
    home,
    src: `${base}/src`,
    dst: `${home}/dst`,
    outside: `${base}/outside`,
    manifest: `${home}/dst.mimeo.json`,
  };
  Deno.mkdirSync(home, { recursive: true });
  Deno.mkdirSync(s.src);
  writeTree(s.outside, {
    "victim/a.txt": "outside: must never be written\n",
    "victim/sub/b.txt": "outside too\n",
    "victim/empty/": null,
  });
  return s;
}

/** One sync with every check of a round. */
async function checkedSync(
  s: Sandbox,
  ctx: () => string,
  opts: { extra?: string[]; verify?: boolean } = {},
): Promise<void> {
  const srcBefore = snapshot(s.src, { root: true });
  const outsideBefore = snapshot(s.outside);
  const cli = s.url ? { permissions: CLIENT_PERMS } : {};
  const r = await mimeo(["sync", s.src, s.url ?? s.dst, "--quiet", ...(opts.extra ?? [])], cli);
  assert(r.code === 0, `${ctx()}\nsync failed: ${cliText(r)}`);
  const srcAfter = snapshot(s.src, { root: true });
  assertSame(srcAfter, srcBefore, `${ctx()}\nthe sync changed the SOURCE`, ["now", "before"]);
  const rep = snapshot(s.dst, { root: true });
  assertSame(rep, srcAfter, `${ctx()}\nreplica differs from source`, ["replica", "source"]);
  const temps = Object.keys(rep).filter((p) => p.split("/").pop()!.startsWith(".mimeo-tmp-"));
  assertEquals(temps, [], `${ctx()}\ntemporary files left in the replica`);
  const beside = [...Deno.readDirSync(s.home)].map((e) => e.name)
    .filter((n) => n.startsWith("dst.mimeo.json.tmp") || n.startsWith("dst.mimeo.idx.tmp"));
  assertEquals(beside, [], `${ctx()}\ntemporary manifest files left beside the replica`);
  assertSame(
    snapshot(s.outside),
    outsideBefore,
    `${ctx()}\nsomething was written OUTSIDE source and replica`,
    ["now", "before"],
  );
  if (opts.verify) {
    const v = await mimeo(["verify", s.url ?? s.dst], cli);
    assert(v.code === 0, `${ctx()}\nverify failed: ${cliText(v)}`);
  }
}

function context(test: string, round: number | string, log: string[]): () => string {
  return () =>
    `[${test}] MIMEO_SEED=${SEED} round ${round}` +
    (test === "random" ? ` (replay: MIMEO_SEED=${SEED} MIMEO_ROUNDS=${round})` : "") + "\n" +
    `changes this round:\n${log.slice(-60).map((l) => `  ${l}`).join("\n") || "  (none)"}`;
}

// ---- tests -----------------------------------------------------------------------------

Deno.test(`differential: ${ROUNDS} random rounds (MIMEO_SEED=${SEED})`, async () => {
  await using tmp = await tempDir("mimeo-diff-");
  const s = makeSandbox(tmp.path);
  const rng = new Rng(SEED);
  const fz = new Fuzzer(rng, s.src, s.dst, s.outside);
  fz.initial();
  fz.log.unshift("initial random tree");
  for (let round = 1; round <= ROUNDS; round++) {
    if (round > 1) {
      fz.log = [];
      fz.mutateSource(rng.int(2, 9));
      if (round % TAMPER_EVERY === 0) fz.tamper(rng.int(1, 4), s.manifest);
      // An empty source is refused by design (exit 3); keep at least one entry.
      if (!fz.ents().length) fz.addFile();
    }
    await checkedSync(s, context("random", round, fz.log), {
      verify: round % VERIFY_EVERY === 0 || round === ROUNDS,
    });
    fz.manifests.push(Deno.readTextFileSync(s.manifest));
    if (fz.manifests.length > 4) fz.manifests.shift();
  }
});

Deno.test(`differential: ${REMOTE_ROUNDS} random rounds into a remote replica (MIMEO_SEED=${SEED})`, async () => {
  await using tmp = await tempDir("mimeo-diff-remote-");
  const s = makeSandbox(tmp.path, `${tmp.path}/served`);
  await using server = await startServer(s.home);
  s.url = `${server.url}/dst`;
  const rng = new Rng(SEED + 1000);
  const fz = new Fuzzer(rng, s.src, s.dst, s.outside);
  fz.initial();
  fz.log.unshift("initial random tree");
  for (let round = 1; round <= REMOTE_ROUNDS; round++) {
    if (round > 1) {
      fz.log = [];
      fz.mutateSource(rng.int(2, 9));
      if (round % TAMPER_EVERY === 0) fz.tamper(rng.int(1, 4), s.manifest);
      if (!fz.ents().length) fz.addFile();
    }
    await checkedSync(s, context("remote", round, fz.log), {
      verify: round % VERIFY_EVERY === 0 || round === REMOTE_ROUNDS,
    });
    fz.manifests.push(Deno.readTextFileSync(s.manifest));
    if (fz.manifests.length > 4) fz.manifests.shift();
  }
});

/** How many folders have a recorded fingerprint (a `cache` row) in a manifest file. */
function folderRows(manifest: string): number {
  const m = JSON.parse(Deno.readTextFileSync(manifest));
  return Object.keys(m.cache ?? {}).filter((p) => m.entries[p]?.type === "dir").length;
}

Deno.test(`differential: changes under folders whose listing is trusted (MIMEO_SEED=${SEED})`, async () => {
  // Each round first lets a no-op run record folder fingerprints (a folder is then no longer
  // listed while its own stat is unchanged), then changes the source and tampers with the
  // replica: whatever the quick check skips, the replica must still end up exact.
  await using tmp = await tempDir("mimeo-diff-");
  const s = makeSandbox(tmp.path);
  const rng = new Rng(SEED ^ 0xf01de5);
  const fz = new Fuzzer(rng, s.src, s.dst, s.outside);
  fz.initial();
  fz.log.unshift("initial random tree");
  await checkedSync(s, context("folders", 0, fz.log));
  const rounds = envInt("MIMEO_FOLDER_ROUNDS", 10);
  let trusted = 0;
  for (let round = 1; round <= rounds; round++) {
    // Until a run writes nothing: racy files re-hashed first, then the folders recorded
    // (a folder's ctime second must have ended before the run that records it).
    for (let i = 0; i < 4; i++) {
      await new Promise((r) => setTimeout(r, 1005 - (Date.now() % 1000)));
      const before = Deno.statSync(s.manifest).mtime?.getTime();
      await checkedSync(s, context("folders", `${round} (no-op ${i})`, fz.log));
      if (Deno.statSync(s.manifest).mtime?.getTime() === before) break;
    }
    if (folderRows(s.manifest) > 0) trusted++;
    fz.log = [];
    if (round % 2 === 1) {
      // A pattern for a while: what it hides leaves the manifest and stays on both sides.
      // Its folders' fingerprints, recorded before it, must not hide those names (and so
      // their edits) from the runs after it.
      // Every other time with --delete-excluded: then the replica holds the rest only.
      const isTxt = (p: string) => p.split("/").some((c) => c.endsWith(".txt"));
      const rest = Object.fromEntries(
        Object.entries(snapshot(s.src, { root: true })).filter(([p]) => !isTxt(p)),
      );
      const drop = round % 4 === 3 && Object.keys(rest).some((p) => p !== ".");
      const args = ["sync", s.src, s.dst, "--quiet", "--exclude", "*.txt"];
      const hidden = await mimeo(drop ? [...args, "--delete-excluded"] : args);
      assert(
        hidden.code === 0,
        `${context("folders", round, fz.log)()}
${cliText(hidden)}`,
      );
      fz.log.push(`a sync with --exclude '*.txt'${drop ? " --delete-excluded" : ""}`);
      if (drop) {
        assertSame(
          snapshot(s.dst, { root: true }),
          rest,
          `${context("folders", round, fz.log)()}
--delete-excluded left the replica`,
          ["replica", "source without *.txt"],
        );
      }
    }
    fz.mutateSource(rng.int(2, 9));
    if (round % 2 === 0) fz.tamper(rng.int(1, 4), s.manifest);
    if (!fz.ents().length) fz.addFile();
    await checkedSync(s, context("folders", round, fz.log), { verify: round % 3 === 0 });
  }
  assert(
    trusted >= rounds / 2,
    `folder fingerprints were recorded in ${trusted} of ${rounds} rounds`,
  );
});

Deno.test("differential: same-size edit right after a sync is detected (racy window)", async () => {
  await using tmp = await tempDir("mimeo-diff-");
  const s = makeSandbox(tmp.path);
  writeTree(s.src, {
    "a.txt": "version 0 of a",
    "dir/b.txt": "0123456789",
    "dir/deeper/c.bin": new Uint8Array(4096).fill(1),
    "old.txt": "aged file, trusted from the cache",
  });
  // One file with an old mtime, so its hash is cached and trusted after the first sync.
  const old = new Date(Date.now() - 60_000);
  Deno.utimeSync(`${s.src}/old.txt`, old, old);
  const log: string[] = ["initial tree"];
  await checkedSync(s, context("racy", 0, log));
  await checkedSync(s, context("racy", "0b", log)); // the cache is now recorded
  for (let i = 1; i <= 5; i++) {
    // Same size, new bytes, mtime left as the OS sets it, right after the sync.
    Deno.writeTextFileSync(`${s.src}/a.txt`, `version ${i} of a`);
    Deno.writeTextFileSync(`${s.src}/dir/b.txt`, `${i}`.repeat(10));
    Deno.writeFileSync(`${s.src}/dir/deeper/c.bin`, new Uint8Array(4096).fill(i + 1));
    Deno.writeTextFileSync(`${s.src}/old.txt`, `aged file, trusted from the cach${i}`);
    log.splice(0, log.length, `same-size edits #${i} of all four files (OS mtimes)`);
    await checkedSync(s, context("racy", i, log), { verify: true });
  }
  // Within the racy window even restoring the previous mtime must not hide the edit:
  // a.txt was written < 2 s before the last sync, so its hash must not be trusted.
  const st = Deno.lstatSync(`${s.src}/a.txt`);
  Deno.writeTextFileSync(`${s.src}/a.txt`, "version X of a");
  Deno.utimeSync(`${s.src}/a.txt`, st.mtime!, st.mtime!);
  log.splice(0, log.length, "same-size edit of a.txt with its mtime restored (racy window)");
  await checkedSync(s, context("racy", "restored-mtime", log), { verify: true });
});

Deno.test(`differential: --checksum finds edits that keep size and mtime (MIMEO_SEED=${SEED})`, async () => {
  await using tmp = await tempDir("mimeo-diff-");
  const s = makeSandbox(tmp.path);
  const rng = new Rng(SEED ^ 0x5eed);
  const fz = new Fuzzer(rng, s.src, s.dst, s.outside);
  fz.initial();
  for (const f of fz.of("file")) fz.setMtime(`${s.src}/${f.path}`);
  fz.log = ["initial random tree, every file with a past mtime"];
  await checkedSync(s, context("checksum", 0, fz.log));
  await checkedSync(s, context("checksum", "0b", fz.log)); // hashes now cached and trusted

  /** Same size, new bytes, mtime put back exactly: invisible to size/mtime checks. */
  const stealthEdit = (root: string, label: string) => {
    const files = fz.of("file", root).filter((e) => Deno.lstatSync(`${root}/${e.path}`).size > 0);
    if (!files.length) return;
    const p = rng.pick(files).path;
    const abs = `${root}/${p}`;
    const st = Deno.lstatSync(abs);
    const data = Deno.readFileSync(abs);
    data[rng.int(0, data.length - 1)] ^= 0xff;
    Deno.writeFileSync(abs, data);
    Deno.utimeSync(abs, st.atime ?? st.mtime!, st.mtime!);
    fz.log.push(`${label}: same-size edit, mtime kept, ${q(p)}`);
  };
  for (let round = 1; round <= 3; round++) {
    fz.log = [];
    for (let i = 0; i < 4; i++) stealthEdit(s.src, "source");
    for (let i = 0; i < 3; i++) stealthEdit(s.dst, "replica");
    if (round > 1) fz.mutateSource(rng.int(2, 8));
    await checkedSync(s, context("checksum", round, fz.log), {
      extra: ["--checksum"],
      verify: true,
    });
  }
});

Deno.test("differential: --checksum also checks replica files that a rename moves", async () => {
  await using tmp = await tempDir("mimeo-diff-");
  const s = makeSandbox(tmp.path);
  writeTree(s.src, {
    "a.txt": "hello world",
    "dir/one.txt": "first file in dir",
    "dir/two.txt": "second file in dir",
  });
  const past = new Date(Date.UTC(2020, 0, 1, 12, 0, 0, 123));
  for (const p of ["a.txt", "dir/one.txt", "dir/two.txt"]) {
    Deno.utimeSync(`${s.src}/${p}`, past, past);
  }
  const log = ["a.txt, dir/one.txt, dir/two.txt with past mtimes"];
  // Start at the beginning of a wall-clock second, so that the copies below and the
  // tampering after them share one ctime second (Deno reports ctime in whole seconds): a
  // replica edit no stat check can see, which is exactly what --checksum is for.
  await new Promise((r) => setTimeout(r, 1005 - (Date.now() % 1000)));
  await checkedSync(s, context("checksum-moves", 0, log));
  for (const p of ["a.txt", "dir/one.txt"]) {
    const abs = `${s.dst}/${p}`;
    const st = Deno.lstatSync(abs);
    const data = Deno.readFileSync(abs);
    data[0] ^= 0x20; // same size, different bytes
    Deno.writeFileSync(abs, data);
    Deno.utimeSync(abs, st.atime ?? st.mtime!, st.mtime!); // mtime kept
  }
  Deno.renameSync(`${s.src}/a.txt`, `${s.src}/b.txt`);
  Deno.renameSync(`${s.src}/dir`, `${s.src}/moved-dir`);
  log.splice(
    0,
    log.length,
    "replica: same-size edits of a.txt and dir/one.txt, mtime kept",
    "source: a.txt -> b.txt, dir -> moved-dir",
  );
  await checkedSync(s, context("checksum-moves", 1, log), { extra: ["--checksum"] });
});

Deno.test("differential: long names in multi-byte characters (<= 255 bytes)", async () => {
  await using tmp = await tempDir("mimeo-diff-");
  const s = makeSandbox(tmp.path);
  const cjk = "長".repeat(84); // 252 bytes, 84 UTF-16 units
  const accents = "é".repeat(127); // 254 bytes
  const emoji = "😀".repeat(63); // 252 bytes, 126 UTF-16 units
  writeTree(s.src, {
    [cjk]: "cjk",
    [`dir/${accents}`]: "accents",
    [emoji]: { link: "dir" },
    ["ж".repeat(120)]: "short enough", // 240 bytes
  });
  const log = [`files ${q(cjk)}, dir/${q(accents)}, symlink ${q(emoji)}`];
  await checkedSync(s, context("long-names", 1, log), { verify: true });
});

Deno.test(`differential: large replica, scanned in a worker (MIMEO_SEED=${SEED})`, async () => {
  await using tmp = await tempDir("mimeo-diff-");
  const s = makeSandbox(tmp.path);
  const rng = new Rng(SEED ^ 0xb16);
  const fz = new Fuzzer(rng, s.src, s.dst, s.outside);
  // A larger replica: more than 3,000 entries. (From 1 MiB of manifest mimeo walks the
  // replica in a Worker; tests/sync_test.ts drives that path through the library.)
  for (let d = 0; d < 32; d++) {
    const dir = `${s.src}/bulk/${d % 4}/folder ${d}`;
    Deno.mkdirSync(dir, { recursive: true });
    for (let k = 0; k < 100; k++) {
      Deno.writeFileSync(`${dir}/f${k}`, rng.bytes(rng.int(0, 64)));
      if (rng.chance(0.5)) fz.setMtime(`${dir}/f${k}`);
    }
  }
  fz.initial();
  fz.log = ["initial tree: 3,200 small files under bulk/ plus a random tree"];
  await checkedSync(s, context("large", 0, fz.log));
  for (let round = 1; round <= 5; round++) {
    fz.log = [];
    fz.mutateSource(rng.int(3, 9));
    fz.tamper(rng.int(1, 3), s.manifest);
    await checkedSync(s, context("large", round, fz.log), { verify: true });
    fz.manifests.push(Deno.readTextFileSync(s.manifest));
  }
});
