/** `sync --watch` run as a subprocess: every kind of change, bursts, missed events, stops. */
import {
  assert,
  assertEquals,
  assertMatch,
  finish,
  jsonLines,
  snapshot,
  spawnMimeo,
  tempDir,
  waitFor,
  writeTree,
} from "./helpers.ts";
import { CLIENT_PERMS, startServer } from "./remote_helpers.ts";

const TIMEOUT = 15_000;

function mirrored(src: string, dst: string): boolean {
  try {
    // (Folder times too, the replica folder's own included.)
    return JSON.stringify(snapshot(dst, { root: true })) ===
      JSON.stringify(snapshot(src, { root: true }));
  } catch {
    return false; // the replica is mid-change
  }
}

async function untilMirrored(src: string, dst: string, what: string): Promise<void> {
  await waitFor(() => mirrored(src, dst), TIMEOUT, what);
}

async function stop(child: Deno.ChildProcess, signal: Deno.Signal = "SIGTERM") {
  child.kill(signal);
  return await finish(child);
}

Deno.test("--watch mirrors every kind of change as it happens", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, outside = `${d.path}/outside`;
  writeTree(src, { "a.txt": "a", "dir/b.txt": "b", "old-dir/c.txt": "c", "gone/d": "d" });
  writeTree(outside, { "incoming/x/y.txt": "moved in", "incoming/empty/": null });
  const child = spawnMimeo(["sync", src, dst, "--watch", "--debounce", "100ms", "-q"]);
  try {
    await untilMirrored(src, dst, "initial sync");
    const steps: [string, () => void][] = [
      ["create a file", () => Deno.writeTextFileSync(`${src}/new.txt`, "new")],
      ["modify a file", () => Deno.writeTextFileSync(`${src}/a.txt`, "a, longer now")],
      ["same-size edit", () => Deno.writeTextFileSync(`${src}/a.txt`, "A, LONGER NOW")],
      ["delete a file", () => Deno.removeSync(`${src}/dir/b.txt`)],
      ["rename a file", () => Deno.renameSync(`${src}/new.txt`, `${src}/dir/renamed.txt`)],
      ["rename a folder", () => Deno.renameSync(`${src}/old-dir`, `${src}/new-dir`)],
      [
        "move a folder in from outside",
        () => Deno.renameSync(`${outside}/incoming`, `${src}/incoming`),
      ],
      ["delete a folder", () => Deno.removeSync(`${src}/gone`, { recursive: true })],
      ["create an empty folder", () => Deno.mkdirSync(`${src}/empty/nested`, { recursive: true })],
      ["chmod a file", () => Deno.chmodSync(`${src}/a.txt`, 0o755)],
      ["create a symlink", () => Deno.symlinkSync("a.txt", `${src}/link`)],
      ["replace a folder by a file", () => {
        Deno.removeSync(`${src}/empty`, { recursive: true });
        Deno.writeTextFileSync(`${src}/empty`, "now a file");
      }],
    ];
    for (const [what, change] of steps) {
      change();
      await untilMirrored(src, dst, what);
    }
  } finally {
    const r = await stop(child);
    assertEquals(r.code, 143, r.stderr);
  }
});

Deno.test("--watch into a remote replica mirrors each change on the server", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  writeTree(src, { "a.txt": "a", "dir/b.txt": "b" });
  await using server = await startServer(srv);
  const dst = `${srv}/r`;
  const child = spawnMimeo(
    ["sync", src, `${server.url}/r`, "--watch", "--debounce", "100ms", "-q"],
    { permissions: CLIENT_PERMS },
  );
  try {
    await untilMirrored(src, dst, "initial sync");
    const steps: [string, () => void][] = [
      ["create a file", () => Deno.writeTextFileSync(`${src}/new.txt`, "new")],
      ["modify a file", () => Deno.writeTextFileSync(`${src}/a.txt`, "a, longer now")],
      ["rename a folder", () => Deno.renameSync(`${src}/dir`, `${src}/dir2`)],
      ["delete a file", () => Deno.removeSync(`${src}/new.txt`)],
    ];
    for (const [what, change] of steps) {
      change();
      await untilMirrored(src, dst, what);
    }
  } finally {
    const r = await stop(child);
    assertEquals(r.code, 143, r.stderr);
  }
});

Deno.test("--watch turns a burst of thousands of changes into a few runs", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, log = `${d.path}/log.jsonl`;
  writeTree(src, { "seed.txt": "s" });
  const child = spawnMimeo([
    "sync",
    src,
    dst,
    "--watch",
    "--debounce",
    "200ms",
    "--log",
    log,
    "-q",
  ]);
  let summaries = 0;
  try {
    await untilMirrored(src, dst, "initial sync");
    for (let i = 0; i < 3000; i++) {
      const dir = `${src}/burst/${i % 30}`;
      if (i < 30) Deno.mkdirSync(dir, { recursive: true });
      Deno.writeTextFileSync(`${dir}/f${i}.txt`, `file ${i}`);
    }
    await untilMirrored(src, dst, "burst mirrored");
  } finally {
    const r = await stop(child);
    assertEquals(r.code, 143, r.stderr);
    summaries = jsonLines(Deno.readTextFileSync(log)).filter((e) => e.event === "summary").length;
  }
  assert(summaries >= 2 && summaries <= 12, `3000 changes took ${summaries} runs`);
});

Deno.test("--watch repairs a missed event at the safety rescan interval", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, log = `${d.path}/log.jsonl`;
  writeTree(src, { "watched/file.txt": "original content" });
  writeTree(d.path, { "elsewhere/": null });
  // A hard link outside the tree: writes through it raise inotify events on the *other*
  // folder, so the watcher never hears of them, exactly like a dropped event.
  Deno.linkSync(`${src}/watched/file.txt`, `${d.path}/elsewhere/alias.txt`);
  const child = spawnMimeo([
    "sync",
    src,
    dst,
    "--watch",
    "--interval",
    "1500ms",
    "--debounce",
    "100ms",
    "--log",
    log,
    "-q",
  ]);
  try {
    await untilMirrored(src, dst, "initial sync");
    await new Promise((r) => setTimeout(r, 300));
    const f = Deno.openSync(`${d.path}/elsewhere/alias.txt`, { write: true, truncate: true });
    f.writeSync(new TextEncoder().encode("changed behind the watcher's back"));
    f.close();
    await untilMirrored(src, dst, "repair by the safety rescan");
  } finally {
    const r = await stop(child);
    assertEquals(r.code, 143, r.stderr);
  }
  const events = jsonLines(Deno.readTextFileSync(log));
  const fixedBy = events.findLast((e) => e.event === "update" && e.path === "watched/file.txt");
  assert(fixedBy, "the file was updated");
  const batch = events.findLast((e) =>
    e.event === "batch" && (e.run as number) === (fixedBy.run as number)
  );
  assertEquals(batch?.full, true, "the repair came from a full rescan, not an event");
});

Deno.test("--watch stops cleanly on SIGINT and SIGTERM with a valid manifest", async () => {
  for (const [sig, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
    await using d = await tempDir();
    const src = `${d.path}/src`, dst = `${d.path}/dst`, log = `${d.path}/log.jsonl`;
    writeTree(src, { "a.txt": "a" });
    const child = spawnMimeo(["sync", src, dst, "--watch", "--log", log, "-q"]);
    await untilMirrored(src, dst, "initial sync");
    const r = await stop(child, sig);
    assertEquals(r.code, code, r.stderr);
    JSON.parse(Deno.readTextFileSync(`${dst}.mimeo.json`));
    const events = jsonLines(Deno.readTextFileSync(log));
    assert(events.some((e) => e.event === "stop" && e.signal === sig));
    assert(events.some((e) => e.event === "stopped"));
  }
});

Deno.test("--watch mirrors a file still being written with its final content", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "seed": "s" });
  const child = spawnMimeo(["sync", src, dst, "--watch", "--debounce", "50ms", "-q"]);
  try {
    await untilMirrored(src, dst, "initial sync");
    const f = Deno.openSync(`${src}/growing.log`, { write: true, create: true, append: true });
    for (let i = 0; i < 20; i++) {
      f.writeSync(new TextEncoder().encode(`line ${i} ${"x".repeat(5000)}\n`));
      await new Promise((r) => setTimeout(r, 60));
    }
    f.close();
    await untilMirrored(src, dst, "final content");
    assertEquals(
      Deno.readTextFileSync(`${dst}/growing.log`),
      Deno.readTextFileSync(`${src}/growing.log`),
    );
  } finally {
    const r = await stop(child);
    assertEquals(r.code, 143, r.stderr);
  }
});

Deno.test("--watch with --count stops by itself after that many runs", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a": "a" });
  const child = spawnMimeo([
    "sync",
    src,
    dst,
    "--watch",
    "--count",
    "2",
    "--debounce",
    "50ms",
    "--json",
    "-q",
  ]);
  await untilMirrored(src, dst, "initial sync");
  Deno.writeTextFileSync(`${src}/b`, "b");
  const r = await finish(child);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(jsonLines(r.stdout).map((x) => x.run), [1, 2]);
  assert(mirrored(src, dst));
});

Deno.test("--watch repairs a real inotify overflow by its safety rescan", async () => {
  // A tiny inotify queue (root only, restored after) makes a burst overflow it for real.
  // Deno 2.9 drops the overflowing events without a `rescan` flag, so the files it never
  // reported must come from the safety rescan.
  // Deno grants /proc/sys only with --allow-all, so the knob is read and set through sh.
  const knob = "/proc/sys/fs/inotify/max_queued_events";
  const sh = async (script: string) => {
    const r = await new Deno.Command("sh", { args: ["-c", script], stdout: "piped" }).output();
    assert(r.success, `sh -c ${script} failed (this test needs root)`);
    return new TextDecoder().decode(r.stdout).trim();
  };
  const original = await sh(`cat ${knob}`);
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, log = `${d.path}/log.jsonl`;
  writeTree(src, { "seed.txt": "s" });
  await sh(`echo 16 > ${knob}`);
  let child: Deno.ChildProcess | undefined;
  try {
    child = spawnMimeo([
      "sync",
      src,
      dst,
      "--watch",
      "--interval",
      "3s",
      "--debounce",
      "300ms",
      "--log",
      log,
      "-q",
    ]);
    await untilMirrored(src, dst, "initial sync");
    await sh(`echo ${original} > ${knob}`); // a watcher's queue size is fixed when it starts
    // 2,000 files: with 400, the watcher once kept up with the whole burst (no overflow,
    // so nothing for the rescan to prove).
    for (let i = 0; i < 2000; i++) Deno.writeTextFileSync(`${src}/f${i}.txt`, `${i}`);
    await untilMirrored(src, dst, "burst mirrored after the overflow");
  } finally {
    await sh(`echo ${original} > ${knob}`);
    if (child) assertEquals((await stop(child)).code, 143);
  }
  const batches = jsonLines(Deno.readTextFileSync(log)).filter((e) => e.event === "batch");
  assert(
    batches.some((b) =>
      b.full === true && (b.reason === "safety interval" || b.reason === "overflow")
    ),
    JSON.stringify(batches),
  );
});

Deno.test("--watch started while another run has the replica waits for its turn, then mirrors", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a.txt": "a", "dir/b.txt": "b" });
  Deno.mkdirSync(dst);
  // This test process holds the lock a running sync holds.
  let held: Deno.FsFile | undefined = Deno.openSync(dst, { read: true });
  assert(held.tryLockSync(true));
  const child = spawnMimeo(["sync", src, dst, "--watch", "--debounce", "50ms"]);
  let stderr = "";
  try {
    await new Promise((r) => setTimeout(r, 2500));
    assertEquals(snapshot(dst), {}, "nothing written while the other run has the replica");
    held.close();
    held = undefined;
    await untilMirrored(src, dst, "the sync after the other run ended");
  } finally {
    held?.close();
    const r = await stop(child);
    stderr = r.stderr;
    assertEquals(r.code, 143, r.stderr);
  }
  assertMatch(stderr, /run 1 failed: another mimeo run is using replica .*; trying again/);
});
