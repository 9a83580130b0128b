/** Unit tests of the manifest: canonical text, round trip, validation, digest. */
import {
  isSafeRelativePath,
  ManifestError,
  parseManifest,
  serializeManifest,
  treeDigest,
} from "../lib/manifest.ts";
import type { Node, Tree } from "../lib/types.ts";
import { assert, assertEquals, assertMatch } from "./helpers.ts";

const tree = (o: Record<string, Node>): Tree => new Map(Object.entries(o));
const H = "ab".repeat(32);
const sample = () =>
  tree({
    "b/x y.txt": { type: "file", size: 3, mtime: 1700000000123, mode: 0o644, sha256: H },
    "a": { type: "dir", mode: 0o755 },
    "l": { type: "symlink", target: "b/x y.txt" },
    "b": { type: "dir", mode: 0o700 },
  });

Deno.test("serializeManifest() is canonical: sorted keys and paths, one entry per line", () => {
  const text = serializeManifest({ entries: sample(), cache: new Map() }, false);
  const again = serializeManifest(
    { entries: new Map([...sample()].reverse()), cache: new Map() },
    false,
  );
  assertEquals(text, again);
  const o = JSON.parse(text);
  assertEquals(Object.keys(o), ["algorithm", "digest", "entries", "totals", "version"]);
  assertEquals(Object.keys(o.entries), ["a", "b", "b/x y.txt", "l"]);
  assertEquals(o.entries["b/x y.txt"], {
    mode: "0644",
    mtime: 1700000000123,
    sha256: H,
    size: 3,
    type: "file",
  });
  assertEquals(o.totals, { bytes: 3, dirs: 2, files: 1, symlinks: 1 });
  assertEquals(text.split("\n").filter((l) => l.startsWith('"b/x y.txt": ')).length, 1);
});

Deno.test("parseManifest() round-trips entries and cache rows, with and without a replica fingerprint", () => {
  const cache = new Map([["b/x y.txt", { src: [5, 6] as const }]]);
  const text = serializeManifest({ entries: sample(), cache }, true);
  const m = parseManifest(text, "m.json", true);
  assertEquals(m.entries.get("b/x y.txt"), sample().get("b/x y.txt"));
  assertEquals(m.entries.get("b"), { type: "dir", mode: 0o700 });
  assertEquals(m.cache.get("b/x y.txt"), { dst: undefined, src: [5, 6] });
  const full = parseManifest(
    serializeManifest({
      entries: sample(),
      cache: new Map([["b/x y.txt", { dst: [1, 2], src: [3, 4] }]]),
    }, true),
    "m.json",
  );
  assertEquals(full.cache.get("b/x y.txt"), { dst: [1, 2], src: [3, 4] });
});

Deno.test("parseManifest() rejects what is not a valid manifest, with the reason", () => {
  const ok = JSON.parse(serializeManifest({ entries: sample(), cache: new Map() }, false));
  const bad: [unknown, RegExp][] = [
    ["{", /bad JSON/],
    [[], /not a JSON object/],
    [{ ...ok, version: 2 }, /unsupported version 2/],
    [{ ...ok, algorithm: "md5" }, /unsupported algorithm/],
    [{ ...ok, entries: undefined }, /missing 'entries'/],
    [{ ...ok, entries: { "../etc": { type: "dir", mode: "0755" } } }, /unsafe path/],
    [{ ...ok, entries: { "/abs": { type: "dir", mode: "0755" } } }, /unsafe path/],
    [
      { ...ok, entries: { a: { type: "file", mode: "0644", size: 1, mtime: 1, sha256: "xyz" } } },
      /bad entry/,
    ],
    [{ ...ok, entries: { a: { type: "dir", mode: "rwx" } } }, /bad entry/],
    [{ ...ok, entries: { a: { type: "fifo" } } }, /bad entry/],
    [{ ...ok, digest: "sha256:00" }, /digest mismatch/],
  ];
  for (const [value, re] of bad) {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    try {
      parseManifest(text, "m.json", true);
      throw new Error(`accepted: ${text.slice(0, 80)}`);
    } catch (e) {
      assert(e instanceof ManifestError, String(e));
      assertMatch(e.message, re);
    }
  }
});

Deno.test("treeDigest() covers path, type, mode and content but not mtime", () => {
  const base = treeDigest(sample());
  assertMatch(base, /^sha256:[0-9a-f]{64}$/);
  const t = sample();
  t.set("b/x y.txt", { type: "file", size: 3, mtime: 1, mode: 0o644, sha256: H });
  assertEquals(treeDigest(t), base, "mtime is not part of the digest");
  for (
    const change of [
      (x: Tree) => x.set("b/x y.txt", { type: "file", size: 3, mtime: 1, mode: 0o600, sha256: H }),
      (x: Tree) =>
        x.set("b/x y.txt", {
          type: "file",
          size: 3,
          mtime: 1,
          mode: 0o644,
          sha256: "cd".repeat(32),
        }),
      (x: Tree) => x.set("l", { type: "symlink", target: "a" }),
      (x: Tree) => x.set("c", { type: "dir", mode: 0o755 }),
      (x: Tree) => x.delete("a"),
    ]
  ) {
    const x = sample();
    change(x);
    assert(treeDigest(x) !== base);
  }
});

Deno.test("isSafeRelativePath() accepts relative paths and rejects escapes", () => {
  for (const p of ["a", "a/b", ".hidden", "..x", "a/..b", "a.", "x/.y", "sp ace/ü"]) {
    assert(isSafeRelativePath(p), p);
  }
  for (const p of ["", "/a", "a/", "a//b", ".", "..", "a/..", "../a", "a/./b", "a/../b", "a\0b"]) {
    assert(!isSafeRelativePath(p), JSON.stringify(p));
  }
});

Deno.test("parseManifest() gives the same result for the canonical and any other layout", () => {
  const cache = new Map([
    ["b/x y.txt", { dst: [1, 2] as const, src: [3, 4] as const }],
  ]);
  const entries = sample();
  entries.set('we"ird\\\\name\u0001', { type: "symlink", target: 'x"y' });
  entries.set("z", { type: "file", size: 0, mtime: 0, mode: 0o4755, sha256: H });
  const canonical = serializeManifest({ entries, cache }, true);
  const pretty = JSON.stringify(JSON.parse(canonical), null, 2); // same data, other layout
  const a = parseManifest(canonical, "a", true);
  const b = parseManifest(pretty, "b", true);
  assertEquals(a.entries, b.entries);
  assertEquals(a.cache, b.cache);
  assertEquals(a.entries.get('we"ird\\\\name\u0001'), { type: "symlink", target: 'x"y' });
  // A damaged canonical file is still rejected with a reason.
  for (const broken of [canonical.replace('"size":3', '"size":-3'), canonical.slice(0, -20)]) {
    try {
      parseManifest(broken, "m", false);
      throw new Error("accepted a broken manifest");
    } catch (e) {
      assert(e instanceof ManifestError, String(e));
    }
  }
});

Deno.test("serializeManifest() writes any name as JSON.stringify would, and the digest as treeDigest() does", () => {
  const names = ["データ/é", "😀".repeat(40), "tab\there", 'q"b\\', "line\u2028sep", "lone\ud800"];
  const entries: Tree = new Map();
  names.forEach((p, i) =>
    entries.set(p, {
      type: "file",
      size: 2 ** 40 + i,
      mtime: i === 0 ? -86_400_000 : 1700000000000 + i,
      mode: 0o640,
      sha256: H,
    })
  );
  entries.set("link é", { type: "symlink", target: "データ\u0007" });
  const cache = new Map([[names[1], { dst: [2 ** 33, 1700000001000] as const }]]);
  const m = { entries, cache };
  const text = serializeManifest(m, true);
  const raw = JSON.parse(text);
  for (const [p, n] of entries) {
    // Every key and value is what the JSON encoder itself would write.
    assert(text.includes(`${JSON.stringify(p)}: `), `key ${JSON.stringify(p)}`);
    if (n.type === "file") {
      assertEquals([raw.entries[p].size, raw.entries[p].mtime], [n.size, n.mtime]);
    }
  }
  assertEquals(raw.cache[names[1]], [2 ** 33, 1700000001000]);
  assertEquals(raw.entries["link é"].target, "データ\u0007");
  assertEquals(raw.digest, treeDigest(entries));
  assertEquals(parseManifest(text, "m", true).entries, entries);
});
