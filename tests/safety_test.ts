/**
 * Refusals and faults: every dangerous configuration is refused before anything is
 * touched (checked by snapshotting the whole temp folder), and faults during a run are
 * logged results that never cost data.
 */
import {
  ageTree,
  assert,
  assertEquals,
  assertMatch,
  assertMirror,
  assertNotMatch,
  assertRecovers,
  exists,
  jsonLines,
  mimeo,
  ROOT,
  snapshot,
  tempDir,
  writeTree,
} from "./helpers.ts";

/** Run the CLI and assert exit code, a single clear line on stderr, and nothing touched. */
async function assertRefused(
  root: string,
  args: string[],
  code: number,
  message: RegExp,
  permissions?: string[],
): Promise<void> {
  const before = snapshot(root);
  const r = await mimeo(args, { permissions });
  assertEquals(r.code, code, `exit code for ${args.join(" ")}: ${r.stderr}`);
  assertMatch(r.stderr, message);
  assertEquals(r.stderr.trim().split("\n").length, 1, `one line expected, got:\n${r.stderr}`);
  assertNotMatch(r.stderr, /Stack backtrace|Uncaught|at file:\/\//);
  assertEquals(snapshot(root), before, "nothing may be created, changed or deleted");
}

/** Mount a 1 MiB tmpfs at `dir` (made here) with `opts`; unmounted when disposed. Needs root. */
async function tmpfsAt(dir: string, opts: "ro" | "rw"): Promise<AsyncDisposable> {
  Deno.mkdirSync(dir, { recursive: true }); // (a mount point may exist already)
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", `${opts},size=1m`, "tmpfs", dir],
    stderr: "piped",
  }).output();
  assert(
    mount.success,
    `this test needs to mount a tmpfs (root): ${new TextDecoder().decode(mount.stderr)}`,
  );
  return {
    async [Symbol.asyncDispose]() {
      await new Deno.Command("umount", { args: [dir] }).output();
    },
  };
}

function setup(root: string) {
  writeTree(root, {
    "src/a.txt": "a",
    "src/sub/b.txt": "b",
    "file.txt": "I am a file",
    "rep/old.txt": "old",
  });
  Deno.symlinkSync(`${root}/src`, `${root}/src-link`);
}

Deno.test("refuses a missing source or a source that is not a folder", async () => {
  await using d = await tempDir();
  setup(d.path);
  await assertRefused(
    d.path,
    ["sync", `${d.path}/nope`, `${d.path}/rep`],
    2,
    /Source '.*nope' does not exist/,
  );
  await assertRefused(
    d.path,
    ["sync", `${d.path}/file.txt`, `${d.path}/rep`],
    2,
    /is not a folder/,
  );
});

Deno.test("refuses a replica that is an existing file", async () => {
  await using d = await tempDir();
  setup(d.path);
  await assertRefused(
    d.path,
    ["sync", `${d.path}/src`, `${d.path}/file.txt`],
    2,
    /exists and is not a folder/,
  );
  // Below a file: one clear line (before, an "unexpected error" with exit 1).
  await assertRefused(
    d.path,
    ["sync", `${d.path}/src`, `${d.path}/file.txt/rep`],
    2,
    /Replica '.*file\.txt\/rep' cannot be a folder: a part of its path is a file/,
  );
});

Deno.test("paths that could never be written or read are one clear line, exit 2, nothing touched", async () => {
  // Before, a --manifest below a file, a folder or a missing folder let the run copy
  // everything and fail at its end, every run; the others were "unexpected error", exit 1.
  await using d = await tempDir();
  setup(d.path);
  const src = `${d.path}/src`, rep = `${d.path}/rep`;
  const cases: [string[], RegExp][] = [
    [
      ["sync", src, rep, "--manifest", `${d.path}/file.txt/m.json`],
      /Manifest '.*file\.txt\/m\.json' cannot be written: a part of its path is a file/,
    ],
    [["sync", src, rep, "--manifest", d.path], /Manifest '.*' is a folder; --manifest names/],
    [
      ["sync", src, rep, "--manifest", `${d.path}/no/such/m.json`],
      /Manifest '.*no\/such\/m\.json' cannot be written: its folder does not exist/,
    ],
    [["verify", rep, "--manifest", d.path], /Cannot read manifest '.*': Is a directory/],
    [["verify", rep, "--manifest", `${d.path}/file.txt/m.json`], /No manifest at '.*m\.json'/],
    [["manifest", src, "--out", `${d.path}/file.txt/out.json`], /Cannot write '.*out\.json'/],
  ];
  for (const [args, re] of cases) await assertRefused(d.path, args, 2, re);
});

Deno.test("a replica that cannot be created is one clear line, exit 2", async () => {
  await using d = await tempDir();
  writeTree(d.path, { "src/a": "a" });
  const ro = `${d.path}/ro`;
  await using _ro = await tmpfsAt(ro, "ro");
  await assertRefused(
    d.path,
    ["sync", `${d.path}/src`, `${ro}/rep`],
    2,
    /Cannot create replica '.*ro\/rep': Read-only file system/,
  );
});

Deno.test("a manifest folder mimeo cannot write is refused before anything is copied", async () => {
  // A replica that is a mount point in a folder the user cannot write (a drive mounted in
  // root's /media): the manifest beside it could never be written, so every run would copy,
  // fail at its end and, with no manifest, re-hash the whole replica next time.
  await using d = await tempDir();
  writeTree(d.path, { "src/a": "a", "src/sub/b": "b" });
  const parent = `${d.path}/parent`;
  await using _parent = await tmpfsAt(parent, "rw");
  Deno.mkdirSync(`${parent}/rep`);
  const remount = await new Deno.Command("mount", { args: ["-o", "remount,ro", parent] }).output();
  assert(remount.success, "remount read-only");
  await using _rep = await tmpfsAt(`${parent}/rep`, "rw");
  await assertRefused(
    d.path,
    ["sync", `${d.path}/src`, `${parent}/rep`],
    2,
    /Cannot write the manifest '.*parent\/rep\.mimeo\.json': its folder '.*parent' is on a read-only file system; pass --manifest FILE/,
  );
  // A new replica is made before the check (for its lock) and goes again when refused.
  await assertRefused(
    d.path,
    ["sync", `${d.path}/src`, `${d.path}/new`, "--manifest", `${parent}/m.json`],
    2,
    /Cannot write the manifest '.*parent\/m\.json': its folder '.*parent' is on a read-only/,
  );
  // A dry run writes nothing and is not refused; with --manifest elsewhere the sync runs.
  assertEquals((await mimeo(["plan", `${d.path}/src`, `${parent}/rep`])).code, 0);
  const r = await mimeo([
    "sync",
    `${d.path}/src`,
    `${parent}/rep`,
    "--manifest",
    `${d.path}/m.json`,
  ]);
  assertEquals(r.code, 0, r.stderr);
  assertMirror(`${d.path}/src`, `${parent}/rep`);
  assert(exists(`${d.path}/m.json`));
});

Deno.test("refuses overlapping source and replica, also through symlinks and ..", async () => {
  await using d = await tempDir();
  setup(d.path);
  const p = d.path;
  await assertRefused(p, ["sync", `${p}/src`, `${p}/src`], 2, /are the same folder/);
  await assertRefused(p, ["sync", `${p}/src`, `${p}/src/inner`], 2, /replica is inside the source/);
  await assertRefused(p, ["sync", `${p}/src/sub`, `${p}/src`], 2, /source is inside the replica/);
  await assertRefused(p, ["sync", `${p}/src`, `${p}/src-link`], 2, /same folder/);
  await assertRefused(
    p,
    ["sync", `${p}/src`, `${p}/src-link/x`],
    2,
    /replica is inside the source/,
  );
  await assertRefused(p, ["sync", `${p}/src`, `${p}/rep/../src/sub/..`], 2, /same folder/);
  await assertRefused(p, ["sync", `${p}/src-link/sub/..`, `${p}/src/new`], 2, /inside the source/);
});

Deno.test("refuses a manifest or log file inside the source or the replica", async () => {
  await using d = await tempDir();
  setup(d.path);
  const p = d.path;
  const base = ["sync", `${p}/src`, `${p}/rep`];
  await assertRefused(
    p,
    [...base, "--manifest", `${p}/src/m.json`],
    2,
    /Manifest .* must be outside/,
  );
  await assertRefused(
    p,
    [...base, "--manifest", `${p}/rep/m.json`],
    2,
    /Manifest .* must be outside/,
  );
  await assertRefused(
    p,
    [...base, "--log", `${p}/rep/log.jsonl`],
    2,
    /Log file .* must be outside/,
  );
  await assertRefused(
    p,
    [...base, "--log", `${p}/src-link/log.jsonl`],
    2,
    /Log file .* must be outside/,
  );
  await assertRefused(p, [...base, "--log", `${p}/missing/log.jsonl`], 2, /Cannot open log file/);
  // The manifest's index (its path with .json replaced by .idx) must not be the replica.
  await assertRefused(
    p,
    ["sync", `${p}/src`, `${p}/rep.idx`, "--manifest", `${p}/rep.json`],
    2,
    /Manifest index .* must be outside/,
  );
});

Deno.test("refuses unknown options, malformed values and conflicting options", async () => {
  await using d = await tempDir();
  setup(d.path);
  const base = ["sync", `${d.path}/src`, `${d.path}/rep`];
  const cases: [string[], RegExp][] = [
    [["--frobnicate"], /Unknown option '--frobnicate'/],
    [["--interval", "soon"], /--interval takes a duration/],
    [["--interval", "0s"], /--interval must be greater than zero/],
    [["--interval", "1s", "--count", "-2"], /Option '--count' argument is ambiguous/],
    [["--interval", "1s", "--count=-2"], /--count takes a whole number/],
    [["--interval", "1s", "--count", "1.5"], /--count takes a whole number/],
    [["--count", "3"], /--count needs --interval or --watch/],
    [["--quiet", "--verbose"], /cannot be used together/],
    [["--dry-run", "--interval", "5s"], /--dry-run cannot be combined/],
    [["--max-delete", "lots"], /--max-delete takes a whole number/],
    [["--max-delete", "150%"], /at most 100%/],
    [["--log-rotate", "weekly", "--log", "/tmp/x"], /--log-rotate takes daily or hourly/],
    [["--log-max-size", "10MB"], /need --log FILE/],
    [["extra-arg"], /got extra argument 'extra-arg'/],
  ];
  for (const [extra, re] of cases) await assertRefused(d.path, [...base, ...extra], 2, re);
  await assertRefused(d.path, ["sync", `${d.path}/src`], 2, /sync needs <source> <replica>/);
});

Deno.test("missing Deno permissions name the flag instead of a stack trace", async () => {
  await using d = await tempDir();
  setup(d.path);
  const args = ["sync", `${d.path}/src`, `${d.path}/rep`];
  await assertRefused(d.path, args, 2, /needs --allow-write for/, ["--allow-read"]);
  await assertRefused(d.path, args, 2, /needs --allow-read for/, []);
  await assertRefused(d.path, args, 2, /needs --allow-read for/, ["--allow-write"]);
});

Deno.test("--max-delete refuses a run that would delete too much, count and percent", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, Object.fromEntries(Array.from({ length: 10 }, (_, i) => [`f${i}`, `${i}`])));
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  for (let i = 0; i < 4; i++) Deno.removeSync(`${src}/f${i}`);
  await assertRefused(
    d.path,
    ["sync", src, dst, "--max-delete", "3"],
    3,
    /refusing to delete 4 entries \(more than --max-delete 3\); nothing was changed/,
  );
  await assertRefused(
    d.path,
    ["sync", src, dst, "--max-delete", "30%"],
    3,
    /refusing to delete 4 of 10 entries \(40\.0%/,
  );
  const ok = await mimeo(["sync", src, dst, "--max-delete", "4", "-q"]);
  assertEquals(ok.code, 0, ok.stderr);
  assertMirror(src, dst);
});

Deno.test("a first sync into a folder mimeo did not make is refused if it would delete most of it", async () => {
  // `mimeo build ~` instead of `mimeo build ~/www`: without a manifest beside the replica,
  // deleting more than half of its entries (and 10 or more) asks for --max-delete.
  await using d = await tempDir();
  const src = `${d.path}/src`, home = `${d.path}/home`;
  writeTree(src, { "index.html": "<p>", "app.js": "js" });
  writeTree(
    home,
    Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`doc${i}.txt`, `${i}`])),
  );
  const before = snapshot(d.path);
  for (const cmd of ["sync", "plan"]) {
    const r = await mimeo([cmd, src, home]);
    assertEquals(r.code, 3, `${cmd}: ${r.stderr}`);
    assertMatch(
      r.stderr,
      /refusing a first sync into '.*home' that would delete 12 of its 12 entries .*pass --max-delete 100%/,
    );
    assertEquals(snapshot(d.path), before, "nothing may be created, changed or deleted");
  }
  // A stale copy of the same tree is no such case: it mostly matches.
  const stale = `${d.path}/stale`;
  writeTree(stale, { "index.html": "<p>", "app.js": "old js", "gone.css": "css" });
  assertEquals((await mimeo(["sync", src, stale, "-q"])).code, 0);
  assertMirror(src, stale);
  // Asked for, it goes ahead; later runs (with a manifest) are not held back.
  const ok = await mimeo(["sync", src, home, "--max-delete", "100%", "-q"]);
  assertEquals(ok.code, 0, ok.stderr);
  assertMirror(src, home);
  writeTree(home, Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`new${i}`, "x"])));
  const again = await mimeo(["sync", src, home, "-q"]);
  assertEquals(again.code, 0, again.stderr);
  assertMirror(src, home);
});

Deno.test("an empty source never wipes a non-empty replica unless allowed", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a/b": "b", c: "c" });
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  for (const e of Deno.readDirSync(src)) Deno.removeSync(`${src}/${e.name}`, { recursive: true });
  await assertRefused(
    d.path,
    ["sync", src, dst],
    3,
    /Source .* is empty but the replica holds 3 entries; refusing .*--allow-empty-source/,
  );
  const ok = await mimeo(["sync", src, dst, "--allow-empty-source", "-q"]);
  assertEquals(ok.code, 0, ok.stderr);
  assertEquals(snapshot(dst), {});
});

Deno.test("one run at a time into a replica: a second sync or verify is refused untouched (exit 75)", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a/b": "b", c: "c" });
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  Deno.writeTextFileSync(`${src}/new`, "new");
  // This test process holds the lock a running sync (exclusive) or verify (shared) holds.
  for (const exclusive of [true, false]) {
    const held = Deno.openSync(dst, { read: true });
    try {
      assert(held.tryLockSync(exclusive));
      await assertRefused(
        d.path,
        ["sync", src, dst],
        75,
        /another mimeo run is using replica '.*dst'; nothing was done/,
      );
      if (exclusive) {
        await assertRefused(
          d.path,
          ["verify", dst],
          75,
          /another mimeo run is syncing into replica '.*dst'; nothing was done/,
        );
      } else {
        const v = await mimeo(["verify", dst]);
        assertEquals(v.code, 0, `verifies share the lock: ${v.stderr}`);
      }
      // A dry run writes nothing, so it needs no lock.
      assertEquals((await mimeo(["plan", src, dst])).code, 0);
    } finally {
      held.close();
    }
  }
  const ok = await mimeo(["sync", src, dst, "-q"]);
  assertEquals(ok.code, 0, ok.stderr);
  assertMirror(src, dst);
});

Deno.test("a source read error is exit 1, logged, and deletes nothing in the replica", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, log = `${d.path}/log.jsonl`;
  writeTree(src, { "ok/a": "a", "secret/s1": "s", "secret/s2": "s", "gone.txt": "g" });
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  Deno.removeSync(`${src}/gone.txt`);
  Deno.writeTextFileSync(`${src}/ok/new`, "new");
  // As root, file modes do not stop reads; Deno's --deny-read does.
  const r = await mimeo(["sync", src, dst, "--log", log], {
    permissions: ["--allow-read", "--allow-write", `--deny-read=${src}/secret`],
  });
  assertEquals(r.code, 1, r.stderr);
  assertMatch(r.stderr, /secret/);
  assertMatch(r.stderr, /not deleting \d+ entries from the replica as there were read errors/);
  // Nothing deleted (not the unreadable folder's files, not even the truly removed one)…
  assert(Deno.statSync(`${dst}/secret/s1`).isFile);
  assert(Deno.statSync(`${dst}/gone.txt`).isFile);
  // …while the rest of the run went on.
  assertEquals(Deno.readTextFileSync(`${dst}/ok/new`), "new");
  const events = jsonLines(Deno.readTextFileSync(log));
  assert(
    events.some((e) =>
      e.event === "scan-error" && e.path === "secret" && e.level === "error" && e.side === "source"
    ),
  );
  assert(events.some((e) => e.event === "deletes-skipped"));
  // The manifest still describes the replica exactly; readable again, the next run
  // completes the mirror.
  await assertRecovers(src, dst);
});

Deno.test("an unwritable replica folder is a per-file error; the manifest stays valid", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a/x": "x", "b/y": "y" });
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  writeTree(src, { "a/x2": "x2", "b/y2": "y2" });
  const r = await mimeo(["sync", src, dst], {
    permissions: ["--allow-read", "--allow-write", `--deny-write=${dst}/a`],
  });
  assertEquals(r.code, 1, r.stderr);
  assertMatch(r.stderr, /error: copy 'a\/x2'/);
  assertEquals(Deno.readTextFileSync(`${dst}/b/y2`), "y2");
  await assertRecovers(src, dst);
});

Deno.test("a full disk gives a clear error, keeps the manifest valid, and the next run repairs", async () => {
  await using d = await tempDir();
  const mnt = `${d.path}/small`;
  await using _small = await tmpfsAt(mnt, "rw");
  const src = `${d.path}/src`, dst = `${mnt}/dst`;
  writeTree(src, { "small.txt": "s" });
  ageTree(src);
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  writeTree(src, {
    "big1.bin": new Uint8Array(700_000).fill(1),
    "big2.bin": new Uint8Array(700_000).fill(2),
  });
  const r = await mimeo(["sync", src, dst]);
  assertEquals(r.code, 1, r.stderr);
  assertMatch(r.stderr, /No space left on device|ENOSPC|os error 28/);
  assertNotMatch(r.stderr, /Uncaught|Stack backtrace/);
  // No temporary file is left behind and what is in the replica matches its manifest.
  assert(!Object.keys(snapshot(dst)).some((p) => p.includes(".mimeo-tmp-")));
  JSON.parse(Deno.readTextFileSync(`${dst}.mimeo.json`));
  assertEquals((await mimeo(["verify", dst])).code, 0);
  // Free space by removing what does not fit; the next run mirrors the rest.
  Deno.removeSync(`${src}/big2.bin`);
  const r2 = await mimeo(["sync", src, dst, "-q"]);
  assertEquals(r2.code, 0, r2.stderr);
  assertMirror(src, dst);
});

Deno.test("a replica folder replaced by a symlink never leads to a write outside", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, outside = `${d.path}/outside`;
  writeTree(src, { "sub/a": "a", "sub/deep/b": "b" });
  writeTree(outside, { "precious": "do not touch" });
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  Deno.removeSync(`${dst}/sub`, { recursive: true });
  Deno.symlinkSync(outside, `${dst}/sub`);
  writeTree(src, { "sub/new": "n", "sub/deep/c": "c" });
  const before = snapshot(outside);
  const r = await mimeo(["sync", src, dst, "-q"]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(snapshot(outside), before);
  assertMirror(src, dst);
});

Deno.test("source symlinks are mirrored as links and never followed", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, outside = `${d.path}/outside`;
  writeTree(outside, { "big": "outside data" });
  writeTree(src, { "to-outside": { link: outside }, "to-file": { link: `${outside}/big` } });
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  assertEquals(Deno.readLinkSync(`${dst}/to-outside`), outside);
  assertEquals(Object.keys(snapshot(dst)).sort(), ["to-file", "to-outside"]);
  // A replica symlink where the source now has a file is replaced, not written through.
  Deno.removeSync(`${src}/to-file`);
  Deno.writeTextFileSync(`${src}/to-file`, "now a file");
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  assertEquals(Deno.readTextFileSync(`${outside}/big`), "outside data");
  assertMirror(src, dst);
});

Deno.test("special files: skipped with a warning on every run in the source, deleted from the replica", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a.txt": "a", "sub/b.txt": "b", "dir/": null });
  ageTree(src);
  const fifo = async (path: string) => {
    const mk = await new Deno.Command("mkfifo", { args: [path] }).output();
    assert(mk.success);
  };
  await fifo(`${src}/pipe`);
  await fifo(`${src}/sub/pipe`);
  // Before, only the first run warned: the quick check's re-scan skipped them silently.
  for (let run = 1; run <= 3; run++) {
    const r = await mimeo(["sync", src, dst]);
    assertEquals(r.code, 0, r.stderr);
    assertMatch(r.stderr, /warning: pipe: special file \(FIFO, socket or device\) skipped/);
    assertMatch(r.stderr, /warning: sub\/pipe: special file/, `run ${run}`);
    // (Long enough for a later run to record the folders' fingerprints.)
    await new Promise((r) => setTimeout(r, 1100));
  }
  assertEquals(Object.keys(snapshot(dst)).sort(), ["a.txt", "dir", "sub", "sub/b.txt"]);
  // In the replica they are extra entries, as rsync --delete sees them: deleted, also where
  // the source has a folder of that name.
  await fifo(`${dst}/sub/extra`);
  await fifo(`${dst}/dir2`);
  Deno.mkdirSync(`${src}/dir2`);
  const r = await mimeo(["sync", src, dst]);
  assertEquals(r.code, 0, r.stderr);
  assertMatch(r.stderr, /^delete {2}sub\/extra$/m);
  assertMatch(r.stderr, /^delete {2}dir2$/m);
  assertEquals(Object.keys(snapshot(dst)).sort(), [
    "a.txt",
    "dir",
    "dir2",
    "sub",
    "sub/b.txt",
  ]);
  assert(Deno.lstatSync(`${dst}/dir2`).isDirectory);
  // Deleting one changes its folder's listing: the folder gets the source's time back after,
  // also when its time was the source's before.
  await fifo(`${dst}/sub/again`);
  const mtime = (p: string) => Deno.statSync(p).mtime!.getTime();
  const t = new Date(mtime(`${src}/sub`));
  Deno.utimeSync(`${dst}/sub`, t, t);
  const again = await mimeo(["sync", src, dst]);
  assertEquals(again.code, 0, again.stderr);
  assertMatch(again.stderr, /^delete {2}sub\/again$/m);
  assertEquals(mtime(`${dst}/sub`), mtime(`${src}/sub`));
});

Deno.test("a name that is not valid UTF-8 is an error on every run, in the source or the replica", async () => {
  // Deno gives names as text: such a name comes back with U+FFFD and cannot be reached.
  // Each run must say so and exit 1; before, the runs after the first treated it as gone
  // and reported a clean mirror.
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "ok.txt": "y", "d/e/ok.txt": "y", "f/ok.txt": "y" });
  ageTree(src);
  // Only the shell can make one (bytes ff fe).
  const bad = async (dir: string, name: string) => {
    const mk = await new Deno.Command("sh", {
      args: ["-ec", `printf x > "$1/$(printf '${name}')"`, "sh", dir],
    }).output();
    assert(mk.success);
  };
  await bad(`${src}/d/e`, "bad\\377\\376");
  await bad(src, "top\\377");
  const runs = async (n: number, expect: RegExp[]) => {
    for (let run = 1; run <= n; run++) {
      const r = await mimeo(["sync", src, dst]);
      assertEquals(r.code, 1, `run ${run}: ${r.stderr}`);
      for (const re of expect) assertMatch(r.stderr, re, `run ${run}`);
      assertMatch(r.stderr, new RegExp(`finished with errors: .*${expect.length} unreadable`));
      // Let the folders' ctime second end, so that a later run could record their
      // fingerprints (and then not list them again).
      await new Promise((r) => setTimeout(r, 1100));
    }
  };
  const srcErrors = [
    /error: d\/e\/bad\uFFFD\uFFFD: the name is not valid UTF-8/,
    /error: top\uFFFD: the name is not valid UTF-8/,
  ];
  await runs(3, srcErrors);
  assertEquals(Object.keys(snapshot(dst)).sort(), [
    "d",
    "d/e",
    "d/e/ok.txt",
    "f",
    "f/ok.txt",
    "ok.txt",
  ]);
  await bad(`${dst}/f`, "rep\\377");
  await runs(2, [...srcErrors, /error: \(replica\) f\/rep\uFFFD: the name is not valid UTF-8/]);
});

Deno.test("sync never writes to the source", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a/b": "b", "c": { link: "a" }, "e/": null });
  const before = snapshot(src);
  const r = await mimeo(["sync", src, dst, "-q"], {
    permissions: ["--allow-read", `--allow-write=${dst},${dst}.mimeo.json`],
  });
  // Symlink creation needs unscoped write permission in Deno: reported per file, not a crash.
  assertEquals(r.code, 1, r.stderr);
  assertMatch(r.stderr, /symlink 'c'/);
  assertEquals(snapshot(src), before);
  const r2 = await mimeo(["sync", src, dst, "-q"]);
  assertEquals(r2.code, 0, r2.stderr);
  assertEquals(snapshot(src), before);
  assertMirror(src, dst);
});

Deno.test("a source file that keeps changing while it is copied is never recorded half-changed", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "busy.bin": new Uint8Array(48 << 20), "calm.txt": "calm" });
  // Rewrite 1 MiB slices of busy.bin (same size, new mtime) while mimeo copies it.
  let writing = true;
  const writer = (async () => {
    const f = Deno.openSync(`${src}/busy.bin`, { write: true });
    const chunk = new Uint8Array(1 << 20);
    for (let i = 0; writing; i++) {
      chunk.fill(i & 0xff);
      f.seekSync((i % 48) << 20, Deno.SeekMode.Start);
      f.writeSync(chunk);
      await new Promise((r) => setTimeout(r, 5));
    }
    f.close();
  })();
  const r = await mimeo(["sync", src, dst]);
  writing = false;
  await writer;
  assert(r.code === 0 || r.code === 1, r.stderr);
  if (r.code === 1) assertMatch(r.stderr, /copy 'busy\.bin': source file kept changing/);
  assertEquals(Deno.readTextFileSync(`${dst}/calm.txt`), "calm");
  assert(!Object.keys(snapshot(dst)).some((p) => p.includes(".mimeo-tmp-")));
  // Whatever landed, the manifest describes exactly the bytes in the replica; once quiet,
  // the next run mirrors it.
  await assertRecovers(src, dst);
});

Deno.test("an ordinary user can update read-only replica folders, which keep their mode", async () => {
  // Root ignores permission bits, so this runs mimeo as `nobody` (this test needs root and
  // runuser). Deno, its cache and the code are copied where that user can read them.
  await using d = await tempDir();
  const sh = async (script: string, user?: string) => {
    const args = user ? ["-u", user, "--", "sh", "-ec", script] : ["-ec", script];
    const r = await new Deno.Command(user ? "runuser" : "sh", {
      args,
      cwd: d.path,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
    assert(r.success, `${script}\n${out}`);
    return out;
  };
  const denoDir = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;
  await sh(
    `chmod 755 . && mkdir app w && cp -r '${ROOT}/main.ts' '${ROOT}/deno.json' '${ROOT}/deno.lock' '${ROOT}/lib' app/ ` +
      `&& cp -r '${denoDir}' denodir && cp "$(readlink -f '${Deno.execPath()}')" deno ` +
      `&& chown -R nobody:nogroup w denodir`,
  );
  const run = `env HOME=${d.path}/w DENO_DIR=${d.path}/denodir NO_COLOR=1 ${d.path}/deno run ` +
    `--allow-read --allow-write ${d.path}/app/main.ts sync w/src w/dst -q`;
  await sh(
    `mkdir -p w/src/ro/sub && echo a > w/src/ro/a && echo s > w/src/ro/sub/s && ` +
      `chmod 555 w/src/ro/sub w/src/ro && ${run}`,
    "nobody",
  );
  await sh(
    `chmod 755 w/src/ro w/src/ro/sub && echo b > w/src/ro/b && rm w/src/ro/a && ` +
      `mkdir w/src/ro/new && echo n > w/src/ro/sub/n && chmod 555 w/src/ro/sub w/src/ro && ${run}`,
    "nobody",
  );
  assertMirror(`${d.path}/w/src`, `${d.path}/w/dst`);
  assertEquals(Deno.statSync(`${d.path}/w/dst/ro`).mode! & 0o777, 0o555);
});
