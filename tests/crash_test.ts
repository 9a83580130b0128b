/**
 * Crash safety: `mimeo sync` killed with SIGKILL at random moments (first sync into an
 * empty replica, and later syncs after big changes, i.e. a replica in a mixed state), then
 * one more sync must repair everything: exit 0, an exact mirror, no temporary files, a
 * manifest that verifies, and an untouched source. Also: SIGTERM and SIGINT stop cleanly.
 *
 * Knobs (Deno.env.get): `MIMEO_SEED` (default 1) picks the tree, the changes and the kill
 * delays; `MIMEO_KILLS` (default 4) kill points per phase (two phases, plus one double kill).
 */
import {
  assert,
  assertEquals,
  assertSame,
  cliText,
  envInt,
  exists,
  finish,
  mimeo,
  Rng,
  type SnapEntry,
  snapshot,
  spawnMimeo,
  tempDir,
  waitFor,
} from "./helpers.ts";
import { CLIENT_PERMS, type Server, startServer } from "./remote_helpers.ts";

const SEED = envInt("MIMEO_SEED", 1);
const KILLS = envInt("MIMEO_KILLS", 4);
const YEAR = 365 * 24 * 3600 * 1000;
const MB = 1 << 20;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const q = (s: string) => JSON.stringify(s);

interface Sandbox {
  base: string;
  src: string;
  dst: string;
  manifest: string;
}

function sandbox(base: string): Sandbox {
  const s = { base, src: `${base}/src`, dst: `${base}/dst`, manifest: `${base}/dst.mimeo.json` };
  Deno.mkdirSync(s.src);
  return s;
}

function pastTime(rng: Rng): Date {
  return new Date(Date.now() - rng.int(5_000, 6 * YEAR));
}

function writeFile(rng: Rng, abs: string, size: number): void {
  Deno.writeFileSync(abs, rng.bytes(size));
  if (rng.chance(0.9)) {
    const t = pastTime(rng);
    Deno.utimeSync(abs, t, t);
  }
}

const TOP = ["alpha", "beta gamma", "ünï-çødé", "d3", "-dash", ".hidden", "e5", "f6", "g7", "h8"];

/**
 * ~3,000 small files in nested folders (300 per top folder), three 20-25 MB files, links,
 * empty folders.
 */
function buildSource(rng: Rng, src: string, o = { tops: TOP.length, bigs: 3 }): void {
  for (const top of TOP.slice(0, o.tops)) {
    for (let j = 0; j < 3; j++) {
      const dir = `${src}/${top}/sub ${j}`;
      Deno.mkdirSync(dir, { recursive: true });
      for (let k = 0; k < 100; k++) {
        writeFile(rng, `${dir}/file-${k}${k % 7 === 0 ? " ü" : ""}.txt`, rng.int(0, 3000));
      }
    }
  }
  Deno.mkdirSync(`${src}/big`);
  for (let i = 0; i < o.bigs; i++) writeFile(rng, `${src}/big/blob-${i}.bin`, rng.int(20, 25) * MB);
  Deno.mkdirSync(`${src}/empty/nested`, { recursive: true });
  Deno.symlinkSync("../alpha/sub 0", `${src}/big/link-to-dir`);
  Deno.symlinkSync("nowhere/at/all", `${src}/dangling`);
  Deno.chmodSync(`${src}/e5`, 0o750);
  Deno.chmodSync(`${src}/f6/sub 1`, 0o555);
  Deno.chmodSync(`${src}/g7/sub 2/file-3.txt`, 0o600);
}

/** Paths under root (symlinks not followed). */
function walk(root: string): { path: string; isDir: boolean; isLink: boolean }[] {
  const out: { path: string; isDir: boolean; isLink: boolean }[] = [];
  const go = (rel: string) => {
    const names = [...Deno.readDirSync(rel ? `${root}/${rel}` : root)]
      .sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of names) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      out.push({ path: p, isDir: e.isDirectory && !e.isSymlink, isLink: e.isSymlink });
      if (e.isDirectory && !e.isSymlink) go(p);
    }
  };
  try {
    go("");
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out;
}

const isTemp = (p: string) => p.split("/").pop()!.startsWith(".mimeo-tmp-");

/** Big changes between syncs: folder moves and swaps, deletions, edits, new files. */
function bigChanges(rng: Rng, src: string, round: number): string[] {
  const log: string[] = [];
  const tops = () =>
    [...Deno.readDirSync(src)].filter((e) => e.isDirectory && !e.isSymlink && e.name !== "big")
      .map((e) => e.name).sort();
  const files = () => walk(src).filter((e) => !e.isDir && !e.isLink).map((e) => e.path);
  const subdirs = () => walk(src).filter((e) => e.isDir && e.path.split("/").length === 2);
  const changes: (() => void)[] = [
    () => { // move a whole top folder somewhere deeper, under a new name
      const t = rng.pick(tops());
      const to = `moved-${round}/deeper/${t}-renamed`;
      Deno.mkdirSync(`${src}/moved-${round}/deeper`, { recursive: true });
      Deno.renameSync(`${src}/${t}`, `${src}/${to}`);
      log.push(`move folder ${q(t)} -> ${q(to)}`);
    },
    () => { // swap two top folders through a temporary name
      const [a, b] = rng.shuffle(tops()).slice(0, 2);
      if (!b) return;
      Deno.renameSync(`${src}/${a}`, `${src}/swap-tmp`);
      Deno.renameSync(`${src}/${b}`, `${src}/${a}`);
      Deno.renameSync(`${src}/swap-tmp`, `${src}/${b}`);
      log.push(`swap folders ${q(a)} <-> ${q(b)}`);
    },
    () => { // delete a 100-file folder
      const d = rng.pick(subdirs()).path;
      Deno.removeSync(`${src}/${d}`, { recursive: true });
      log.push(`delete folder ${q(d)}`);
    },
    () => { // edit many small files: new sizes, and same-size edits with a new mtime
      const all = rng.shuffle(files().filter((p) => !p.startsWith("big/")));
      for (const p of all.slice(0, 150)) writeFile(rng, `${src}/${p}`, rng.int(0, 4000));
      for (const p of all.slice(150, 200)) {
        const abs = `${src}/${p}`;
        const data = Deno.readFileSync(abs);
        if (!data.length) continue;
        data[rng.int(0, data.length - 1)] ^= 0x81;
        const old = Deno.lstatSync(abs).mtime!.getTime();
        Deno.writeFileSync(abs, data);
        let t = pastTime(rng);
        while (t.getTime() === old) t = pastTime(rng);
        Deno.utimeSync(abs, t, t);
      }
      log.push("edit 150 small files, same-size edit 50");
    },
    () => { // a new folder of 300 files
      const d = `${src}/new-${round}/batch`;
      Deno.mkdirSync(d, { recursive: true });
      for (let k = 0; k < 300; k++) writeFile(rng, `${d}/n${k}.dat`, rng.int(0, 3000));
      log.push(`add 300 files under new-${round}/batch`);
    },
    () => { // rewrite a big file (same size, new bytes, new mtime) and rename another
      const bigs = walk(`${src}/big`).filter((e) => !e.isDir && !e.isLink).map((e) => e.path);
      const p = rng.pick(bigs);
      writeFile(rng, `${src}/big/${p}`, Deno.lstatSync(`${src}/big/${p}`).size);
      const other = bigs.find((b) => b !== p);
      if (other) {
        Deno.renameSync(`${src}/big/${other}`, `${src}/big/r${round}-${other}`);
        log.push(`rename big/${other}`);
      }
      log.push(`rewrite big/${p}`);
    },
    () => { // modes and type changes
      const d = rng.pick(subdirs()).path;
      Deno.chmodSync(`${src}/${d}`, rng.pick([0o700, 0o750, 0o555, 0o755]));
      const fs = files();
      const f = rng.pick(fs);
      Deno.chmodSync(`${src}/${f}`, rng.pick([0o600, 0o444, 0o755]));
      const g = rng.pick(fs.filter((x) => x !== f));
      Deno.removeSync(`${src}/${g}`);
      Deno.symlinkSync("../somewhere", `${src}/${g}`);
      const h = rng.pick(subdirs().filter((x) => x.path !== d)).path;
      Deno.removeSync(`${src}/${h}`, { recursive: true });
      Deno.writeFileSync(`${src}/${h}`, rng.bytes(1234));
      log.push(`chmod ${q(d)} and ${q(f)}; ${q(g)} -> symlink; folder ${q(h)} -> file`);
    },
  ];
  for (const i of rng.shuffle([...changes.keys()]).slice(0, rng.int(4, 6))) changes[i]();
  return log;
}

/** What {@linkcode killedSync} saw. */
interface KillOutcome {
  line: string;
  killed: boolean;
  /** Entries in the replica afterwards. */
  entries: number;
  ms: number;
}

/**
 * Start a sync and SIGKILL it after `delayMs` (unless it ended before). With `remote`,
 * the sync goes to that server's `dst`, and `remote.killServer` kills the server instead.
 */
async function killedSync(
  s: Sandbox,
  delayMs: number,
  remote?: { server: Server; killServer: boolean },
): Promise<KillOutcome> {
  const t0 = performance.now();
  const child = remote
    ? spawnMimeo(["sync", s.src, `${remote.server.url}/dst`, "--quiet"], {
      permissions: CLIENT_PERMS,
    })
    : spawnMimeo(["sync", s.src, s.dst, "--quiet"]);
  const ended = await Promise.race([
    child.status.then(() => true),
    sleep(delayMs).then(() => false),
  ]);
  if (!ended && remote?.killServer) await remote.server.kill();
  else if (!ended) {
    try {
      child.kill("SIGKILL");
    } catch { /* it ended just now */ }
  }
  const r = await finish(child);
  const ms = Math.round(performance.now() - t0);
  const ents = walk(s.dst);
  const temps = ents.filter((e) => isTemp(e.path)).length;
  const manTemps = [...Deno.readDirSync(s.base)].filter((e) =>
    e.name.startsWith("dst.mimeo.json.")
  );
  const outcome = r.code === 137 ? "KILLED" : `exited ${r.code}`;
  const line =
    `kill${remote?.killServer ? " of the server" : ""} at ${
      Math.round(delayMs)
    } ms: ${outcome} after ${ms} ms; ` +
    `replica ${ents.length} entries, ${temps} temp files; ` +
    `manifest ${exists(s.manifest) ? "present" : "absent"}` +
    (manTemps.length ? `; LEFT BESIDE: ${manTemps.map((e) => e.name).join(", ")}` : "");
  const killed = remote?.killServer ? !ended : r.code === 137;
  return { line, killed, entries: ents.length, ms };
}

/** One complete sync after a crash, with every check. */
async function recover(
  s: Sandbox,
  srcBefore: Record<string, SnapEntry>,
  ctx: string,
  url?: string,
): Promise<string> {
  const t0 = performance.now();
  const cli = url ? { permissions: CLIENT_PERMS } : {};
  let r = await mimeo(["sync", s.src, url ?? s.dst, "--quiet"], cli);
  // (A killed client's session is let go as soon as the server sees its connection close.)
  for (let i = 0; url && r.code === 75 && i < 50; i++) {
    await sleep(100);
    r = await mimeo(["sync", s.src, url, "--quiet"], cli);
  }
  const ms = Math.round(performance.now() - t0);
  assert(r.code === 0, `${ctx}\nrecovery sync failed: ${cliText(r)}`);
  const srcNow = snapshot(s.src, { root: true });
  assertSame(srcNow, srcBefore, `${ctx}\nthe SOURCE was modified`);
  const rep = snapshot(s.dst, { root: true });
  assertSame(rep, srcNow, `${ctx}\nreplica differs from source after the recovery sync`);
  assertEquals(Object.keys(rep).filter(isTemp), [], `${ctx}\ntemporary files left`);
  const v = await mimeo(["verify", url ?? s.dst], cli);
  assert(v.code === 0, `${ctx}\nverify failed after the recovery sync: ${cliText(v)}`);
  return `recovery sync ${ms} ms: ok`;
}

Deno.test(`crash: SIGKILL during first and later syncs (MIMEO_SEED=${SEED}, MIMEO_KILLS=${KILLS})`, async () => {
  await using tmp = await tempDir("mimeo-crash-");
  const s = sandbox(tmp.path);
  const rng = new Rng(SEED);
  buildSource(rng, s.src);
  let srcSnap = snapshot(s.src, { root: true });
  const report: string[] = [];
  const ctx = (what: string) => `[crash MIMEO_SEED=${SEED}] ${what}\n${report.join("\n")}`;

  // How long does a full first sync take? (into a throwaway replica)
  const t0 = performance.now();
  const probe = await mimeo(["sync", s.src, `${s.base}/probe`, "--quiet"]);
  const full = performance.now() - t0;
  assert(probe.code === 0, `probe sync failed: ${cliText(probe)}`);
  Deno.removeSync(`${s.base}/probe`, { recursive: true });
  Deno.removeSync(`${s.base}/probe.mimeo.json`);
  report.push(`full first sync: ${Math.round(full)} ms`);

  // Phase 1: kills during the first sync into an empty replica, sweeping 50 ms .. past the end.
  let landed = 0;
  for (let k = 0; k < KILLS; k++) {
    const delay = 50 + (full * 1.15 - 50) * (k + rng.next()) / KILLS;
    for (const p of [s.dst, s.manifest]) {
      if (exists(p)) Deno.removeSync(p, { recursive: true });
    }
    const k1 = await killedSync(s, delay);
    report.push(`first sync, ${k1.line}`);
    if (k1.killed && k1.entries > 0) landed++;
    report.push(
      `  ${await recover(s, srcSnap, ctx(`first sync killed at ${Math.round(delay)} ms`))}`,
    );
  }
  assert(landed > 0, ctx("no SIGKILL landed while the replica was being written"));

  // Phase 2: big changes, then kills during the next sync (the replica ends up mixed);
  // once, the sync after the kill is killed too. The sweep follows the length of these
  // later syncs, learnt from any that ended before its kill.
  let later = full * 0.6;
  for (let k = 0; k < KILLS; k++) {
    const changes = bigChanges(rng, s.src, k);
    srcSnap = snapshot(s.src, { root: true });
    report.push(`round ${k} changes: ${changes.join("; ")}`);
    const delay = 50 + (later * 1.1 - 50) * (k + rng.next()) / KILLS;
    const k2 = await killedSync(s, delay);
    report.push(`later sync, ${k2.line}`);
    if (!k2.killed) later = k2.ms;
    if (k === Math.floor(KILLS / 2)) {
      const again = 50 + rng.next() * later;
      report.push(`  then the next sync: ${(await killedSync(s, again)).line}`);
    }
    report.push(`  ${await recover(s, srcSnap, ctx(`later sync killed (round ${k})`))}`);
  }
  console.log(report.join("\n"));
});

Deno.test("crash: SIGTERM and SIGINT stop cleanly (exit 143 / 130)", async () => {
  await using tmp = await tempDir("mimeo-crash-");
  const s = sandbox(tmp.path);
  buildSource(new Rng(SEED + 1), s.src, { tops: TOP.length, bigs: 1 });
  const srcSnap = snapshot(s.src, { root: true });
  for (const [sig, code] of [["SIGTERM", 143], ["SIGINT", 130]] as const) {
    for (const p of [s.dst, s.manifest]) {
      if (exists(p)) Deno.removeSync(p, { recursive: true });
    }
    const child = spawnMimeo(["sync", s.src, s.dst, "--quiet"]);
    // Signal once the run is writing the replica (its handlers are installed by then).
    let ended = false;
    child.status.then(() => ended = true);
    await waitFor(() => ended || walk(s.dst).some((e) => !e.isDir), 30_000, "first copies");
    assert(!ended, `${sig}: the sync ended before it could be signalled`);
    child.kill(sig);
    const status = await child.status;
    const r = await finish(child);
    const ctx = `[${sig}] ${cliText(r)}`;
    assertEquals(status.signal, null, `${ctx}\nthe process died of the signal instead of exiting`);
    assertEquals(status.code, code, `${ctx}\nexit code`);
    const entries = walk(s.dst);
    const files = entries.filter((e) => !e.isDir && !e.isLink).length;
    let text = "";
    try {
      text = Deno.readTextFileSync(s.manifest);
    } catch (e) {
      throw new Error(`${ctx}\nno manifest after a clean stop: ${e}`);
    }
    const m = JSON.parse(text) as { entries?: Record<string, unknown> };
    assert(m.entries && typeof m.entries === "object", `${ctx}\nmanifest without entries`);
    assertEquals(
      entries.filter((e) => isTemp(e.path)).map((e) => e.path),
      [],
      `${ctx}\ntemporary files left after a clean stop`,
    );
    // After a clean stop the manifest describes the partial replica as it is.
    const v = await mimeo(["verify", s.dst]);
    assert(v.code === 0, `${ctx}\nverify of the stopped replica failed: ${cliText(v)}`);
    const rec = await recover(s, srcSnap, `[${sig}] after the clean stop`);
    console.log(
      `${sig}: exit ${code} with ${entries.length} replica entries (${files} files); ${rec}`,
    );
  }
});

Deno.test(`crash: SIGKILL of the client, and of the server, during syncs into a remote replica (MIMEO_SEED=${SEED}, MIMEO_KILLS=${KILLS})`, async () => {
  await using tmp = await tempDir("mimeo-crash-remote-");
  const s = sandbox(tmp.path);
  const rng = new Rng(SEED + 500);
  buildSource(rng, s.src);
  let srcSnap = snapshot(s.src, { root: true });
  const report: string[] = [];
  const ctx = (what: string) => `[remote crash MIMEO_SEED=${SEED}] ${what}\n${report.join("\n")}`;
  // The server serves the sandbox's folder: the replica is its `dst`, as locally.
  let server = await startServer(s.base);
  try {
    const t0 = performance.now();
    const url = () => `${server.url}/dst`;
    const first = await mimeo(["sync", s.src, url(), "--quiet"], { permissions: CLIENT_PERMS });
    assert(first.code === 0, cliText(first));
    const full = performance.now() - t0;
    report.push(`full first sync: ${Math.round(full)} ms`);
    let landed = 0;
    // The sweep follows the length of these later syncs, learnt from any that ended first.
    let later = full * 0.4;
    for (let k = 0; k < KILLS * 2; k++) {
      const killServer = k % 2 === 1;
      const changes = bigChanges(rng, s.src, k);
      srcSnap = snapshot(s.src, { root: true });
      report.push(`round ${k} changes: ${changes.join("; ")}`);
      const delay = 80 + (later - 80) * (Math.floor(k / 2) + rng.next()) / KILLS;
      const o = await killedSync(s, delay, { server, killServer });
      report.push(o.line);
      if (o.killed) landed++;
      else later = Math.max(200, o.ms * 0.9);
      if (killServer) server = await startServer(s.base);
      report.push(`  ${await recover(s, srcSnap, ctx(`round ${k}`), url())}`);
      const left = [...Deno.readDirSync(`${s.base}/.mimeo/dst/stage`)]
        .filter((e) => !e.name.endsWith(".part"));
      assertEquals(left.map((e) => e.name), [], ctx("staged contents left after a good run"));
    }
    assert(landed > 0, ctx("no kill landed during a sync"));
    console.log(report.join("\n"));
  } finally {
    await server.kill();
  }
});
