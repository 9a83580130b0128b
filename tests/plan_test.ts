/**
 * Unit tests of the pure planner on in-memory trees, of the pure trust rules, and of the
 * temporary names the planner must recognize.
 */
import {
  applyOp,
  commonSuffixParents,
  foldersTouched,
  isTempPath,
  type Op,
  plan,
} from "../lib/plan.ts";
import { FsTarget } from "../lib/target_fs.ts";
import type { FileNode, Node, Tree } from "../lib/types.ts";
import { assert, assertEquals, assertMatch } from "./helpers.ts";

const H = (c: string) => c.repeat(64).slice(0, 64);
const f = (hash: string, size = 10, mode = 0o644, mtime = 1000): Node => ({
  type: "file",
  size,
  mode,
  mtime,
  sha256: H(hash),
});
const d = (mode = 0o755): Node => ({ type: "dir", mode });
/** A folder with its mtime, as the scanner gives it. */
const dt = (mtime: number, mode = 0o755): Node => ({ type: "dir", mode, mtime });
const l = (target: string): Node => ({ type: "symlink", target });
const tree = (o: Record<string, Node>): Tree => new Map(Object.entries(o));

/** Apply a plan to a copy of the replica and check it equals the source (content-wise). */
function simulate(src: Tree, rep: Tree, ops: Op[]): Tree {
  const t = new Map(rep);
  for (const op of ops) applyOp(t, op);
  const norm = (x: Tree) =>
    Object.fromEntries(
      [...x].sort(([a], [b]) => (a < b ? -1 : 1)).map(([p, n]) => [
        p,
        n.type === "file" ? { t: n.type, h: n.sha256 ?? "?", m: n.mode, mt: n.mtime } : n,
      ]),
    );
  assertEquals(norm(t), norm(src));
  return t;
}

/** Check each op is valid when it runs: parents exist as folders, targets free or replaced. */
function assertValidOrder(rep: Tree, ops: Op[]): void {
  const t = new Map(rep);
  const parentOk = (p: string) => {
    const i = p.lastIndexOf("/");
    return i < 0 || t.get(p.slice(0, i))?.type === "dir";
  };
  for (const op of ops) {
    const path = op.op === "rename" ? op.to : op.path;
    assert(parentOk(path), `parent of ${path} missing for ${JSON.stringify(op)}`);
    if (op.op === "mkdir") assert(!t.has(op.path), `mkdir over existing ${op.path}`);
    if (op.op === "rename") assert(!t.has(op.to), `rename onto existing ${op.to}`);
    if (op.op === "rmdir") {
      assert(
        [...t.keys()].every((k) => !k.startsWith(op.path + "/")),
        `rmdir non-empty ${op.path}`,
      );
    }
    if (op.op === "copy" || op.op === "symlink" || op.op === "update") {
      assert(t.get(path)?.type !== "dir", `${op.op} over a folder at ${path}`);
    }
    applyOp(t, op);
  }
}

function check(src: Tree, rep: Tree) {
  const p = plan(src, rep);
  assertValidOrder(rep, p.ops);
  simulate(src, rep, p.ops);
  assertFolderTimesLast(src, p.ops);
  return p;
}

/**
 * Every source folder with a known time whose listing an operation changes gets a `dirtime`
 * after that operation (and after everything else that is not one).
 */
function assertFolderTimesLast(src: Tree, ops: Op[]): void {
  const first = ops.findIndex((o) => o.op === "dirtime");
  if (first >= 0) {
    assert(ops.slice(first).every((o) => o.op === "dirtime" || o.op === "meta"), "times last");
  }
  const timed = new Set(ops.filter((o) => o.op === "dirtime").map((o) => o.path));
  for (const dir of foldersTouched(ops)) {
    const s = src.get(dir);
    if (s?.type === "dir" && s.mtime !== undefined) {
      assert(timed.has(dir), `'${dir}' is changed by ${JSON.stringify(ops)} but gets no time`);
    }
  }
}

Deno.test("plan() of identical trees is empty", () => {
  const t = tree({ a: d(), "a/x": f("1"), l: l("a/x") });
  assertEquals(plan(t, new Map(t)).ops, []);
});

Deno.test("plan() into an empty replica creates folders first, then files and links", () => {
  const src = tree({ a: d(), "a/b": d(0o700), "a/b/x": f("1"), e: d(), l: l("a") });
  const p = check(src, new Map());
  assertEquals(p.ops.map((o) => o.op), ["mkdir", "mkdir", "mkdir", "copy", "symlink"]);
  assertEquals(p.bytesToCopy, 10);
});

Deno.test("plan() renames a moved file instead of copying it", () => {
  const p = check(tree({ "new.txt": f("1") }), tree({ "old.txt": f("1") }));
  assertEquals(p.ops, [{ op: "rename", from: "old.txt", to: "new.txt", kind: "file" }]);
});

Deno.test("plan() renames a moved folder as one operation", () => {
  const rep = tree({ big: d(), "big/s": d(), "big/s/1": f("1"), "big/2": f("2"), "big/3": f("3") });
  const src = tree({
    big2: d(),
    "big2/s": d(),
    "big2/s/1": f("1"),
    "big2/2": f("2"),
    "big2/3": f("3"),
  });
  const p = check(src, rep);
  assertEquals(p.ops, [{ op: "rename", from: "big", to: "big2", kind: "dir" }]);
});

Deno.test("plan() renames a folder moved deeper and fixes what changed inside", () => {
  const rep = tree({ a: d(), "a/1": f("1"), "a/2": f("2"), "a/old": f("9") });
  const src = tree({
    x: d(),
    "x/y": d(),
    "x/y/a": d(),
    "x/y/a/1": f("1"),
    "x/y/a/2": f("2", 10, 0o600),
    "x/y/a/new": f("8"),
  });
  const p = check(src, rep);
  assertEquals(p.ops.filter((o) => o.op === "rename").length, 1);
  assertEquals(p.ops.filter((o) => o.op === "copy").length, 1);
  assert(p.ops.some((o) => o.op === "meta" && o.path === "x/y/a/2" && o.mode === 0o600));
  assert(p.ops.some((o) => o.op === "delete" && o.path === "x/y/a/old"));
});

Deno.test("plan() handles log rotation: old content renamed, new content copied", () => {
  const p = check(tree({ "a.log": f("2"), "a.log.1": f("1") }), tree({ "a.log": f("1") }));
  assertEquals(p.ops.map((o) => o.op), ["rename", "copy"]);
});

Deno.test("plan() swaps two files by updating both (no rename onto an existing path)", () => {
  const p = check(tree({ a: f("2"), b: f("1") }), tree({ a: f("1"), b: f("2") }));
  assertEquals(p.ops.map((o) => o.op), ["update", "update"]);
});

Deno.test("plan() gives a metadata-only change a meta operation, not a copy", () => {
  const p = check(tree({ x: f("1", 10, 0o755, 5000) }), tree({ x: f("1", 10, 0o644, 1000) }));
  assertEquals(p.ops, [{ op: "meta", path: "x", kind: "file", mode: 0o755, mtime: 5000 }]);
  assertEquals(p.bytesToCopy, 0);
});

Deno.test("plan() updates a file whose replica content is unknown", () => {
  const rep = tree({ x: { type: "file", size: 10, mode: 0o644, mtime: 1000 } });
  assertEquals(check(tree({ x: f("1") }), rep).ops.map((o) => o.op), ["update"]);
});

Deno.test("plan() copies a file whose source hash is deferred (hashed while copying)", () => {
  const src = tree({ x: { type: "file", size: 5, mode: 0o644, mtime: 1 } });
  const p = plan(src, new Map());
  assertEquals(p.ops, [{ op: "copy", path: "x", size: 5, mtime: 1, mode: 0o644 }]);
});

Deno.test("plan() handles every type change", () => {
  const rep = tree({
    fd: f("1"), // file -> folder
    df: d(), // folder -> file
    "df/in": f("2"),
    fl: f("3"), // file -> symlink
    lf: l("t"), // symlink -> file
    ld: l("t"), // symlink -> folder
    dl: d(), // folder -> symlink
    "dl/z": f("4"),
  });
  const src = tree({
    fd: d(),
    "fd/c": f("5"),
    df: f("6"),
    fl: l("u"),
    lf: f("7"),
    ld: d(),
    dl: l("v"),
  });
  check(src, rep);
});

Deno.test("plan() reuses content from a folder that became a file", () => {
  // df/in moves to top level while df becomes a file: rename first, then clear the folder.
  const rep = tree({ df: d(), "df/in": f("2") });
  const src = tree({ df: f("6"), in: f("2") });
  const p = check(src, rep);
  assertEquals(p.ops[0], { op: "rename", from: "df/in", to: "in", kind: "file" });
});

Deno.test("plan() deletes deepest first and only after copies", () => {
  const rep = tree({ a: d(), "a/b": d(), "a/b/c": f("1"), keep: f("2") });
  const p = check(tree({ keep: f("2"), n: f("3") }), rep);
  assertEquals(p.ops.map((o) => o.op === "rename" ? o.to : o.path), ["n", "a/b/c", "a/b", "a"]);
  assertEquals(p.ops.map((o) => o.op), ["copy", "delete", "rmdir", "rmdir"]);
});

Deno.test("plan() with allowDelete off keeps extras but still cleans temporary files", () => {
  const rep = tree({ a: d(), "a/x": f("1"), ".mimeo-tmp-0123abcd-y": f("2") });
  const p = plan(tree({}), rep, { allowDelete: false });
  assertEquals(p.ops, [{ op: "delete", path: ".mimeo-tmp-0123abcd-y", kind: "file" }]);
  assertEquals(p.deletesSkipped.sort(), ["a", "a/x"]);
});

Deno.test("plan() with renames off copies moved files", () => {
  const p = plan(tree({ b: f("1") }), tree({ a: f("1") }), { renames: false });
  assertEquals(p.ops.map((o) => o.op), ["copy", "delete"]);
});

Deno.test("plan() sets folder modes deepest first, after content", () => {
  const rep = tree({ a: d(0o755), "a/b": d(0o755) });
  const src = tree({ a: d(0o555), "a/b": d(0o500), "a/b/x": f("1") });
  const p = check(src, rep);
  assertEquals(p.ops.map((o) => `${o.op}:${o.op === "rename" ? o.to : o.path}`), [
    "copy:a/b/x",
    "meta:a/b",
    "meta:a",
  ]);
});

Deno.test("plan() sets folder times last, deepest first: new folders, changed listings, differing times; not an equal untouched one", () => {
  const rep = tree({
    a: dt(1),
    "a/b": dt(2),
    "a/b/old": f("1"),
    c: dt(9),
    e: dt(4),
    "e/x": f("2"),
  });
  const src = tree({
    a: dt(1),
    "a/b": dt(2),
    "a/b/new": f("3"),
    c: dt(3),
    e: dt(4),
    "e/x": f("2"),
    n: dt(5),
    "n/y": f("4"),
  });
  const p = check(src, rep);
  assertEquals(p.ops.map((o) => `${o.op}:${o.op === "rename" ? o.to : o.path}`), [
    "mkdir:n",
    "copy:a/b/new",
    "copy:n/y",
    "delete:a/b/old",
    "dirtime:n", // new: mkdir gave it the time of the run
    "dirtime:c", // differs
    "dirtime:a/b", // its listing changed (its time was equal before the run)
  ]);
  assertEquals(p.ops.filter((o) => o.op === "dirtime").map((o) => o.mtime), [5, 3, 2]);
  // Folders whose source time is not known (a manifest's nodes) get none.
  const unknown = plan(tree({ a: d(), "a/x": f("1") }), tree({ a: d() }));
  assertEquals(unknown.ops.map((o) => o.op), ["copy"]);
});

Deno.test("plan() gives folders outside the trees their differing times (dirTimesOutside), once", () => {
  const src = tree({ a: dt(1), "a/x": f("1") });
  const rep = tree({ a: dt(2), "a/x": f("1") });
  const outside = new Map([["a", 1], ["far/away", 7], ["far", 8]]);
  const p = plan(src, rep, { dirTimesOutside: outside });
  assertEquals(p.ops, [
    { op: "dirtime", path: "a", mtime: 1 },
    { op: "dirtime", path: "far/away", mtime: 7 },
    { op: "dirtime", path: "far", mtime: 8 },
  ]);
  // None at all with dirTimes off (rsync's --omit-dir-times).
  assertEquals(plan(src, rep, { dirTimes: false, dirTimesOutside: outside }).ops, []);
});

Deno.test("plan() deletes the replica's special files first, and sets their folders' times", () => {
  const src = tree({ a: dt(1), x: dt(2) });
  const rep = tree({ a: dt(1) });
  const p = plan(src, rep, { replicaSpecials: ["a/fifo", "x"] });
  assertEquals(p.ops.map((o) => `${o.op}:${o.op === "rename" ? o.to : o.path}`), [
    "delete:a/fifo",
    "delete:x", // (a FIFO where the source has a folder)
    "mkdir:x",
    "dirtime:x",
    "dirtime:a",
  ]);
  const held = plan(src, rep, { replicaSpecials: ["a/fifo"], allowDelete: false });
  assertEquals(held.deletesSkipped, ["a/fifo"]);
  assert(!held.ops.some((o) => o.op === "delete"));
});

Deno.test("plan() does not rename a folder into itself", () => {
  const rep = tree({ a: d(), "a/1": f("1"), "a/2": f("2") });
  const src = tree({ b: d(), "b/a": d(), "b/a/1": f("1"), "b/a/2": f("2") });
  check(src, rep);
  const rep2 = tree({ a: d(), "a/1": f("1") });
  const src2 = tree({ a: d(), "a/a": d(), "a/a/1": f("1") });
  check(src2, rep2);
});

Deno.test("plan() renames a duplicated file once and copies the second", () => {
  const p = check(tree({ x: f("1"), y: f("1") }), tree({ old: f("1") }));
  assertEquals(p.ops.map((o) => o.op).sort(), ["copy", "rename"]);
});

Deno.test("isTempPath() recognizes mimeo's temporary names only", () => {
  assert(isTempPath("a/.mimeo-tmp-0123abcd-file.txt"));
  assert(!isTempPath("a/mimeo-tmp-0123abcd-file.txt"));
  assert(!isTempPath(".mimeo-tmp-xyz-file"));
});

Deno.test("FsTarget.tempPathFor() gives distinct names that isTempPath() recognizes", () => {
  const t = new FsTarget("/nonexistent-root");
  const names = new Set<string>();
  // Thousands of names: a random word below 0x10000000 (1 in 16) must still give 8 digits.
  for (let i = 0; i < 5000; i++) {
    const tmp = t.tempPathFor(i % 2 ? "d/e/file name.txt" : "top");
    assert(isTempPath(tmp), tmp);
    assertMatch(
      tmp,
      i % 2 ? /^d\/e\/\.mimeo-tmp-[0-9a-f]{8}-file name\.txt$/ : /^\.mimeo-tmp-[0-9a-f]{8}-top$/,
    );
    names.add(tmp);
  }
  assertEquals(names.size, 5000);
});

Deno.test("plan() survives a randomized property check (valid order, exact result)", () => {
  let seed = 42;
  const rnd = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
  const names = ["a", "b", "c", "d"];
  const randomTree = (): Tree => {
    const t: Tree = new Map();
    const fill = (prefix: string, depth: number) => {
      for (const n of names) {
        if (rnd() < 0.45) continue;
        const p = prefix ? `${prefix}/${n}` : n;
        const r = rnd();
        if (r < 0.3 && depth < 3) {
          t.set(p, dt(rnd() < 0.5 ? 1 : 2, rnd() < 0.2 ? 0o700 : 0o755));
          fill(p, depth + 1);
        } else if (r < 0.85) {
          t.set(p, f(String(Math.floor(rnd() * 4)), 10, 0o644, rnd() < 0.2 ? 1 : 2));
        } else t.set(p, l(String(Math.floor(rnd() * 3))));
      }
    };
    fill("", 0);
    return t;
  };
  for (let i = 0; i < 400; i++) check(randomTree(), randomTree());
});

Deno.test("commonSuffixParents() agrees with a segment-by-segment reference", () => {
  // The reference: split both paths, drop the shared trailing segments (giving one back
  // when a side runs out), join what is left.
  const reference = (p: string, q: string): [string, string] | undefined => {
    const a = p.split("/"), b = q.split("/");
    let i = a.length - 1, j = b.length - 1, common = 0;
    while (i >= 0 && j >= 0 && a[i] === b[j]) [i, j, common] = [i - 1, j - 1, common + 1];
    if (i < 0 || j < 0) [i, j, common] = [i + 1, j + 1, common - 1];
    if (common === 0) return undefined;
    return [a.slice(0, i + 1).join("/"), b.slice(0, j + 1).join("/")];
  };
  assertEquals(commonSuffixParents("a/x/f", "b/x/f"), ["a", "b"]);
  assertEquals(commonSuffixParents("x/y/a/1", "a/1"), ["x/y/a", "a"]);
  assertEquals(commonSuffixParents("a/1", "x/y/a/1"), ["a", "x/y/a"]);
  assertEquals(commonSuffixParents("a/bc/f", "abc/f"), ["a/bc", "abc"]);
  assertEquals(commonSuffixParents("a/b.txt", "c/d.txt"), undefined);
  assertEquals(commonSuffixParents("f", "a/f"), undefined);
  let seed = 7;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return (seed >>> 16) % n; // (the low bits of this generator cycle quickly)
  };
  // Short segments from a small alphabet, so that shared tails, matches that end inside a
  // segment ("ab" against "b") and equal paths all come up.
  const segs = ["a", "b", "ab", "ba", "é", "データ", "a.b", "x"];
  const path = () => Array.from({ length: 1 + rnd(4) }, () => segs[rnd(segs.length)]).join("/");
  let defined = 0;
  for (let k = 0; k < 20000; k++) {
    const p = path();
    const q = rnd(3) === 0 ? `${path()}/${p.split("/").slice(rnd(2)).join("/")}` : path();
    const want = reference(p, q);
    assertEquals(commonSuffixParents(p, q), want, `${p} | ${q}`);
    if (want) defined++;
  }
  assert(defined > 2000, `only ${defined} pairs shared a tail`);
});

Deno.test("truncateUtf8() keeps temporary names within NAME_MAX for any script", async () => {
  const { truncateUtf8, TEMP_BASE_MAX_BYTES } = await import("../lib/target_fs.ts");
  const enc = new TextEncoder();
  for (const name of ["a".repeat(255), "長".repeat(85), "😀".repeat(63), "é".repeat(127)]) {
    const t = truncateUtf8(name, TEMP_BASE_MAX_BYTES);
    assert(enc.encode(t).length <= TEMP_BASE_MAX_BYTES, name);
    assert(name.startsWith(t) && !t.endsWith("\ud83d"), "cut between code points");
    assert(enc.encode(`.mimeo-tmp-01234567-${t}`).length <= 255);
  }
  assertEquals(truncateUtf8("short", 200), "short");
});

Deno.test("encodeTree()/decodeTree() round-trip every kind of entry", async () => {
  const { encodeTree, decodeTree } = await import("../lib/scan_worker.ts");
  const t: Tree = new Map([
    ["a", { type: "dir", mode: 0o750 }],
    ["b", { type: "dir", mode: 0o700, mtime: 1700000000456 }],
    // File nodes as the scanner makes them: every optional field present (one shape).
    ["a/f", {
      type: "file",
      size: 12,
      mtime: 1700000000123,
      mode: 0o644,
      sha256: undefined,
      fp: [99, 1700000000000],
      hashedAt: undefined,
    }],
    ["l", { type: "symlink", target: "a/f" }],
    ["m", { type: "symlink", target: "../x y" }],
    ["e", {
      type: "file",
      size: 0,
      mtime: 5,
      mode: 0o600,
      sha256: undefined,
      fp: [1, 2],
      hashedAt: undefined,
    }],
  ]);
  assertEquals(decodeTree(encodeTree(t)), t);
  assertEquals(decodeTree(encodeTree(new Map())), new Map());
});

/** A file node with a stat fingerprint (inode 7) and the time its hash was taken. */
function statNode(mtime: number, ctime: number, hashedAt?: number): FileNode {
  return { type: "file", size: 1, mode: 0o644, mtime, sha256: H("a"), fp: [7, ctime], hashedAt };
}

Deno.test("isReplicaTrustworthy(): trusted unless a fresh mtime falls in the ctime's second, not before the birth time", async () => {
  const { isReplicaTrustworthy } = await import("../lib/scan.ts");
  const s = 1_700_000_000_000; // a whole second
  // Fresh mtime in the ctime's second: a later write in that second could keep both.
  assertEquals(isReplicaTrustworthy(statNode(s + 200, s, s + 400)), false);
  assertEquals(isReplicaTrustworthy(statNode(s, s, s + 10)), false);
  assertEquals(isReplicaTrustworthy(statNode(s + 999, s, s + 1999)), false);
  // Fresh mtime in an earlier second: any later write changes the mtime or the ctime.
  assertEquals(isReplicaTrustworthy(statNode(s - 1, s, s + 400)), true);
  assertEquals(isReplicaTrustworthy(statNode(s - 800, s, s + 100)), true);
  // ... or in a later one (a source on a file system whose clock runs ahead).
  assertEquals(isReplicaTrustworthy(statNode(s + 1500, s, s + 400)), true);
  // Unknown ctime: only the racy window counts.
  assertEquals(isReplicaTrustworthy(statNode(s - 800, 0, s + 100)), false);
  assertEquals(isReplicaTrustworthy(statNode(s - 2000, 0, s)), true);
  // Born (written by mimeo) after the mtime it was given: trusted even within the second.
  const born = (mtime: number, bornAt: number) => ({ ...statNode(mtime, s, s + 400), bornAt });
  assertEquals(isReplicaTrustworthy(born(s + 200, s + 201)), true);
  assertEquals(isReplicaTrustworthy(born(s + 200, s + 200)), false);
  assertEquals(isReplicaTrustworthy(born(s + 200, s + 150)), false);
  // Old mtime, or taken from the cache: trusted as before.
  assertEquals(isReplicaTrustworthy(statNode(s + 100, s, s + 2100)), true);
  assertEquals(isReplicaTrustworthy(statNode(s + 100, s)), true);
});

Deno.test("isTrustworthy(): a source hash needs the racy window behind it and the ctime's second ended; a mtime ahead of the clock leaves it to the ctime", async () => {
  const { isTrustworthy, isRacyMtime } = await import("../lib/scan.ts");
  const s = 1_700_000_000_000; // a whole second
  // Old mtime, ctime second over: trusted; a fresh mtime or a running ctime second: not.
  assertEquals(isTrustworthy(statNode(s - 5000, s, s + 1000)), true);
  assertEquals(isTrustworthy(statNode(s - 500, s, s + 1000)), false);
  assertEquals(isTrustworthy(statNode(s - 5000, s, s + 999)), false);
  // A mtime far ahead of the hash (a clock ahead): trusted once the ctime's second is over.
  const year = 365 * 86400_000;
  assertEquals(isTrustworthy(statNode(s + 10 * year, s, s + 1000)), true);
  assertEquals(isTrustworthy(statNode(s + 10 * year, s, s + 500)), false);
  // A file written during its own read (mtime after the hash began) fails the ctime rule.
  assertEquals(isTrustworthy(statNode(s + 1200, s + 1000, s + 1100)), false);
  // Without a ctime, a mtime ahead stays racy.
  assertEquals(isTrustworthy(statNode(s + 10 * year, 0, s + 1000)), false);
  assertEquals(isRacyMtime(s + 10 * year, s, 0), true);
  assertEquals(isRacyMtime(s + 10 * year, s, s - 1000), false);
  assertEquals(isRacyMtime(s - 1999, s, s - 1000), true);
  assertEquals(isRacyMtime(s - 2000, s, s - 1000), false);
});
