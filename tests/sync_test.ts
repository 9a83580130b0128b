/** The CLI run as a user runs it, on real temp folders: `sync`, `plan`, `manifest`, `verify`. */
import {
  age,
  ageTree,
  assert,
  assertEquals,
  assertMatch,
  assertMirror,
  assertNotMatch,
  exists,
  jsonLines,
  MAIN,
  mimeo,
  snapshot,
  tempDir,
  writeTree,
} from "./helpers.ts";

type Summary = {
  done: Record<string, number>;
  failed: number;
  bytes: number;
  exitCode: number;
  manifestWritten: boolean;
  digest: string;
  hashed: { source: number; replica: number };
  check: "quick" | "full";
};

async function syncJson(src: string, dst: string, ...extra: string[]): Promise<Summary> {
  const r = await mimeo(["sync", src, dst, "--json", "--quiet", ...extra]);
  assertEquals(r.code, 0, r.stderr);
  const lines = jsonLines(r.stdout);
  assertEquals(lines.length, 1, r.stdout);
  return lines[0] as unknown as Summary;
}

function sample(root: string) {
  writeTree(root, {
    "docs/readme.md": "# hello\n",
    "docs/deep/er/file.txt": "deep",
    'with space/it\'s ünïcode "q".txt': "odd name",
    ".dotfile": "hidden",
    "-leading-dash": "dash",
    "empty/": null,
    "nested/empty/also/": null,
    "bin/tool": "#!/bin/sh\necho hi\n",
    "link-to-file": { link: "docs/readme.md" },
    "link-to-dir": { link: "docs" },
    "dangling": { link: "does/not/exist" },
    "abs-link": { link: "/etc/hostname" },
    "big.bin": new Uint8Array(3 * 1024 * 1024).map((_, i) => (i * 7) & 0xff),
    "zero": "",
  });
  Deno.chmodSync(`${root}/bin/tool`, 0o755);
  Deno.chmodSync(`${root}/docs/readme.md`, 0o600);
  Deno.chmodSync(`${root}/nested/empty`, 0o700);
  const t = new Date("2021-03-04T05:06:07.891Z");
  Deno.utimeSync(`${root}/docs/readme.md`, t, t);
  ageTree(root);
  Deno.utimeSync(`${root}/docs/readme.md`, t, t);
}

Deno.test("sync mirrors files, empty folders, symlinks, modes and mtimes exactly", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  sample(src);
  const r = await mimeo(["sync", src, dst]);
  assertEquals(r.code, 0, r.stderr);
  assertMirror(src, dst);
  // Symlinks are links, never followed.
  assertEquals(Deno.readLinkSync(`${dst}/link-to-dir`), "docs");
  assert(Deno.lstatSync(`${dst}/link-to-dir`).isSymlink);
  assertEquals(
    Deno.lstatSync(`${dst}/docs/readme.md`).mtime!.toISOString(),
    "2021-03-04T05:06:07.891Z",
  );
  // Console: one line per operation and a summary, on stderr.
  assertMatch(r.stderr, /copy\s+big\.bin \(3\.0 MiB\)/);
  assertMatch(r.stderr, /symlink link-to-dir -> docs/);
  assertMatch(r.stderr, /mkdir\s+nested\/empty\/also\//);
  assertMatch(r.stderr, /synced: .*copied/);
  assertEquals(r.stdout, "");
});

Deno.test("sync stores a deterministic manifest beside the replica, not inside it", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  sample(src);
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  const text = Deno.readTextFileSync(`${dst}.mimeo.json`);
  const m = JSON.parse(text);
  assertEquals(Object.keys(m), ["algorithm", "cache", "digest", "entries", "totals", "version"]);
  assertEquals(m.version, 1);
  assertEquals(m.algorithm, "sha256");
  assertEquals(m.entries["docs/readme.md"], {
    mode: "0600",
    mtime: Date.parse("2021-03-04T05:06:07.891Z"),
    // sha256 of "# hello\n"
    sha256: "9e8b62f81ea5c66fa06ee53da032751386b37702153070c0e14dd1d316282fa7",
    size: 8,
    type: "file",
  });
  assertMatch(m.entries["docs/readme.md"].sha256, /^[0-9a-f]{64}$/);
  assertEquals(m.entries["link-to-dir"], { target: "docs", type: "symlink" });
  assertEquals(m.entries["nested/empty"], { mode: "0700", type: "dir" });
  assertEquals(Object.keys(m.entries), Object.keys(m.entries).sort());
  assert(!Object.keys(m.entries).some((p) => p.startsWith("/") || p.includes("..")));
  assert(!JSON.stringify(snapshot(dst)).includes("mimeo.json"), "manifest must not be inside");
  assertEquals(m.totals.files, 8);
  // The digest equals the one `manifest` computes for the source and for the replica.
  const a = await mimeo(["manifest", src, "--digest"]);
  const b = await mimeo(["manifest", dst, "--digest"]);
  assertEquals(a.stdout.trim(), m.digest);
  assertEquals(b.stdout.trim(), m.digest);
});

Deno.test("a second sync with nothing changed writes nothing", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  sample(src);
  await syncJson(src, dst);
  // Files just written are re-hashed once (their ctime second had not ended): let it end.
  // That run also records the folders' fingerprints.
  await new Promise((r) => setTimeout(r, 1100));
  await syncJson(src, dst);
  const before = Deno.lstatSync(`${dst}.mimeo.json`);
  const inode = Deno.lstatSync(`${dst}/big.bin`).ino;
  const s = await syncJson(src, dst);
  assertEquals(Object.values(s.done).reduce((a, b) => a + b, 0), 0);
  assertEquals(s.bytes, 0);
  assertEquals(s.hashed, { source: 0, replica: 0 });
  assertEquals(s.manifestWritten, false);
  assertEquals(Deno.lstatSync(`${dst}.mimeo.json`).mtime, before.mtime);
  assertEquals(Deno.lstatSync(`${dst}/big.bin`).ino, inode);
  const r = await mimeo(["sync", src, dst]);
  assertMatch(r.stderr, /synced: nothing to do/);
});

Deno.test("sync copies only what changed: edits, additions, deletions", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  sample(src);
  await syncJson(src, dst);
  const untouched = Deno.lstatSync(`${dst}/docs/deep/er/file.txt`).ino;
  Deno.writeTextFileSync(`${src}/docs/readme.md`, "# changed, longer\n");
  Deno.writeTextFileSync(`${src}/new/sub/file.txt`.replace("/new/sub/file.txt", "/newfile"), "n");
  Deno.removeSync(`${src}/zero`);
  Deno.removeSync(`${src}/nested`, { recursive: true });
  const s = await syncJson(src, dst);
  assertEquals(s.done.update, 1);
  assertEquals(s.done.copy, 1);
  assertEquals(s.done.delete, 1);
  assertEquals(s.done.rmdir, 3);
  assertMirror(src, dst);
  assertEquals(Deno.lstatSync(`${dst}/docs/deep/er/file.txt`).ino, untouched);
});

Deno.test("sync renames moved files and folders instead of copying them", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, {
    "assets/a.bin": new Uint8Array(100_000).fill(1),
    "assets/sub/b.bin": new Uint8Array(200_000).fill(2),
    "assets/sub/c.txt": "c",
    "single.dat": new Uint8Array(50_000).fill(3),
  });
  ageTree(src);
  await syncJson(src, dst);
  const inoB = Deno.lstatSync(`${dst}/assets/sub/b.bin`).ino;
  const inoS = Deno.lstatSync(`${dst}/single.dat`).ino;
  Deno.mkdirSync(`${src}/moved/deeper`, { recursive: true });
  Deno.renameSync(`${src}/assets`, `${src}/moved/deeper/assets2`);
  Deno.renameSync(`${src}/single.dat`, `${src}/moved/single-renamed.dat`);
  const s = await syncJson(src, dst);
  assertEquals(s.done.rename, 2);
  assertEquals(s.done.copy ?? 0, 0);
  assertEquals(s.bytes, 0);
  assertMirror(src, dst);
  assertEquals(Deno.lstatSync(`${dst}/moved/deeper/assets2/sub/b.bin`).ino, inoB);
  assertEquals(Deno.lstatSync(`${dst}/moved/single-renamed.dat`).ino, inoS);
});

Deno.test("a mode or mtime change is a metadata update, not a copy", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "x.sh": "echo", "y.txt": "yy", "dir/": null });
  ageTree(src);
  await syncJson(src, dst);
  const ino = Deno.lstatSync(`${dst}/x.sh`).ino;
  Deno.chmodSync(`${src}/x.sh`, 0o755);
  age(`${src}/y.txt`, 3_600_000);
  Deno.chmodSync(`${src}/dir`, 0o750);
  const s = await syncJson(src, dst);
  assertEquals(s.done.meta, 3);
  assertEquals(s.bytes, 0);
  assertMirror(src, dst);
  assertEquals(Deno.lstatSync(`${dst}/x.sh`).ino, ino);
});

Deno.test("sync handles type changes between file, folder and symlink", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, {
    "f2d": "file",
    "d2f/inner.txt": "inner",
    "f2l": "file",
    "l2f": { link: "f2d" },
    "l2d": { link: "f2d" },
    "d2l/x": "x",
  });
  await syncJson(src, dst);
  for (const p of ["f2d", "f2l"]) Deno.removeSync(`${src}/${p}`);
  for (const p of ["d2f", "d2l"]) Deno.removeSync(`${src}/${p}`, { recursive: true });
  for (const p of ["l2f", "l2d"]) Deno.removeSync(`${src}/${p}`);
  writeTree(src, {
    "f2d/child": "now a folder",
    "d2f": "now a file",
    "f2l": { link: "d2f" },
    "l2f": "now a file",
    "l2d/c": "now a folder",
    "d2l": { link: "l2d" },
  });
  await syncJson(src, dst);
  assertMirror(src, dst);
});

Deno.test("changes made in the replica behind mimeo's back are noticed and undone", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  sample(src);
  await syncJson(src, dst);
  // An ordinary same-size edit right after the sync: caught by its new mtime.
  Deno.writeTextFileSync(`${dst}/-leading-dash`, "DASH");
  // A same-size edit that even puts the mtime back: size and mtime would miss it; inode and
  // ctime do not, once the edit falls in a later second than mimeo's write (ctime has
  // whole seconds in Deno; `verify` re-hashes everything for the rest).
  await new Promise((r) => setTimeout(r, 1100));
  const st = Deno.lstatSync(`${dst}/docs/deep/er/file.txt`);
  Deno.writeTextFileSync(`${dst}/docs/deep/er/file.txt`, "DEEP");
  Deno.utimeSync(`${dst}/docs/deep/er/file.txt`, st.atime!, st.mtime!);
  Deno.removeSync(`${dst}/.dotfile`);
  Deno.writeTextFileSync(`${dst}/extra.txt`, "not in source");
  Deno.mkdirSync(`${dst}/extra-dir/sub`, { recursive: true });
  Deno.chmodSync(`${dst}/bin/tool`, 0o600);
  Deno.removeSync(`${dst}/link-to-dir`);
  Deno.symlinkSync("elsewhere", `${dst}/link-to-dir`);
  const s = await syncJson(src, dst);
  assert(s.done.update >= 1 && s.done.copy >= 1 && s.done.delete >= 1, JSON.stringify(s.done));
  assertMirror(src, dst);
  const v = await mimeo(["verify", dst]);
  assertEquals(v.code, 0, v.stdout);
});

Deno.test("--exclude and .mimeoignore leave paths out on both sides", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, {
    "keep.txt": "k",
    "debug.log": "l",
    "sub/also.log": "l",
    "cache/big": "c",
    "tmp/x": "t",
    "important.log": "keep me",
    ".mimeoignore": "# comments and globs\ntmp/\n!important.log\n",
  });
  writeTree(dst, { "replica-only.log": "excluded on the replica side is left alone" });
  const r = await mimeo(["sync", src, dst, "--exclude", "*.log", "--exclude", "cache/", "-q"]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(
    Object.keys(snapshot(dst)).sort(),
    [".mimeoignore", "important.log", "keep.txt", "replica-only.log", "sub"],
  );
});

Deno.test("--exclude patterns match case-sensitively, as rsync's and git's on Linux do", async () => {
  // The `ignore` package ignores case by default: '*.log' left 'KEEP.LOG' out of the mirror.
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "debug.log": "l", "KEEP.LOG": "L", "Cache/x": "c", "cache/y": "c" });
  const r = await mimeo(["sync", src, dst, "--exclude", "*.log", "--exclude", "cache/", "-q"]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(Object.keys(snapshot(dst)).sort(), ["Cache", "Cache/x", "KEEP.LOG"]);
});

Deno.test("--delete-excluded deletes excluded entries from the replica, as rsync's option does", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, {
    "keep.txt": "k",
    "debug.log": "l",
    "sub/also.log": "l",
    "sub/keep.md": "m",
    "cache/big": "c",
    "cache/deeper/more": "c",
  });
  ageTree(src);
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  ageTree(dst);
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0); // (the quick path from here)
  writeTree(dst, { "sub/stray.log": "put in the replica by hand" });
  const args = ["--exclude", "*.log", "--exclude", "cache/", "--delete-excluded"];
  const plan = await mimeo(["plan", src, dst, ...args, "--json"]);
  assertEquals(plan.code, 0, plan.stderr);
  const ops = JSON.parse(plan.stdout).ops.map((o: { op: string; path: string }) =>
    `${o.op} ${o.path}`
  ).sort();
  assertEquals(ops, [
    "delete cache/big",
    "delete cache/deeper/more",
    "delete debug.log",
    "delete sub/also.log",
    "delete sub/stray.log",
    // The folders whose listing changes get the source's time back (as rsync -a does).
    "dirtime .",
    "dirtime sub",
    "rmdir cache",
    "rmdir cache/deeper",
  ]);
  const r = await mimeo(["sync", src, dst, ...args]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(Object.keys(snapshot(dst)).sort(), ["keep.txt", "sub", "sub/keep.md"]);
  assertMatch((await mimeo(["sync", src, dst, ...args])).stderr, /synced: nothing to do/);
  // The manifest describes exactly what is left; the source is untouched.
  assertEquals((await mimeo(["verify", dst])).code, 0);
  assertEquals(Object.keys(snapshot(src)).length, 9);
  // Patterns that leave nothing of the source are refused like an empty source.
  const all = await mimeo(["sync", src, dst, "--exclude", "*", "--delete-excluded"]);
  assertEquals(all.code, 3, all.stderr);
  assertMatch(all.stderr, /Source '.*src' is empty after exclusions but the replica holds 3/);
});

Deno.test("a folder gone from the source that holds excluded entries in the replica is kept with a warning, not an error", async () => {
  // As rsync says "cannot delete non-empty directory" and exits 0. Before, every run failed
  // (exit 1) on the folder's removal.
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "keep.txt": "k", "d/a.txt": "a", "d/x.log": "l", "d/sub/y.log": "l" });
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  Deno.removeSync(`${src}/d`, { recursive: true });
  for (let run = 1; run <= 2; run++) {
    const r = await mimeo(["sync", src, dst, "--exclude", "*.log"]);
    assertEquals(r.code, 0, `run ${run}: ${r.stderr}`);
    assertMatch(r.stderr, /warning: kept folder 'd\/sub\/': it holds entries excluded/);
    assertMatch(r.stderr, /warning: kept folder 'd\/': it holds entries excluded/);
    assertEquals(Object.keys(snapshot(dst)).sort(), [
      "d",
      "d/sub",
      "d/sub/y.log",
      "d/x.log",
      "keep.txt",
    ]);
    const v = await mimeo(["verify", dst, "--exclude", "*.log"]);
    assertEquals(v.code, 0, v.stdout);
  }
  // Without the pattern the logs are extra entries again: all of `d` goes.
  const r = await mimeo(["sync", src, dst, "-q"]);
  assertEquals(r.code, 0, r.stderr);
  assertMirror(src, dst);
});

Deno.test("--checksum finds a same-size edit that kept size and mtime", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a.txt": "aaaa" });
  age(`${src}/a.txt`);
  await syncJson(src, dst);
  await syncJson(src, dst);
  const st = Deno.lstatSync(`${src}/a.txt`);
  // Replace the file by another inode whose stat looks the same except inode/ctime…
  Deno.writeTextFileSync(`${src}/a.txt`, "bbbb");
  Deno.utimeSync(`${src}/a.txt`, st.atime!, st.mtime!);
  const s = await syncJson(src, dst, "--checksum");
  assertEquals(s.done.update, 1);
  assertMirror(src, dst);
});

Deno.test("plan and sync --dry-run print the operations and change nothing", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a/b.txt": "b", "c": { link: "a" } });
  const p = await mimeo(["plan", src, dst]);
  assertEquals(p.code, 0, p.stderr);
  assertMatch(p.stdout, /mkdir\s+a\//);
  assertMatch(p.stdout, /copy\s+a\/b\.txt/);
  assertMatch(p.stdout, /dirtime\s+a\/\ndirtime\s+\.\/\n5 operations planned/);
  const n = await mimeo(["sync", src, dst, "--dry-run", "--json"]);
  assertEquals(n.code, 0, n.stderr);
  const j = JSON.parse(n.stdout);
  assertEquals(j.ops.map((o: { op: string; path: string }) => `${o.op} ${o.path}`), [
    "mkdir a",
    "copy a/b.txt",
    "symlink c",
    "dirtime a",
    "dirtime .",
  ]);
  assertEquals(j.ops[0].mode, "0755");
  let exists = true;
  try {
    Deno.lstatSync(dst);
  } catch {
    exists = false;
  }
  assertEquals(exists, false);
  assertEquals(Object.keys(snapshot(d.path)).sort(), ["src", "src/a", "src/a/b.txt", "src/c"]);
});

Deno.test("manifest prints deterministic JSON, --out writes it, --digest prints the digest", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`;
  sample(src);
  const a = await mimeo(["manifest", src]);
  const b = await mimeo(["manifest", src]);
  assertEquals(a.code, 0, a.stderr);
  assertEquals(a.stdout, b.stdout);
  const m = JSON.parse(a.stdout);
  assertEquals(m.cache, undefined);
  assertMatch(m.digest, /^sha256:[0-9a-f]{64}$/);
  const o = await mimeo(["manifest", src, "--out", `${d.path}/m.json`]);
  assertEquals(o.stdout, `${m.digest}  ${d.path}/m.json\n`);
  assertEquals(Deno.readTextFileSync(`${d.path}/m.json`), a.stdout);
  // A different tree has a different digest; the same content elsewhere has the same.
  Deno.writeTextFileSync(`${src}/zero`, "now not empty");
  const c = await mimeo(["manifest", src, "--digest"]);
  assert(c.stdout.trim() !== m.digest);
});

Deno.test("verify lists every mismatch and exits 1", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  sample(src);
  await syncJson(src, dst);
  const ok = await mimeo(["verify", dst]);
  assertEquals(ok.code, 0, ok.stdout + ok.stderr);
  assertMatch(ok.stdout, /verify: ok, \d+ entries/);
  const st = Deno.lstatSync(`${dst}/big.bin`);
  const data = Deno.readFileSync(`${dst}/big.bin`);
  data[1000] ^= 0xff; // bit rot: same size, same mtime
  Deno.writeFileSync(`${dst}/big.bin`, data);
  Deno.utimeSync(`${dst}/big.bin`, st.atime!, st.mtime!);
  Deno.removeSync(`${dst}/zero`);
  Deno.writeTextFileSync(`${dst}/intruder`, "x");
  Deno.chmodSync(`${dst}/bin/tool`, 0o700);
  const bad = await mimeo(["verify", dst, "--json"]);
  assertEquals(bad.code, 1);
  const r = JSON.parse(bad.stdout);
  assertEquals(
    r.mismatches.map((m: { path: string; problem: string }) => `${m.problem}:${m.path}`),
    ["content:big.bin", "mode:bin/tool", "extra:intruder", "missing:zero"],
  );
});

Deno.test("a first sync into an existing empty folder warns of nothing: there is nothing to rebuild", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  sample(src);
  Deno.mkdirSync(dst); // as after `mkdir backup`
  const r = await mimeo(["sync", src, dst]);
  assertEquals(r.code, 0, r.stderr);
  assertNotMatch(r.stderr, /warning/);
  assertMatch(r.stderr, /synced: \d+ copied/);
});

Deno.test("a missing or corrupt manifest is a warning and a rebuild, never a crash", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  sample(src);
  await syncJson(src, dst);
  Deno.removeSync(`${dst}.mimeo.json`);
  const r1 = await mimeo(["sync", src, dst]);
  assertEquals(r1.code, 0, r1.stderr);
  assertMatch(r1.stderr, /warning: no manifest at .*rebuilding/);
  assertMatch(r1.stderr, /synced: nothing to do/);
  for (
    const junk of [
      "{ not json",
      '{"version": 99}',
      '{"version":1,"algorithm":"sha256","entries":{"../x":{}}}',
    ]
  ) {
    Deno.writeTextFileSync(`${dst}.mimeo.json`, junk);
    const r = await mimeo(["sync", src, dst]);
    assertEquals(r.code, 0, r.stderr);
    assertMatch(r.stderr, /warning: .*not a valid mimeo manifest.*rebuilding/);
    assertMirror(src, dst);
    JSON.parse(Deno.readTextFileSync(`${dst}.mimeo.json`));
  }
});

Deno.test("--manifest puts the manifest where asked", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { a: "a" });
  const r = await mimeo(["sync", src, dst, "--manifest", `${d.path}/state/m.json`, "-q"]);
  // Refused before anything is copied (before, the run copied all and failed at its end).
  assertEquals(r.code, 2, "a missing folder for the manifest is refused");
  assert(!exists(dst), "nothing was created");
  Deno.mkdirSync(`${d.path}/state`);
  const r2 = await mimeo(["sync", src, dst, "--manifest", `${d.path}/state/m.json`, "-q"]);
  assertEquals(r2.code, 0, r2.stderr);
  assert(Deno.statSync(`${d.path}/state/m.json`).isFile);
});

Deno.test("--log appends one JSON object per event with documented fields", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, log = `${d.path}/mimeo.jsonl`;
  writeTree(src, { "a.txt": "hello", "d/": null, "l": { link: "a.txt" } });
  assertEquals((await mimeo(["sync", src, dst, "--log", log, "-q"])).code, 0);
  Deno.renameSync(`${src}/a.txt`, `${src}/b.txt`);
  assertEquals((await mimeo(["sync", src, dst, "--log", log, "-q"])).code, 0);
  const lines = jsonLines(Deno.readTextFileSync(log));
  for (const l of lines) {
    assertMatch(String(l.timestamp), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert(["debug", "info", "warning", "error"].includes(String(l.level)), String(l.level));
    assert(typeof l.event === "string");
    assert(typeof l.run === "number");
  }
  const copy = lines.find((l) => l.event === "copy")!;
  assertEquals(copy.path, "a.txt");
  assertEquals(copy.bytes, 5);
  assertEquals(copy.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
  assert(lines.some((l) => l.event === "mkdir" && l.path === "d"));
  assert(lines.some((l) => l.event === "symlink" && l.path === "l" && l.target === "a.txt"));
  assert(lines.some((l) => l.event === "rename" && l.from === "a.txt" && l.path === "b.txt"));
  const summaries = lines.filter((l) => l.event === "summary");
  assertEquals(summaries.length, 2);
  assert(typeof summaries[0].durationMs === "number" && typeof summaries[0].bytes === "number");
  assert(lines.filter((l) => l.event === "start").length === 2);
});

Deno.test("--interval with --count runs that many times, never overlapping", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a.txt": "a" });
  const t0 = performance.now();
  const r = await mimeo(["sync", src, dst, "--interval", "300ms", "--count", "3", "--json", "-q"]);
  const elapsed = performance.now() - t0;
  assertEquals(r.code, 0, r.stderr);
  const runs = jsonLines(r.stdout);
  assertEquals(runs.map((x) => x.run), [1, 2, 3]);
  assertEquals((runs[0].done as Record<string, number>).copy, 1);
  assertEquals((runs[2].done as Record<string, number>).copy, 0);
  assert(elapsed >= 600, `three runs 300 ms apart take at least 600 ms, took ${elapsed}`);
  assertMirror(src, dst);
});

Deno.test("periodic mode waits out a replica busy with another run, even in its first run", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a.txt": "a" });
  Deno.mkdirSync(dst);
  // This test process holds the lock a running sync holds, for the first run only.
  const held = Deno.openSync(dst, { read: true });
  assert(held.tryLockSync(true));
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-R", "-W", MAIN, "sync", src, dst, "--interval", "300ms", "--count", "3"],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  await new Promise((r) => setTimeout(r, 150));
  held.close();
  const out = await child.output();
  const stderr = new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 0, stderr);
  assertMatch(stderr, /run 1 failed: another mimeo run is using replica .*; trying again/);
  assertMirror(src, dst);
});

Deno.test("periodic mode survives a failing run and syncs again at the next interval", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a.txt": "a" });
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--quiet",
      "--allow-read",
      "--allow-write",
      `${new URL("../main.ts", import.meta.url).pathname}`,
      "sync",
      src,
      dst,
      "--interval",
      "250ms",
      "--count",
      "4",
      "--json",
      "-q",
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Make the source vanish after the first run, then come back.
  await new Promise((r) => setTimeout(r, 400));
  Deno.renameSync(src, `${src}.away`);
  await new Promise((r) => setTimeout(r, 300));
  Deno.renameSync(`${src}.away`, src);
  Deno.writeTextFileSync(`${src}/b.txt`, "b");
  const out = await child.output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 0, stderr);
  const runs = jsonLines(stdout);
  assertEquals(runs.length, 4);
  assert(runs.some((x) => x.failed === true), stdout);
  assertMatch(stderr, /run \d failed: .*does not exist; trying again/);
  assertMirror(src, dst);
});

Deno.test("right after a first sync, source hashes come from the cache (no re-read)", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  sample(src);
  // sample() sets mtimes back, which moves ctimes to now: a copy made within that same
  // second is rightly not trusted later. Let the second end.
  await new Promise((r) => setTimeout(r, 1100));
  const first = await syncJson(src, dst);
  assertEquals(first.hashed.source, 0, "a first sync hashes while copying, not before");
  const second = await syncJson(src, dst);
  // The replica's fresh copies are re-hashed once (their ctime second had not ended when
  // they were written), but the source is not read again.
  assertEquals(second.hashed.source, 0);
  assertEquals(Object.values(second.done).reduce((a, b) => a + b, 0), 0);
});

Deno.test("copies of fresh files made in a later second are trusted on the replica side", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  const files: Record<string, string> = {};
  for (let i = 0; i < 20; i++) files[`f${i}.txt`] = `content ${i}`;
  writeTree(src, files);
  // Copy in the next second: the copies' mtime (the source's) is outside their ctime's
  // second, though less than 2 s older than the copy.
  const mtime = Deno.lstatSync(`${src}/f0.txt`).mtime!.getTime();
  await new Promise((r) => setTimeout(r, 1050 - (Date.now() % 1000)));
  await syncJson(src, dst);
  const copied = Deno.lstatSync(`${dst}/f0.txt`);
  assert(Date.now() - mtime < 2000, "the copy came too late for this test");
  assert(Math.floor(copied.ctime!.getTime() / 1000) !== Math.floor(mtime / 1000));
  // The source files are still within their racy window: hashed again. The replica's
  // copies are not (before, every one of them was hashed again).
  const second = await syncJson(src, dst);
  assertEquals(second.hashed.replica, 0);
  assert(second.hashed.source > 0, "the source's racy files should be hashed again");
  assertEquals(Object.values(second.done).reduce((a, b) => a + b, 0), 0);
  // A same-size rewrite of a trusted copy is still seen: its mtime moves.
  Deno.writeTextFileSync(`${dst}/f3.txt`, "CONTENT 3");
  const third = await syncJson(src, dst);
  assertEquals(third.done.update, 1);
  assertMirror(src, dst);
});

Deno.test("copies of fresh files made within their mtime's second are trusted by their birth time", async () => {
  const n = 20;
  // The copy must fall in the same second as the edit (else the test above applies): start
  // right after a second begins; on a slow machine, try again.
  for (let attempt = 1;; attempt++) {
    await using d = await tempDir();
    const src = `${d.path}/src`, dst = `${d.path}/dst`;
    await new Promise((r) => setTimeout(r, 1020 - (Date.now() % 1000)));
    const files: Record<string, string> = {};
    for (let i = 0; i < n; i++) files[`f${i}.txt`] = `content ${i}`;
    writeTree(src, files);
    await syncJson(src, dst);
    const mtime = Deno.lstatSync(`${src}/f0.txt`).mtime!.getTime();
    const copy = Deno.lstatSync(`${dst}/f0.txt`);
    if (Math.floor(copy.ctime!.getTime() / 1000) !== Math.floor(mtime / 1000)) {
      assert(attempt < 5, "the copy never fell within its source's mtime second");
      continue;
    }
    const second = await syncJson(src, dst);
    if (copy.birthtime) {
      // Born after the mtime it was given: any later write sets a later mtime.
      assert(copy.birthtime.getTime() > mtime);
      assertEquals(second.hashed.replica, 0);
    } else {
      // A file system without birth times: the copies are hashed again, once.
      assertEquals(second.hashed.replica, n);
    }
    assertEquals(Object.values(second.done).reduce((a, b) => a + b, 0), 0);
    // A same-size rewrite right away (within the same second, most likely) is still seen.
    Deno.writeTextFileSync(`${dst}/f3.txt`, "CONTENT 3");
    const third = await syncJson(src, dst);
    assertEquals(third.done.update, 1);
    assertMirror(src, dst);
    return;
  }
});

Deno.test("names of 255 UTF-8 bytes are mirrored (temporary names stay within NAME_MAX)", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, {
    ["長".repeat(85)]: "cjk, 255 bytes",
    ["a".repeat(255)]: "ascii, 255 bytes",
    [`dir/${"é".repeat(127)}`]: "latin",
    ["😀".repeat(63)]: { link: "a" },
  });
  const r = await mimeo(["sync", src, dst, "-q"]);
  assertEquals(r.code, 0, r.stderr);
  assertMirror(src, dst);
});

Deno.test("sync() scans the replica on a second thread with the same results", async () => {
  const { sync } = await import("../lib/mod.ts");
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  const spec: Record<string, string | null | { link: string }> = {};
  for (let i = 0; i < 300; i++) spec[`d${i % 10}/sub/file-${i}.txt`] = `content ${i}`;
  spec["empty/"] = null;
  spec["link"] = { link: "d1" };
  writeTree(src, spec);
  ageTree(src);
  const opts = { source: src, replica: dst, workerMinManifestBytes: 1 };
  const first = await sync(opts);
  assertEquals(first.exitCode, 0);
  assertEquals(first.scannedInWorker, false, "no manifest yet: nothing to go by");
  // Tamper with the replica and change the source; the worker's scan must see all of it.
  Deno.writeTextFileSync(`${dst}/d3/sub/file-3.txt`, "tampered, longer");
  Deno.removeSync(`${dst}/d4/sub/file-4.txt`);
  Deno.writeTextFileSync(`${dst}/d5/extra`, "extra");
  Deno.removeSync(`${dst}/link`);
  Deno.mkdirSync(`${dst}/link`);
  Deno.writeTextFileSync(`${src}/d6/sub/new.txt`, "new");
  const r = await sync(opts);
  assertEquals(r.exitCode, 0);
  assertEquals(r.scannedInWorker, true);
  assertEquals(r.done.update + r.done.copy + r.done.delete + r.done.rmdir + r.done.symlink, 6);
  assertMirror(src, dst);
});

Deno.test("the replica folder's own mode follows the source folder's, as with rsync src/ dst/", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a/b": "b" });
  Deno.chmodSync(src, 0o700);
  const mode = (p: string) => (Deno.statSync(p).mode ?? 0) & 0o7777;
  const first = await mimeo(["sync", src, dst]);
  assertEquals(first.code, 0, first.stderr);
  assertEquals(mode(dst), 0o700); // (created so: private from the start)
  // Group-writable: the umask does not get in the way.
  Deno.chmodSync(src, 0o775);
  assertEquals((await mimeo(["sync", src, `${d.path}/dst2`, "-q"])).code, 0);
  assertEquals(mode(`${d.path}/dst2`), 0o775);
  Deno.chmodSync(src, 0o700);
  // Changed later: a run with nothing else to do (the quick check's early end) applies it.
  await new Promise((r) => setTimeout(r, 1100));
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  Deno.chmodSync(src, 0o750);
  const plan = await mimeo(["plan", src, dst]);
  assertMatch(plan.stdout, /^meta {4}\. mode 0750$/m);
  assertEquals(mode(dst), 0o700, "plan changes nothing");
  const s = await syncJson(src, dst);
  assertEquals(s.done.meta, 1);
  assertEquals(mode(dst), 0o750);
  assertEquals(Object.values((await syncJson(src, dst)).done).reduce((a, b) => a + b, 0), 0);
  assertMirror(src, dst);
});

Deno.test("folder times follow the source's, as rsync -a: a touched folder, a file made and removed, a replica folder touched by hand", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a/b/f": "f", "c/g": "g", "d/h": "h", "e/i": "i" });
  ageTree(src);
  // Once the files' ctime second is over, the first run's hashes are trusted from then on:
  // the quick check below finds no file changed, only folder times.
  await new Promise((r) => setTimeout(r, 1100));
  const first = await syncJson(src, dst);
  assertEquals(first.done.dirtime, 6); // a/b, a, c, d, e and the replica folder itself
  assertMirror(src, dst);
  // None of these changes a file or a listing; each changes one folder's time.
  const past = new Date("2020-02-03T04:05:06.789Z");
  Deno.utimeSync(`${src}/c`, past, past);
  Deno.writeTextFileSync(`${src}/d/tmp.swp`, "x");
  Deno.removeSync(`${src}/d/tmp.swp`);
  Deno.utimeSync(`${dst}/a/b`, past, past);
  const plan = await mimeo(["plan", src, dst, "--json"]);
  assertEquals(plan.code, 0, plan.stderr);
  const ops = JSON.parse(plan.stdout).ops as { op: string; path: string; mtime: string }[];
  assertEquals(ops.map((o) => `${o.op} ${o.path}`), ["dirtime d", "dirtime c", "dirtime a/b"]);
  assertEquals(ops[1].mtime, past.toISOString());
  // On the quick path (each side checked against the index, nothing re-scanned).
  const r = await syncJson(src, dst);
  assertEquals(r.check, "quick");
  assertEquals(r.done.dirtime, 3);
  assertEquals(r.done.copy + r.done.update + r.done.meta, 0);
  assertMirror(src, dst);
  assertEquals(Object.values((await syncJson(src, dst)).done).reduce((a, b) => a + b, 0), 0);
  // A folder the source cannot lose a time to: a copy into it sets the time back after.
  Deno.writeTextFileSync(`${src}/e/new.txt`, "n");
  const after = await syncJson(src, dst);
  assertEquals([after.done.copy, after.done.dirtime], [1, 1]);
  assertMirror(src, dst);
  // --omit-dir-times (rsync's -O): folder times are left as they are, the replica's own too.
  const other = new Date("2019-05-06T07:08:09.123Z");
  Deno.utimeSync(`${dst}/c`, other, other);
  Deno.writeTextFileSync(`${src}/newer.txt`, "n");
  const omit = await syncJson(src, dst, "--omit-dir-times");
  assertEquals(Object.entries(omit.done).filter(([, n]) => n > 0), [["copy", 1]]);
  assertEquals(Deno.statSync(`${dst}/c`).mtime!.getTime(), other.getTime());
  assertEquals((await syncJson(src, dst)).done.dirtime, 2); // c and the replica folder
  assertMirror(src, dst);
});

Deno.test("a folder time that cannot be set is one error and holds back no other folder's", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a/b/f": "f", "a/g": "g" });
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  const past = new Date("2020-02-03T04:05:06.789Z");
  Deno.utimeSync(`${src}/a/b`, past, past); // to set in a folder Deno may not write to
  Deno.writeTextFileSync(`${src}/a/new.txt`, "n"); // a's listing changes: its time too
  const r = await mimeo(["sync", src, dst], {
    permissions: ["--allow-read", "--allow-write", `--deny-write=${dst}/a/b`],
  });
  assertEquals(r.code, 1, r.stderr);
  assertEquals(r.stderr.split("\n").filter((l) => l.startsWith("error:")).length, 1, r.stderr);
  assertMatch(r.stderr, /^error: dirtime 'a\/b': /m);
  const mtime = (p: string) => Deno.statSync(p).mtime!.getTime();
  assertEquals(mtime(`${dst}/a`), mtime(`${src}/a`));
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  assertMirror(src, dst);
});

Deno.test("a source file dated in the future is trusted from its stat, and an edit to it is still seen", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  const bytes = (seed: number) => new Uint8Array(200_000).map((_, i) => (i * seed) & 255);
  writeTree(src, { "future.bin": bytes(7), "past.txt": "past" });
  ageTree(src);
  // A camera or archive with its clock ahead: ten years from now.
  const ahead = new Date(Date.now() + 10 * 365 * 86400_000);
  Deno.utimeSync(`${src}/future.bin`, ahead, ahead);
  // Its ctime's second must end before the first hash for that hash to be trusted later.
  await new Promise((r) => setTimeout(r, 1100));
  await syncJson(src, dst);
  for (let run = 0; run < 2; run++) {
    const s = await syncJson(src, dst);
    assertEquals(s.hashed, { source: 0, replica: 0 }, `run ${run}: not hashed again`);
    assertEquals(Object.values(s.done).reduce((a, b) => a + b, 0), 0);
  }
  // Same size, and the same future mtime put back: the ctime still tells.
  Deno.writeFileSync(`${src}/future.bin`, bytes(11));
  Deno.utimeSync(`${src}/future.bin`, ahead, ahead);
  const s = await syncJson(src, dst);
  assertEquals(s.done.update, 1);
  assertEquals(Deno.readFileSync(`${dst}/future.bin`), bytes(11));
  assertMirror(src, dst);
});
