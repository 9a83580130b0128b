/**
 * The manifest index and the quick check: a run compares both sides by stat with the
 * index and scans only what differs. These tests pin down when that path is taken, that
 * it sees every kind of change, and that a stale or damaged index is never trusted.
 */
import {
  chunkBytes,
  concatBytes,
  type EncodedManifest,
  encodeManifest,
  type Manifest,
  openPreviousManifest,
  readManifest,
  writeReplicaManifest,
} from "../lib/manifest.ts";
import {
  bytesToHex,
  decodeIndex,
  hexToBytes,
  INDEX_FIELDS,
  IndexBuilder,
  indexFind,
  indexPathFor,
  indexToManifest,
  indexUnder,
  loadIndexDetails,
  lowerBound,
  readIndex,
} from "../lib/manifest_index.ts";
import { quickCheck } from "../lib/quick_check.ts";
import type { CacheRecord } from "../lib/manifest.ts";
import type { Node } from "../lib/types.ts";
import { indexPart, manifestPart, normalizeOnly, spliceManifest } from "../lib/partial.ts";
import {
  ageTree,
  assert,
  assertEquals,
  assertMirror,
  envInt,
  exists,
  jsonLines,
  mimeo,
  Rng,
  tempDir,
  writeTree,
} from "./helpers.ts";

/** The last summary event in a JSON Lines log. */
function lastSummary(log: string): Record<string, unknown> {
  const s = jsonLines(Deno.readTextFileSync(log)).filter((e) => e.event === "summary");
  return s[s.length - 1];
}

async function syncedPair(spec: Parameters<typeof writeTree>[1]) {
  const d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, log = `${d.path}/log.jsonl`;
  writeTree(src, spec);
  ageTree(src);
  // Source hashes are trusted from the cache only once the ctime's second has passed.
  await new Promise((r) => setTimeout(r, 1100));
  const r = await mimeo(["sync", src, dst, "-q"]);
  assertEquals(r.code, 0, r.stderr);
  return {
    src,
    dst,
    log,
    man: `${dst}.mimeo.json`,
    idx: `${dst}.mimeo.idx`,
    [Symbol.asyncDispose]: () => d[Symbol.asyncDispose](),
  };
}

Deno.test("encodeManifest() builds the index, and decodeIndex() reads it back; a different manifest stat makes it stale", async () => {
  await using d = await tempDir();
  const man = `${d.path}/m.json`;
  Deno.writeTextFileSync(man, "{}");
  const m: Manifest = {
    entries: new Map([
      ["a", { type: "dir", mode: 0o755 }],
      ["a/f é.txt", {
        type: "file",
        size: 3,
        mtime: 1700000000123,
        mode: 0o644,
        sha256: "ab".repeat(32),
      }],
      ["a/g", { type: "file", size: 0, mtime: 5, mode: 0o600, sha256: "0f".repeat(32) }],
      ["l", { type: "symlink", target: "a/データ" }],
    ]),
    cache: new Map([["a/f é.txt", { dst: [11, 1700000001000], src: [12, 1700000002000] }], [
      "a/g",
      { src: [13, 9000] },
    ]]),
    digest: `sha256:${"cd".repeat(32)}`,
  };
  const st = Deno.statSync(man);
  const bytes = concatBytes(encodeManifest(m, true).index!(st));
  const ix = decodeIndex(bytes, st);
  assert(ix, "decodes against the same stat");
  const back = indexToManifest(ix);
  assertEquals([...back.entries], [...m.entries]);
  assertEquals([...back.cache], [["a/f é.txt", m.cache.get("a/f é.txt")], ["a/g", {
    dst: undefined,
    src: [13, 9000],
  }]]);
  assertEquals(back.digest, m.digest);
  assertEquals(decodeIndex(bytes, { ...st, size: st.size + 1 }), undefined, "stale");
  assertEquals(decodeIndex(bytes.subarray(0, bytes.length - 1), st), undefined, "truncated");
  assertEquals(decodeIndex(new Uint8Array(200), st), undefined, "not an index");
  // Paths out of sorted order (indexUnder() relies on the order) make it no index.
  const unsorted = new IndexBuilder(2);
  unsorted.path("b");
  unsorted.path("a");
  assertEquals(decodeIndex(concatBytes(unsorted.finish(m.digest!, 0, 0, st)), st), undefined);
  assertEquals(indexPathFor("/x/r.mimeo.json"), "/x/r.mimeo.idx");
  assertEquals(indexPathFor("/x/manifest"), "/x/manifest.idx");
});

Deno.test("readIndex() reads up to the paths; loadIndexDetails() reads the rest, and only from the same index", async () => {
  await using d = await tempDir();
  const man = `${d.path}/m.json`;
  const file = (b: string) => ({
    type: "file" as const,
    size: 1,
    mtime: 2,
    mode: 0o644,
    sha256: b.repeat(32),
  });
  const m: Manifest = {
    entries: new Map([["a", file("ab")], ["b", file("cd")]]),
    cache: new Map(),
  };
  writeReplicaManifest(man, encodeManifest(m, true), true);
  const st = Deno.statSync(man);
  const ix = readIndex(indexPathFor(man), st)!;
  assertEquals([ix.paths, ix.sha.length, ix.lines.length], [["a", "b"], 0, 0]);
  const whole = decodeIndex(Deno.readFileSync(indexPathFor(man)), st)!;
  assert(loadIndexDetails(ix));
  assertEquals([...ix.sha], [...whole.sha]);
  assertEquals([...ix.lines], [...whole.lines]);
  assertEquals(indexToManifest(ix).entries, m.entries);
  // Replaced since it was read (another manifest's index now): the details are refused.
  const again = readIndex(indexPathFor(man), st)!;
  m.entries.set("c", file("ef"));
  writeReplicaManifest(man, encodeManifest(m, true), true);
  assertEquals(loadIndexDetails(again), false);
});

Deno.test("indexFind() finds every path of an index and nothing else", () => {
  const rng = new Rng(envInt("MIMEO_SEED", 3));
  const parts = ["a", "b", "é", "データ", "x y", "😀", "a.b", "a/b", "a-b", "a0"];
  const set = new Set<string>();
  while (set.size < 5000) {
    set.add(
      Array.from({ length: rng.int(1, 4) }, () => rng.pick(parts)).join("/") + rng.int(0, 99),
    );
  }
  const paths = [...set].sort();
  paths.forEach((p, i) => assertEquals(indexFind(paths, `${p}`), i));
  for (const p of ["", "zz", `${paths[0]}/`, `${paths[1]}x`, "a/b/", "\u{10ffff}"]) {
    assertEquals(indexFind(paths, p), undefined, JSON.stringify(p));
  }
  assertEquals(indexFind([], "a"), undefined);
});

Deno.test("lowerBound() gives the same answer from any hint; indexUnder() the same flags in any root order", () => {
  const rng = new Rng(envInt("MIMEO_SEED", 4));
  const parts = ["a", "b", "é", "a.b", "a-b", "a0", "c"];
  const set = new Set<string>();
  // (7 + 49 + 343 + 2401 possible paths of 1 to 4 parts.)
  while (set.size < 1500) {
    set.add(Array.from({ length: rng.int(1, 4) }, () => rng.pick(parts)).join("/"));
  }
  const paths = [...set].sort();
  // The answer without a hint, by a plain scan.
  const scan = (s: string) => {
    let i = 0;
    while (i < paths.length && paths[i] < s) i++;
    return i;
  };
  const probes = [...paths.slice(0, 300), "", "0", "zz", "a/", "a0/", "é/z", "b/a.b/"];
  for (const s of probes) {
    const want = scan(s);
    assertEquals(lowerBound(paths, s), want, s);
    // Hints before, at, just after and far after the answer, and past the end.
    for (const h of [0, 1, want - 1, want, want + 1, want + 37, paths.length, paths.length + 5]) {
      if (h >= 0) assertEquals(lowerBound(paths, s, h), want, `${s} from ${h}`);
    }
  }
  assertEquals(lowerBound([], "a", 3), 0);
  // indexUnder(): sorted roots (hints help) and shuffled ones (hints mislead) agree with a
  // direct check of every path.
  const roots = Array.from({ length: 60 }, () => rng.pick(paths)).sort();
  const want = paths.map((p) => roots.some((r) => p === r || p.startsWith(`${r}/`)) ? 1 : 0);
  assertEquals([...indexUnder(paths, roots)], want);
  assertEquals([...indexUnder(paths, [...roots].reverse())], want);
  assert(want.filter((x) => x).length > 60, "the roots cover too little to test anything");
});

Deno.test("bytesToHex() and hexToBytes() are inverses", () => {
  const b = new Uint8Array(256).map((_, i) => i);
  const hex = bytesToHex(b);
  assertEquals(hex.slice(0, 8), "00010203");
  assertEquals(hex.slice(-4), "feff");
  assertEquals([...hexToBytes(hex)], [...b]);
});

Deno.test("normalizeOnly() keeps the outermost paths, sorted", () => {
  assertEquals(normalizeOnly(["b/c", "a", "a/x/y", "b", "c/d", "", ".", "c/d/e", "cd"]), [
    "a",
    "b",
    "c/d",
    "cd",
  ]);
});

Deno.test("manifestPart() and indexPart() take the roots and the folders above them; spliceManifest() puts a part back", async () => {
  await using d = await tempDir();
  const file = (n: number) => ({
    type: "file" as const,
    size: n,
    mtime: 1000 + n,
    mode: 0o644,
    sha256: n.toString(16).padStart(2, "0").repeat(32),
  });
  const dir = { type: "dir" as const, mode: 0o755 };
  const whole: Manifest = {
    entries: new Map<string, Node>([
      ["a", dir],
      ["a/b", dir],
      ["a/b/x", file(1)],
      ["a/b.txt", file(2)],
      ["a/c", file(3)],
      ["c.txt", file(4)],
      ["l", { type: "symlink", target: "c.txt" }],
    ]),
    cache: new Map([["a/b/x", { dst: [1, 2] }], ["a/c", { src: [3, 4] }]]),
  };
  const roots = new Set(["a/b", "l"]);
  const part = manifestPart(whole, roots);
  assertEquals([...part.entries.keys()].sort(), ["a", "a/b", "a/b/x", "l"]);
  assertEquals([...part.cache.keys()], ["a/b/x"]);
  // The same part read from the index.
  const man = `${d.path}/m.json`;
  assertEquals(writeReplicaManifest(man, encodeManifest(whole, true), true), undefined);
  const ix = readIndex(indexPathFor(man), Deno.statSync(man))!;
  const fromIx = indexPart(ix, roots);
  assertEquals(new Map([...fromIx.entries].sort()), new Map([...part.entries].sort()));
  const rows = (m: Manifest) => [...m.cache].map(([q, c]) => [q, c.dst, c.src]);
  assertEquals(rows(fromIx), rows(part));
  assertEquals(fromIx.digest, whole.digest);
  // A run changed the part: a/b/x gone, a/b/y new, l retargeted; "a" above the roots is
  // taken from the whole manifest, whatever the part says of it.
  const after: Manifest = {
    entries: new Map<string, Node>([
      ["a", { type: "dir", mode: 0o700 }],
      ["a/b", dir],
      ["a/b/y", file(5)],
      ["l", { type: "symlink", target: "a" }],
    ]),
    cache: new Map([["a/b/y", { dst: [5, 6] }]]),
  };
  const next = spliceManifest(whole, after, roots);
  assertEquals(
    new Map([...next.entries].sort()),
    new Map([
      ["a", dir],
      ["a/b", dir],
      ["a/b.txt", file(2)],
      ["a/b/y", file(5)],
      ["a/c", file(3)],
      ["c.txt", file(4)],
      ["l", { type: "symlink", target: "a" }],
    ].sort() as [string, Node][]),
  );
  assertEquals(
    new Map([...next.cache].sort()),
    new Map(
      [["a/b/y", { dst: [5, 6] }], ["a/c", { src: [3, 4] }]].sort() as [string, CacheRecord][],
    ),
  );
});

Deno.test("encodeManifest() with the previous file writes the same bytes and index as in full", async () => {
  await using d = await tempDir();
  const man = `${d.path}/m.json`;
  const rng = new Rng(envInt("MIMEO_SEED", 7));
  const names = ["a", "b", "é", 'q"t', "z\\", "\u2028", "sp ace", "a.b", "a-b", "データ"];
  const randomPath = () => {
    const depth = rng.int(1, 3);
    return Array.from({ length: depth }, () => rng.pick(names)).join("/");
  };
  const randomNode = (): Node =>
    rng.weighted<() => Node>([
      [6, () => ({
        type: "file",
        size: rng.int(0, 1e6),
        mtime: rng.int(0, 2e12),
        mode: rng.pick([0o644, 0o600, 0o755]),
        sha256: bytesToHex(rng.bytes(32)),
      })],
      [1, () => ({ type: "symlink", target: rng.pick(names) })],
    ])();
  const randomCache = (): CacheRecord =>
    rng.weighted<() => CacheRecord>([
      [2, () => ({ dst: [rng.int(1, 1e9), rng.int(1, 2e12)] })],
      [2, () => ({ dst: [rng.int(1, 1e9), rng.int(1, 2e12)], src: [rng.int(1, 1e9), 7] })],
      [1, () => ({ src: [rng.int(1, 1e9), rng.int(1, 2e12)] })],
    ])();
  /** A manifest whose folders are those its paths need. */
  const build = (paths: Iterable<string>, nodes: Map<string, Node>): Manifest => {
    const entries = new Map<string, Node>();
    const cache = new Map<string, CacheRecord>();
    for (const p of paths) {
      const parts = p.split("/");
      for (let i = 1; i < parts.length; i++) {
        const d = parts.slice(0, i).join("/");
        entries.set(d, { type: "dir", mode: 0o755 });
        // Folders have fingerprints too (recorded by a run that listed them).
        if (!cache.has(d) && rng.chance(0.5)) cache.set(d, randomCache());
      }
    }
    for (const p of paths) {
      if (entries.has(p)) continue;
      let n = nodes.get(p);
      if (!n) nodes.set(p, n = randomNode());
      entries.set(p, n);
      if (n.type === "file" && rng.chance(0.7)) cache.set(p, randomCache());
    }
    return { entries, cache };
  };
  for (let round = 0; round < 60; round++) {
    const nodes = new Map<string, Node>();
    const before = build(Array.from({ length: rng.int(0, 40) }, randomPath), nodes);
    const first = encodeManifest(before, true);
    writeReplicaManifest(man, first, true);
    const st = Deno.statSync(man);
    const ix = readIndex(indexPathFor(man), st)!;
    assert(ix, "the index was written");
    // The roots: some entries that stay, are replaced or go, and some new paths.
    const roots = new Set<string>();
    for (const p of before.entries.keys()) if (rng.chance(0.15)) roots.add(p);
    for (let i = rng.int(0, 3); i > 0; i--) roots.add(randomPath());
    const under = (p: string) => [...roots].some((r) => p === r || p.startsWith(`${r}/`));
    // Inside the roots: what a run recorded there (new nodes, some kept, some gone).
    const after = new Map<string, Node>();
    for (const p of before.entries.keys()) if (!under(p)) after.set(p, before.entries.get(p)!);
    const fresh = new Map<string, Node>();
    const inside = [...before.entries.keys()].filter(under).filter(() => rng.chance(0.5));
    for (const r of roots) if (rng.chance(0.6)) inside.push(r, `${r}/${rng.pick(names)}`);
    const part = build(inside.filter((p) => !after.has(p) || !under(p)), fresh);
    for (const [p, n] of part.entries) if (under(p)) after.set(p, n);
    const next: Manifest = { entries: new Map(), cache: new Map() };
    // The expected whole: outside the roots from before, inside from the part.
    for (const [p, n] of after) {
      next.entries.set(p, n);
      const c = under(p) ? part.cache.get(p) : before.cache.get(p);
      if (c) next.cache.set(p, c);
    }
    // (A folder the part dropped may leave an entry outside the roots without its parent:
    // the encoder does not care, and the comparison is what matters here.)
    using file = openPreviousManifest(man, st, ix);
    assert(file, "the previous file matches its index");
    const partInside: Manifest = { entries: new Map(), cache: new Map() };
    for (const [q, n] of part.entries) {
      if (!under(q)) continue;
      partInside.entries.set(q, n);
      if (part.cache.has(q)) partInside.cache.set(q, part.cache.get(q)!);
    }
    const replaced = new Uint8Array(ix.paths.map((q) => under(q) ? 1 : 0));
    assertEquals([...replaced], [...indexUnder(ix.paths, roots)], "indexUnder()");
    const spliced = encodeManifest(partInside, true, { ix, file, replaced });
    const full = encodeManifest(next, true);
    const text = (e: EncodedManifest) => new TextDecoder().decode(concatBytes(chunkBytes(e)));
    assertEquals(text(spliced), text(full), `round ${round}, roots ${[...roots]}`);
    assertEquals(spliced.digest, full.digest);
    assertEquals(
      [...concatBytes(spliced.index!(st))],
      [...concatBytes(full.index!(st))],
      `index, round ${round}`,
    );
  }
  // A large manifest: runs of lines longer than the read window (4 MiB) and many blocks.
  {
    const entries = new Map<string, Node>();
    const cache = new Map<string, CacheRecord>();
    for (let i = 0; i < 60_000; i++) {
      const p = `d${i % 7}/f${String(i).padStart(6, "0")}`;
      entries.set(p, {
        type: "file",
        size: i,
        mtime: 1e12 + i,
        mode: 0o644,
        sha256: bytesToHex(rng.bytes(32)),
      });
      if (i % 3) cache.set(p, { dst: [i + 1, 2], src: [i + 3, 4] });
    }
    for (let d = 0; d < 7; d++) entries.set(`d${d}`, { type: "dir", mode: 0o755 });
    const before: Manifest = { entries, cache };
    writeReplicaManifest(man, encodeManifest(before, true), true);
    assert(Deno.statSync(man).size > 8 << 20, "runs longer than the 4 MiB window");
    const st = Deno.statSync(man);
    const ix = readIndex(indexPathFor(man), st)!;
    const roots = new Set(["d0/f000007", "d6/f059999", "d3/f031000", "d3/new"]);
    const part: Manifest = {
      entries: new Map<string, Node>([["d3/new", { type: "symlink", target: "x" }]]),
      cache: new Map(),
    };
    const next: Manifest = { entries: new Map(before.entries), cache: new Map(before.cache) };
    for (const r of roots) next.entries.delete(r);
    next.entries.set("d3/new", { type: "symlink", target: "x" });
    using file = openPreviousManifest(man, st, ix)!;
    const replaced = new Uint8Array(ix.paths.map((q) => roots.has(q) ? 1 : 0));
    const spliced = encodeManifest(part, true, { ix, file, replaced });
    const full = encodeManifest(next, true);
    const a = concatBytes(chunkBytes(spliced)), b = concatBytes(chunkBytes(full));
    assertEquals(a.length, b.length);
    assert(a.every((x, i) => x === b[i]), "the same bytes");
    assertEquals(spliced.digest, full.digest);
  }
  // A previous file that does not match its index is refused, not copied from.
  const m = build(["x/1", "x/2", "y"], new Map());
  writeReplicaManifest(man, encodeManifest(m, true), true);
  const st = Deno.statSync(man);
  const ix = readIndex(indexPathFor(man), st)!;
  assertEquals(openPreviousManifest(man, { ...st, size: st.size + 1 }, ix), undefined);
  // A file whose lines are not where the index says (shifted by one byte).
  const good = Deno.readFileSync(man);
  Deno.writeFileSync(`${man}.shifted`, good.subarray(1));
  using shifted = Deno.openSync(`${man}.shifted`);
  const enc = encodeManifest(build(["y"], new Map()), true, {
    ix,
    file: shifted,
    replaced: new Uint8Array(ix.paths.map((q) => q === "y" ? 1 : 0)),
  });
  let threw = false;
  try {
    concatBytes(chunkBytes(enc));
  } catch {
    threw = true;
  }
  assert(threw, "a line that is not where the index says is not copied");
});

Deno.test("a quick run with changes counts, limits and records the whole tree, not just what changed", async () => {
  await using p = await syncedPair({
    "a/1.txt": "1",
    "a/2.txt": "2",
    "b/c/3.txt": "3",
    "b/c/4.txt": "4",
    "5.txt": "5",
    "l": { link: "5.txt" },
  });
  const { src, dst, log, man } = p;
  Deno.removeSync(`${src}/b/c/3.txt`);
  Deno.writeTextFileSync(`${src}/b/c/6.txt`, "six");
  // 1 deletion of 9 entries: 11%. Counted against the changed part only it would be 100%.
  const r = await mimeo(["sync", src, dst, "--log", log, "--max-delete", "50%"]);
  assertEquals(r.code, 0, r.stderr);
  const s = lastSummary(log);
  assertEquals([s.check, s.entries], ["quick", 9]);
  assertMirror(src, dst);
  const full = JSON.parse((await mimeo(["manifest", src])).stdout);
  const written = readManifest(man);
  assertEquals(written.digest, full.digest);
  assertEquals(written.entries.size, 9);
  assertEquals(s.digest, full.digest);
  // The manifest was spliced from the previous one, not written in full.
  const t = jsonLines(Deno.readTextFileSync(log)).filter((e) => e.event === "timings");
  assertEquals(t[t.length - 1].manifestWrite, "spliced");
});

Deno.test("quickCheck() lists exactly the paths that may differ, one path per new or gone folder", async () => {
  await using p = await syncedPair({
    "keep.txt": "k",
    "edit.txt": "e",
    "gone.txt": "g",
    "dir/a.txt": "a",
    "olddir/x/y.txt": "y",
    "modes/z.txt": "z",
    "link": { link: "keep.txt" },
  });
  const { src, man } = p;
  const ix = readIndex(p.idx, Deno.statSync(man));
  assert(ix, "the first sync wrote an index");
  const now = Date.now();
  assertEquals(quickCheck(src, ix, { side: "source", now })?.changed, []);
  assertEquals(quickCheck(p.dst, ix, { side: "replica", now })?.changed, []);
  Deno.writeTextFileSync(`${src}/edit.txt`, "edited");
  Deno.removeSync(`${src}/gone.txt`);
  Deno.removeSync(`${src}/olddir`, { recursive: true });
  writeTree(src, { "newdir/deep/n.txt": "n", "dir/b.txt": "b" });
  Deno.chmodSync(`${src}/modes`, 0o700);
  Deno.removeSync(`${src}/link`);
  Deno.symlinkSync("dir", `${src}/link`);
  const found = quickCheck(src, ix, { side: "source", now })!;
  assertEquals(found.changed.sort(), [
    "dir/b.txt",
    "edit.txt",
    "gone.txt",
    "link",
    "modes",
    "newdir",
    "olddir",
  ]);
  // A file inside the racy window (mtime less than 2 s before the run) is never trusted.
  const racyNow = Deno.statSync(`${src}/keep.txt`).mtime!.getTime() + 1000;
  assert(
    quickCheck(src, ix, { side: "source", now: racyNow })!.changed.includes("keep.txt"),
  );
});

Deno.test("quickCheck() finds new names per folder, also names other folders hold", async () => {
  // Names repeat across folders and levels, and sort around a folder's "/" ("a-b", "a.b",
  // "a0" next to "a"): a name is new in its own folder even where another folder has it.
  await using p = await syncedPair({
    "a/n.txt": "1",
    "a/x/n.txt": "2",
    "a/x/m.txt": "3",
    "a-b/n.txt": "4",
    "a.b": "5",
    "a0/m.txt": "6",
    "m.txt": "7",
    "z/a/n.txt": "8",
  });
  const { src, man } = p;
  const ix = readIndex(p.idx, Deno.statSync(man))!;
  const now = Date.now();
  assertEquals(quickCheck(src, ix, { side: "source", now })?.changed, []);
  const newFiles = [
    "n.txt",
    "a/m.txt",
    "a/x/a.b",
    "a-b/m.txt",
    "a0/n.txt",
    "z/n.txt",
    "z/a/m.txt",
    "a/x/new/n.txt",
  ];
  writeTree(src, Object.fromEntries(newFiles.map((f) => [f, "new"])));
  // A new folder stands for its contents.
  const added = newFiles.map((f) => f.replace(/\/new\/.*$/, "/new"));
  assertEquals(quickCheck(src, ix, { side: "source", now })?.changed.sort(), added.sort());
  // With names excluded, they are not new.
  const exclude = (q: string) => q.endsWith("m.txt");
  assertEquals(
    quickCheck(src, ix, { side: "source", now, exclude })?.changed.sort(),
    ["a/x/m.txt", "a0/m.txt", "m.txt", ...added.filter((q) => !exclude(q))].sort(),
  );
});

Deno.test("quickCheck() gives up on an index with an entry whose folder it lacks", async () => {
  await using d = await tempDir();
  writeTree(`${d.path}/t`, { "a/b.txt": "b" });
  const man = `${d.path}/m.json`;
  const st = Deno.statSync(`${d.path}/t/a/b.txt`);
  const m: Manifest = {
    entries: new Map([["a/b.txt", {
      type: "file",
      size: 1,
      mtime: Math.trunc(st.mtime!.getTime()),
      mode: st.mode! & 0o7777,
      sha256: "0".repeat(64),
    }]]),
    cache: new Map(),
  };
  writeReplicaManifest(man, encodeManifest(m, true), true);
  const ix = readIndex(indexPathFor(man), Deno.statSync(man))!;
  const now = Date.now();
  // Followed by the index alone, `a/b.txt` would never be stat'ed: the run scans in full.
  assertEquals(
    quickCheck(`${d.path}/t`, ix, { side: "source", now }),
    undefined,
  );
});

Deno.test("quickCheck() proposes folder fingerprints once a folder's ctime second has ended, and then trusts them", async () => {
  await using p = await syncedPair({ "d/a.txt": "a", "d/e/b.txt": "b", "c.txt": "c" });
  const { src, dst, man } = p;
  const ix = readIndex(p.idx, Deno.statSync(man))!;
  const at = (q: string) => ix.paths.indexOf(q);
  const fpOf = (abs: string) => {
    const st = Deno.lstatSync(abs);
    return [st.ino!, st.ctime!.getTime()];
  };
  // Too recent (ctime's second not over when the run started): nothing to record.
  const early = fpOf(`${src}/d`)[1];
  assertEquals(quickCheck(src, ix, { side: "source", now: early + 999 })!.dirFps, []);
  // Later: both folders, with their inode and ctime, for the side checked.
  const later = Date.now() + 5000;
  for (const [root, side] of [[src, "source"], [dst, "replica"]] as const) {
    const r = quickCheck(root, ix, { side, now: later })!;
    assertEquals(r.changed, []);
    assertEquals(r.dirFps, [at("d"), ...fpOf(`${root}/d`), at("d/e"), ...fpOf(`${root}/d/e`)]);
    // With exclude patterns, folder fingerprints are neither proposed nor trusted. Each
    // folder's mtime is reported either way (the run compares both sides' folder times).
    const excl = quickCheck(root, ix, { side, now: later, exclude: () => false })!;
    const mtimeOf = (q: string) => Math.trunc(Deno.lstatSync(`${root}/${q}`).mtime!.getTime());
    assertEquals(excl, {
      changed: [],
      dirFps: [],
      dirTimes: [at("d"), mtimeOf("d"), at("d/e"), mtimeOf("d/e")],
    });
  }
  // Recorded (as a no-op run does), a folder is trusted: no listing, no proposal.
  const o = at("d/e") * INDEX_FIELDS + 6;
  [ix.nums[o], ix.nums[o + 1]] = fpOf(`${src}/d/e`);
  const r = quickCheck(src, ix, { side: "source", now: later })!;
  assertEquals(r.dirFps, [at("d"), ...fpOf(`${src}/d`)]);
  // A new name in a folder changes its ctime: the fingerprint no longer matches.
  Deno.writeTextFileSync(`${src}/d/e/new.txt`, "n");
  assertEquals(quickCheck(src, ix, { side: "source", now: later })!.changed, [
    "d/e/new.txt",
  ]);
});

/** The folders that have a row in a manifest's `cache` section. */
function folderRows(man: string): Record<string, number[]> {
  const m = JSON.parse(Deno.readTextFileSync(man));
  return Object.fromEntries(
    Object.entries(m.cache as Record<string, number[]>).filter(([q]) =>
      m.entries[q].type === "dir"
    ),
  );
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("a run with nothing changed takes the quick check and writes nothing, except once to record folder fingerprints", async () => {
  await using p = await syncedPair({ "a/b.txt": "b", "c.txt": "c", "l": { link: "c.txt" } });
  const { src, dst, log, man, idx } = p;
  // The replica's folder was just written: its ctime second must end before a run may
  // record it.
  await sleep(1100);
  const digest = readManifest(man).digest;
  let r = await mimeo(["sync", src, dst, "-v", "--log", log]);
  assertEquals(r.code, 0, r.stderr);
  let s = lastSummary(log);
  assertEquals([s.check, s.planned, s.manifestWritten, s.digest], ["quick", 0, true, digest]);
  const fp = (abs: string) => [Deno.lstatSync(abs).ino, Deno.lstatSync(abs).ctime!.getTime()];
  assertEquals(folderRows(man), { a: [...fp(`${dst}/a`), ...fp(`${src}/a`)] });
  assertEquals(readManifest(man, true).digest, digest);
  const before = [Deno.statSync(man).mtime, Deno.statSync(idx).mtime];
  r = await mimeo(["sync", src, dst, "-v", "--log", log]);
  assertEquals(r.code, 0, r.stderr);
  s = lastSummary(log);
  assertEquals([s.check, s.planned, s.manifestWritten], ["quick", 0, false]);
  assertEquals(s.digest, digest);
  assertEquals([Deno.statSync(man).mtime, Deno.statSync(idx).mtime], before);
  // Nor does a watch-mode run (limited to paths, no quick check) over unchanged paths: the
  // index it did not read is still current.
  const { sync } = await import("../lib/mod.ts");
  const w = await sync({ source: src, replica: dst, only: ["c.txt", "a"] });
  assertEquals([w.ops.length, w.manifestWritten, w.digest], [0, false, s.digest]);
  assertEquals([Deno.statSync(man).mtime, Deno.statSync(idx).mtime], before);
});

Deno.test("new names in folders with recorded fingerprints are seen on both sides", async () => {
  await using p = await syncedPair({ "a/b/c.txt": "c", "a/d.txt": "d", "e/f.txt": "f" });
  const { src, dst, log, man } = p;
  await sleep(1100);
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  assertEquals(Object.keys(folderRows(man)).sort(), ["a", "a/b", "e"]);
  // Behind mimeo's back: a stray file in the replica, a new file in the source, a hard
  // link (a new name for an inode the manifest knows) and a rename inside one folder.
  Deno.writeTextFileSync(`${dst}/a/b/stray.txt`, "x");
  Deno.writeTextFileSync(`${src}/e/new.txt`, "new");
  Deno.linkSync(`${src}/a/d.txt`, `${src}/a/b/d-link.txt`);
  Deno.renameSync(`${dst}/e/f.txt`, `${dst}/e/g.txt`);
  const r = await mimeo(["sync", src, dst, "--log", log]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(lastSummary(log).check, "quick");
  assertMirror(src, dst);
  // A run with changes drops the fingerprints of the folders above what changed (what
  // they list may be what this run did): "a" and "a/b" (new file, stray), "e".
  assertEquals(folderRows(man), {});
});

Deno.test("a run with changes records the fingerprints of the folders its changes did not touch", async () => {
  await using p = await syncedPair({ "x/f.txt": "f", "x/g/h.txt": "h", "y/z.txt": "z" });
  const { src, dst, log, man } = p;
  await sleep(1100);
  Deno.writeTextFileSync(`${src}/x/f.txt`, "edited");
  const r = await mimeo(["sync", src, dst, "--log", log]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals([lastSummary(log).check, lastSummary(log).manifestWritten], ["quick", true]);
  assertMirror(src, dst);
  const fp = (abs: string) => [Deno.lstatSync(abs).ino, Deno.lstatSync(abs).ctime!.getTime()];
  // `x` is above what changed: listed again next time. The others are trusted from now on.
  assertEquals(folderRows(man), {
    "x/g": [...fp(`${dst}/x/g`), ...fp(`${src}/x/g`)],
    y: [...fp(`${dst}/y`), ...fp(`${src}/y`)],
  });
  assertEquals(readManifest(man, true).entries.size, 6);
  // A run that re-checks a file (its ctime moved) but has nothing to do to the replica:
  // what the folders above it list did not change, so they are recorded too.
  await sleep(1100);
  Deno.chmodSync(`${src}/x/g/h.txt`, Deno.statSync(`${src}/x/g/h.txt`).mode! & 0o7777);
  assertEquals((await mimeo(["sync", src, dst, "--log", log])).code, 0);
  assertEquals([lastSummary(log).planned, lastSummary(log).manifestWritten], [0, true]);
  assertEquals(Object.keys(folderRows(man)).sort(), ["x", "x/g", "y"]);
  assertEquals(folderRows(man).x, [...fp(`${dst}/x`), ...fp(`${src}/x`)]);
});

Deno.test("folder fingerprints are not recorded while exclude patterns hide names", async () => {
  await using p = await syncedPair({ "d/keep.txt": "k", "d/skip.log": "s" });
  const { src, dst, log, man } = p;
  Deno.removeSync(dst, { recursive: true });
  Deno.removeSync(man);
  assertEquals((await mimeo(["sync", src, dst, "-q", "--exclude", "*.log"])).code, 0);
  await sleep(1100);
  // A no-op under the pattern: listing `d` without `skip.log` must not become trusted.
  assertEquals((await mimeo(["sync", src, dst, "--log", log, "--exclude", "*.log"])).code, 0);
  assertEquals([lastSummary(log).planned, lastSummary(log).manifestWritten], [0, false]);
  assertEquals(folderRows(man), {});
  // Without it, `skip.log` is seen and copied.
  const r = await mimeo(["sync", src, dst, "--log", log]);
  assertEquals(r.code, 0, r.stderr);
  assertMirror(src, dst);
});

Deno.test("a pattern added, then dropped: the folders whose names it hid lose their fingerprints", async () => {
  await using p = await syncedPair({ "d/keep.txt": "k", "d/x.log": "log1", "e/other.txt": "o" });
  const { src, dst, man } = p;
  await sleep(1100);
  // A no-op records the folders' fingerprints; `d` is then trusted without a listing.
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  assert("d" in folderRows(man) && "e" in folderRows(man), JSON.stringify(folderRows(man)));
  // Now excluded: `x.log` leaves the manifest and stays on both sides, and so `d`'s
  // fingerprint, recorded with it, must go (before, it stayed: the run changed nothing).
  assertEquals((await mimeo(["sync", src, dst, "-q", "--exclude", "*.log"])).code, 0);
  assert(!("d" in folderRows(man)), JSON.stringify(folderRows(man)));
  assert("e" in folderRows(man), "a folder the pattern hid nothing in keeps its fingerprint");
  // Without the pattern, `x.log` is tracked again, so an edit to it is mirrored.
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  Deno.writeTextFileSync(`${src}/d/x.log`, "log2, longer");
  const r = await mimeo(["sync", src, dst]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(Deno.readTextFileSync(`${dst}/d/x.log`), "log2, longer");
  assertMirror(src, dst);
});

Deno.test("the quick check sees every kind of change on both sides", async () => {
  await using p = await syncedPair({
    "f.txt": "one",
    "same.txt": "1234",
    "mode.sh": "#!/bin/sh",
    "d/x.txt": "x",
    "d/y.txt": "y",
    "t/a.txt": "a",
    "l": { link: "f.txt" },
  });
  const { src, dst, log } = p;
  // Source: new, edited, deleted, renamed folder, mode change.
  Deno.writeTextFileSync(`${src}/new.txt`, "new");
  Deno.writeTextFileSync(`${src}/f.txt`, "two!");
  Deno.renameSync(`${src}/d`, `${src}/d2`);
  Deno.chmodSync(`${src}/mode.sh`, 0o755);
  // Replica, behind mimeo's back: same-size rewrite, extra file, folder turned into a
  // file, symlink retargeted.
  Deno.writeTextFileSync(`${dst}/same.txt`, "abcd");
  Deno.writeTextFileSync(`${dst}/extra.txt`, "extra");
  Deno.removeSync(`${dst}/t`, { recursive: true });
  Deno.writeTextFileSync(`${dst}/t`, "not a folder");
  Deno.removeSync(`${dst}/l`);
  Deno.symlinkSync("same.txt", `${dst}/l`);
  const r = await mimeo(["sync", src, dst, "--log", log]);
  assertEquals(r.code, 0, r.stderr);
  assertMirror(src, dst);
  const s = lastSummary(log);
  assertEquals(s.check, "quick");
  assertEquals((s.done as Record<string, number>).rename, 1, "the folder is renamed, not copied");
  // And the run after that is a quick no-op again.
  const again = await mimeo(["sync", src, dst, "--log", log]);
  assertEquals(again.code, 0, again.stderr);
  assertEquals([lastSummary(log).check, lastSummary(log).planned], ["quick", 0]);
});

Deno.test("a stale, damaged or missing index is not trusted: the run scans in full and writes a new one", async () => {
  await using p = await syncedPair({ "a.txt": "a", "d/b.txt": "b" });
  const { src, dst, log, man, idx } = p;
  const run = async () => {
    const r = await mimeo(["sync", src, dst, "--log", log]);
    assertEquals(r.code, 0, r.stderr);
    assertMirror(src, dst);
    return lastSummary(log).check;
  };
  // Stale: the manifest was rewritten (same text, new inode) after the index.
  Deno.writeTextFileSync(`${man}.copy`, Deno.readTextFileSync(man));
  Deno.renameSync(`${man}.copy`, man);
  Deno.writeTextFileSync(`${src}/a.txt`, "changed");
  ageTree(src);
  assertEquals(await run(), "full");
  assertEquals(await run(), "quick", "the full run wrote a fresh index");
  // Damaged.
  const bytes = Deno.readFileSync(idx);
  Deno.writeFileSync(idx, bytes.subarray(0, bytes.length - 10));
  assertEquals(await run(), "full");
  assertEquals(await run(), "quick");
  // Missing.
  Deno.removeSync(idx);
  assertEquals(await run(), "full");
  assertEquals(await run(), "quick");
});

Deno.test("sync() quick-checks the replica on a second thread with the same results", async () => {
  const { sync } = await import("../lib/mod.ts");
  await using p = await syncedPair({ "a/1.txt": "1", "a/2.txt": "2", "b/3.txt": "3" });
  const { src, dst } = p;
  const opts = { source: src, replica: dst, workerMinManifestBytes: 1 };
  const noop = await sync(opts);
  assertEquals([noop.check, noop.scannedInWorker, noop.ops.length], ["quick", true, 0]);
  Deno.writeTextFileSync(`${dst}/a/1.txt`, "tampered, longer");
  Deno.removeSync(`${dst}/b`, { recursive: true });
  const r = await sync(opts);
  assertEquals([r.check, r.scannedInWorker, r.exitCode], ["quick", true, 0]);
  assertEquals(r.done.update + r.done.copy + r.done.mkdir, 2 + 1);
  assertMirror(src, dst);
});

Deno.test("the index is optional: denied to mimeo, it is neither read nor written and runs scan in full", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, log = `${d.path}/log.jsonl`;
  const idx = `${dst}.mimeo.idx`;
  writeTree(src, { "a.txt": "a", "d/b.txt": "b" });
  const permissions = ["--allow-read", "--allow-write", `--deny-write=${idx}`];
  for (let run = 1; run <= 2; run++) {
    const r = await mimeo(["sync", src, dst, "--log", log], { permissions });
    assertEquals(r.code, 0, r.stderr);
    assertMirror(src, dst);
    assertEquals(lastSummary(log).check, "full");
  }
  assert(!exists(idx), "no index written");
  // Allowed again: the next run writes it, and the one after is quick.
  await mimeo(["sync", src, dst, "-q"]);
  assert(exists(idx));
  const r = await mimeo(["sync", src, dst, "--log", log], {
    permissions: ["--allow-read", "--allow-write", `--deny-read=${idx}`],
  });
  assertEquals(r.code, 0, r.stderr);
  assertEquals(lastSummary(log).check, "full", "an unreadable index is not used");
});
