/**
 * The copy helper (`lib/copy_worker.ts`): a second thread that shares long runs of small
 * copies. Whatever thread copies a file, the replica, the manifest and the report must be
 * the same; whatever the helper cannot do must end up done (or reported) by the main thread.
 */
import { applyPlan } from "../lib/apply.ts";
import { CopyHelper } from "../lib/copy_worker.ts";
import { plan } from "../lib/plan.ts";
import { scanTree } from "../lib/scan.ts";
import { sync } from "../lib/sync.ts";
import { FsTarget } from "../lib/target_fs.ts";
import type { FileNode, Tree } from "../lib/types.ts";
import {
  ageTree,
  assert,
  assertEquals,
  assertMatch,
  assertMirror,
  assertRecovers,
  jsonLines,
  mimeo,
  snapshot,
  tempDir,
  writeTree,
} from "./helpers.ts";

type Spec = Parameters<typeof writeTree>[1];

/** `n` small files in 20 folders, with odd names, modes and a few links. */
function manyFiles(n: number): Spec {
  const spec: Spec = {};
  for (let i = 0; i < n; i++) {
    const name = i % 50 === 0 ? `ünï "${i}" 'q'.txt` : `file-${i}.txt`;
    spec[`d${i % 20}/sub ${i % 3}/${name}`] = `content ${i} `.repeat(i % 200);
  }
  spec["links/to-file"] = { link: "../d1/sub 1/file-1.txt" };
  spec["links/dangling"] = { link: "nowhere" };
  spec["empty/"] = null;
  return spec;
}

/**
 * Start the helper once with nothing to do, so that its modules are compiled and cached.
 * On a fresh checkout its first start-up otherwise takes longer than the main thread needs
 * to copy a test's files, and a test that asserts the helper took part would fail.
 */
async function warmHelper(root: string): Promise<void> {
  assertEquals(await new CopyHelper(root, root, [], () => {}).finished, []);
}

/** Temporary files left anywhere under root. */
function temps(root: string): string[] {
  const out: string[] = [];
  const walk = (abs: string) => {
    for (const e of Deno.readDirSync(abs)) {
      if (e.name.startsWith(".mimeo-tmp-")) out.push(`${abs}/${e.name}`);
      if (e.isDirectory && !e.isSymlink) walk(`${abs}/${e.name}`);
    }
  };
  walk(root);
  return out;
}

Deno.test("sync() shares a long run of copies with the helper thread, with the same results", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  const n = 1500;
  writeTree(src, {
    ...manyFiles(n),
    // Large enough for the kernel-copy path, which stays on the main thread.
    "big/blob.bin": new Uint8Array(17 * 1024 * 1024).map((_, i) => (i * 31) & 0xff),
  });
  Deno.chmodSync(`${src}/d3/sub 0/file-3.txt`, 0o755);
  Deno.chmodSync(`${src}/d4/sub 1/file-4.txt`, 0o600);
  ageTree(src);
  // Past the second of the files' ctime, so that their hashes may be trusted next time.
  await new Promise((r) => setTimeout(r, 1100));
  await warmHelper(d.path);
  const r = await sync({ source: src, replica: dst, helperMinFiles: 1 });
  assertEquals(r.exitCode, 0);
  assertEquals(r.done.copy, n + 1);
  assert(r.copiedByHelper > 0, "the helper copied nothing");
  assert(r.copiedByHelper < n, "the main thread copied nothing");
  assertMirror(src, dst);
  assertEquals(temps(dst), []);
  const v = await mimeo(["verify", dst]);
  assertEquals(v.code, 0, v.stderr);
  // What the helper recorded (hashes, source fingerprints) makes the next run a no-op
  // that reads no source file again. (A replica file may be re-hashed once when the rename
  // into place crossed a second: its ctime moved, as on the main thread's path.)
  const again = await sync({ source: src, replica: dst, helperMinFiles: 1 });
  assertEquals(again.exitCode, 0);
  assertEquals(again.ops.length, 0);
  assertEquals(again.hashed.source, 0);
});

Deno.test("copies the helper makes of just-edited files are trusted by their birth time", async () => {
  const n = 400;
  // Edited and copied within one second (so only the birth-time rule can trust the copies):
  // start right after a second begins; on a slow machine, try again.
  for (let attempt = 1;; attempt++) {
    await using d = await tempDir();
    const src = `${d.path}/src`, dst = `${d.path}/dst`;
    await warmHelper(d.path);
    await new Promise((r) => setTimeout(r, 1020 - (Date.now() % 1000)));
    writeTree(src, manyFiles(n));
    const r = await sync({ source: src, replica: dst, helperMinFiles: 1 });
    assertEquals(r.exitCode, 0);
    const second = (p: string) => Math.floor(Deno.lstatSync(p).ctime!.getTime() / 1000);
    if (second(`${dst}/d1/sub 1/file-1.txt`) !== second(`${src}/d1/sub 1/file-1.txt`)) {
      assert(attempt < 5, "the copies never fell within their sources' mtime second");
      continue;
    }
    assert(r.copiedByHelper > 0, "the helper copied nothing");
    const again = await sync({ source: src, replica: dst, helperMinFiles: 1 });
    assertEquals(again.ops.length, 0);
    if (Deno.lstatSync(`${dst}/d1/sub 1/file-1.txt`).birthtime) {
      // Every copy, the helper's included, was born after the mtime it was given.
      assertEquals(again.hashed.replica, 0);
    } else {
      assert(again.hashed.replica > 0, "without birth times the copies are hashed again");
    }
    assertMirror(src, dst);
    return;
  }
});

Deno.test("files the helper hands back are copied by the main thread", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  const n = 1200;
  writeTree(src, manyFiles(n));
  ageTree(src);
  const { tree } = scanTree(src);
  // Every file looks changed since it was scanned (mtime off by 1 ms): the helper must
  // hand each one it takes back; the main thread copies it again with a fresh stat.
  const stale: Tree = new Map();
  for (const [p, node] of tree) {
    stale.set(p, node.type === "file" ? { ...node, mtime: node.mtime + 1 } as FileNode : node);
  }
  Deno.mkdirSync(dst);
  const target = new FsTarget(Deno.realPathSync(dst));
  const state: Tree = new Map();
  const r = await applyPlan(plan(stale, state), {
    sourceRoot: Deno.realPathSync(src),
    target,
    src: stale,
    state,
    helperMinFiles: 1,
  });
  assertEquals(r.failures, []);
  assertEquals(r.counts.copy, n);
  assertEquals(r.copiedByHelper, 0);
  assert(r.handedBack > 0, "the helper took no file");
  // (The replica folder's own mode and time are sync()'s, outside the plan.)
  assertEquals(snapshot(dst), snapshot(src));
  assertEquals(temps(dst), []);
  // The replica state records the real mtimes, not the stale ones.
  const one = "d1/sub 1/file-1.txt";
  assertEquals(
    (state.get(one) as FileNode).mtime,
    Deno.lstatSync(`${src}/${one}`).mtime!.getTime(),
  );
});

Deno.test("an unwritable folder fails per file on the helper path too", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  // The folders exist in the replica, so the helper gets their files (and cannot write them).
  writeTree(src, {
    "d0/keep.txt": "k",
    "d7/sub 0/keep.txt": "k",
    "d7/sub 1/keep.txt": "k",
    "d7/sub 2/keep.txt": "k",
  });
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  // 600 new files (more than the default threshold), 30 of them in a folder Deno may not
  // write to.
  writeTree(src, manyFiles(600));
  const r = await mimeo(["sync", src, dst, "--json", "-q"], {
    permissions: ["--allow-read", "--allow-write", `--deny-write=${dst}/d7`],
  });
  assertEquals(r.code, 1, r.stderr);
  const errors = r.stderr.split("\n").filter((l) => l.startsWith("error: copy 'd7/"));
  assertEquals(errors.length, 30, r.stderr);
  assertMatch(r.stderr, /error: copy 'd7\/sub 1\/file-\d+\.txt'/);
  const summary = jsonLines(r.stdout)[0] as { failed: number; done: Record<string, number> };
  assertEquals(summary.failed, 30);
  assertEquals(Deno.readTextFileSync(`${dst}/d8/sub 2/file-8.txt`), "content 8 ".repeat(8));
  assertEquals(temps(dst), []);
  await assertRecovers(src, dst);
});

Deno.test("a run stopped while the helper copies leaves a valid manifest and no temporary files", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, manyFiles(3000));
  ageTree(src);
  await warmHelper(d.path);
  const ac = new AbortController();
  const r = await sync({
    source: src,
    replica: dst,
    helperMinFiles: 1,
    signal: ac.signal,
    progress: (p) => {
      if (p.phase === "apply" && p.opsDone >= 1000) ac.abort(new Error("stop"));
    },
  });
  assert(r.stopped, "the run was not stopped");
  assert(r.done.copy < 3000, `${r.done.copy} copied`);
  assert(r.copiedByHelper > 0, "the helper copied nothing before the stop");
  assertEquals(temps(dst), []);
  await assertRecovers(src, dst);
});

Deno.test("a write whose source changed under it (as a large file's two reads can see) is tried again", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "big.bin": new Uint8Array(17 << 20).fill(3), "a.txt": "a" });
  ageTree(src);
  const { tree } = scanTree(src);
  Deno.mkdirSync(dst);
  // The first write of each file reports its source changed (its two reads disagreed).
  const writes: string[] = [];
  class Flaky extends FsTarget {
    override async writeFile(...args: Parameters<FsTarget["writeFile"]>) {
      const w = await super.writeFile(...args);
      writes.push(args[0]);
      return writes.filter((p) => p === args[0]).length === 1 ? { ...w, changed: true } : w;
    }
  }
  const state: Tree = new Map();
  const r = await applyPlan(plan(tree, state), {
    sourceRoot: Deno.realPathSync(src),
    target: new Flaky(Deno.realPathSync(dst)),
    src: tree,
    state,
  });
  assertEquals(r.failures, []);
  assertEquals(writes.sort(), ["a.txt", "a.txt", "big.bin", "big.bin"]);
  assertEquals(snapshot(dst), snapshot(src)); // (the root's time is sync()'s)
  assertEquals(temps(dst), []);
});

Deno.test("while the helper copies, this thread does the plan's file deletions; emptied folders go after", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, log = `${d.path}/log.jsonl`;
  const old: Spec = {};
  for (let i = 0; i < 80; i++) old[`gone/sub/old-${i}.txt`] = `old ${i}`;
  for (let i = 0; i < 80; i++) old[`kept/old-${i}.txt`] = `old ${i}`;
  writeTree(src, old);
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  Deno.removeSync(`${src}/gone`, { recursive: true });
  for (let i = 0; i < 80; i++) Deno.removeSync(`${src}/kept/old-${i}.txt`);
  writeTree(src, manyFiles(600)); // more new files than the helper's threshold
  const r = await mimeo(["sync", src, dst, "-q", "--log", log]);
  assertEquals(r.code, 0, r.stderr);
  assertMirror(src, dst);
  const events = jsonLines(Deno.readTextFileSync(log)).map((e) => `${e.event} ${e.path}`);
  const at = (prefix: string, last = false) =>
    last
      ? events.findLastIndex((e) => e.startsWith(prefix))
      : events.findIndex((e) => e.startsWith(prefix));
  assertEquals(events.filter((e) => e.startsWith("delete ")).length, 160);
  // Deletions began before the copies were over (they used to wait for the last copy)...
  assert(at("delete ") < at("copy ", true), "deletions ran alongside the copies");
  // ...and every folder is removed after the files in it, the deepest first.
  const rmdirSub = events.indexOf("rmdir gone/sub"), rmdirGone = events.indexOf("rmdir gone");
  assert(at("delete gone/", true) < rmdirSub, "files before their folder");
  assert(rmdirSub >= 0 && rmdirSub < rmdirGone, "deepest folder first");
});
