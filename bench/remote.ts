/**
 * Remote benchmark: `mimeo sync SRC http://127.0.0.1:P/r` against `rsync -a --delete SRC/
 * rsync://127.0.0.1:Q/r/` (an rsync daemon on loopback), the same trees and changes, in one
 * run, tools alternating. For each scenario: wall time and the bytes that crossed the
 * loopback in each direction, counted by a TCP proxy in front of each server (so both
 * tools' protocol overhead counts, not only content). Also the `--watch` latency: how long
 * until a small change made in the source is on the server.
 *
 * ```sh
 * deno run -A bench/remote.ts                 # 20k-file tree, 1 GiB file, 3 reps
 * deno run -A bench/remote.ts --scale 0.1 --big-mib 64 --reps 1   # smoke run
 * ```
 *
 * Needs rsync (Debian's package). Every replica is checked against its source after each
 * scenario (content digest, `mimeo manifest --digest`).
 *
 * @module
 */
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import {
  generateTree,
  mainTreeSpec,
  mutate,
  removeIfExists,
  renameLargestTop,
  writeBigFile,
} from "./gen.ts";
import { MIMEO_FLAGS, MIMEO_MAIN, REPO_DIR } from "./common.ts";

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    scale: { type: "string", default: "1" },
    reps: { type: "string", default: "3" },
    dir: { type: "string", default: join(REPO_DIR, "bench/.work/remote") },
    "big-mib": { type: "string", default: "1024" },
    "watch-changes": { type: "string", default: "15" },
    out: { type: "string" },
  },
});
const SCALE = Number(opt.scale);
const REPS = Number(opt.reps);
const BIG = Number(opt["big-mib"]) * 1024 * 1024;
const DIR = resolve(opt.dir!);
const SRC = join(DIR, "src");
const SRV = join(DIR, "mimeo-served");
const RSYNC_DST = join(DIR, "rsync-module");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A TCP proxy on a free loopback port that counts bytes each way. */
function countingProxy(targetPort: number) {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const c = { up: 0, down: 0 };
  (async () => {
    for await (const conn of l) {
      (async () => {
        let up: Deno.TcpConn;
        try {
          up = await Deno.connect({ hostname: "127.0.0.1", port: targetPort });
        } catch {
          conn.close();
          return;
        }
        const pipe = async (from: Deno.Conn, to: Deno.Conn, dir: "up" | "down") => {
          const buf = new Uint8Array(256 * 1024);
          try {
            for (;;) {
              const n = await from.read(buf);
              if (n === null) break;
              c[dir] += n;
              let off = 0;
              while (off < n) off += await to.write(buf.subarray(off, n));
            }
          } catch { /* closed */ }
          try {
            to.closeWrite();
          } catch { /* closed */ }
        };
        await Promise.all([pipe(conn, up, "up"), pipe(up, conn, "down")]);
        try {
          conn.close();
        } catch { /* closed */ }
        try {
          up.close();
        } catch { /* closed */ }
      })();
    }
  })();
  const port = (l.addr as Deno.NetAddr).port;
  return { port, counts: c, reset: () => (c.up = c.down = 0), close: () => l.close() };
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  return p;
}

async function run(cmd: string, args: string[], env: Record<string, string> = {}) {
  const t0 = performance.now();
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped", env }).output();
  const ms = performance.now() - t0;
  if (r.code !== 0) {
    throw new Error(
      `${cmd} ${args.join(" ")} exited ${r.code}: ${
        new TextDecoder().decode(r.stderr).slice(0, 2000)
      }`,
    );
  }
  return { ms, stdout: new TextDecoder().decode(r.stdout) };
}

async function digest(dir: string): Promise<string> {
  const r = await run(Deno.execPath(), ["run", "-A", MIMEO_MAIN, "manifest", dir, "--digest"]);
  return r.stdout.trim();
}

// ---------------------------------------------------------------------------------------
await Deno.remove(DIR, { recursive: true }).catch(() => {});
Deno.mkdirSync(SRV, { recursive: true });
Deno.mkdirSync(RSYNC_DST, { recursive: true });
console.error(`generating the tree (scale ${SCALE}) in ${SRC}`);
const stats = generateTree(SRC, mainTreeSpec(SCALE, 1));
console.error(`  ${stats.files} files, ${(stats.bytes / 1e6).toFixed(1)} MB`);

// mimeo serve, with the permissions of `deno task serve`.
const serveTask: string =
  JSON.parse(Deno.readTextFileSync(join(REPO_DIR, "deno.json"))).tasks.serve;
const serveFlags = serveTask.split(/\s+/).slice(2, serveTask.split(/\s+/).indexOf("main.ts"));
const mimeoPort = freePort();
const server = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    ...serveFlags,
    MIMEO_MAIN,
    "serve",
    SRV,
    "--listen",
    `127.0.0.1:${mimeoPort}`,
    "-q",
  ],
  stdout: "null",
  stderr: "inherit",
}).spawn();
// rsync --daemon on loopback.
const rsyncPort = freePort();
const conf = join(DIR, "rsyncd.conf");
Deno.writeTextFileSync(
  conf,
  `pid file = ${DIR}/rsyncd.pid\nuse chroot = false\n[r]\npath = ${RSYNC_DST}\nread only = false\nmunge symlinks = false\nuid = root\ngid = root\n`,
);
const daemon = new Deno.Command("rsync", {
  args: [
    "--daemon",
    "--no-detach",
    `--config=${conf}`,
    `--port=${rsyncPort}`,
    "--address=127.0.0.1",
  ],
  stdout: "null",
  stderr: "inherit",
}).spawn();
await sleep(1500);
const mProxy = countingProxy(mimeoPort);
const rProxy = countingProxy(rsyncPort);
const mimeoUrl = `http://127.0.0.1:${mProxy.port}/r`;
const rsyncUrl = `rsync://127.0.0.1:${rProxy.port}/r/`;
const clientFlags = MIMEO_FLAGS;

interface Row {
  scenario: string;
  mimeo: { ms: number[]; up: number[]; down: number[] };
  rsync: { ms: number[]; up: number[]; down: number[] };
}
const rows: Row[] = [];

async function timeBoth(row: Row, rep: number): Promise<void> {
  const order = rep % 2 === 0 ? ["mimeo", "rsync"] : ["rsync", "mimeo"];
  for (const tool of order) {
    await run("sync", []);
    if (tool === "mimeo") {
      mProxy.reset();
      const r = await run(Deno.execPath(), [
        "run",
        ...clientFlags,
        MIMEO_MAIN,
        "sync",
        SRC,
        mimeoUrl,
        "-q",
      ]);
      row.mimeo.ms.push(r.ms);
      row.mimeo.up.push(mProxy.counts.up);
      row.mimeo.down.push(mProxy.counts.down);
    } else {
      rProxy.reset();
      const r = await run("rsync", ["-a", "--delete", `${SRC}/`, rsyncUrl]);
      row.rsync.ms.push(r.ms);
      row.rsync.up.push(rProxy.counts.up);
      row.rsync.down.push(rProxy.counts.down);
    }
  }
}

async function check(what: string): Promise<void> {
  const [s, m, r] = await Promise.all([digest(SRC), digest(join(SRV, "r")), digest(RSYNC_DST)]);
  if (s !== m || s !== r) {
    throw new Error(`${what}: replicas differ (src ${s}, mimeo ${m}, rsync ${r})`);
  }
}

async function scenario(
  name: string,
  before: (rep: number) => void | Promise<void>,
): Promise<void> {
  const row: Row = {
    scenario: name,
    mimeo: { ms: [], up: [], down: [] },
    rsync: { ms: [], up: [], down: [] },
  };
  for (let rep = 0; rep < REPS; rep++) {
    await before(rep);
    await timeBoth(row, rep);
  }
  await check(name);
  rows.push(row);
  console.error(`  ${name}: done`);
}

try {
  await scenario("1 first sync", (rep) => {
    if (rep === 0) return;
    for (
      const p of [
        join(SRV, "r"),
        join(SRV, "r.mimeo.json"),
        join(SRV, "r.mimeo.idx"),
        join(SRV, ".mimeo"),
      ]
    ) removeIfExists(p);
    removeIfExists(RSYNC_DST);
    Deno.mkdirSync(RSYNC_DST);
  });
  await scenario("2 no-op", () => {});
  await scenario("3 1% changed", (rep) => {
    mutate(SRC, 1, rep);
  });
  await scenario("4 largest folder renamed", (rep) => {
    renameLargestTop(SRC, rep);
  });
  // A large file: synced once (untimed), then 1 MiB changed in its middle each rep.
  const big = join(SRC, "huge.bin");
  writeBigFile(big, BIG, 7);
  await timeBoth({
    scenario: "",
    mimeo: { ms: [], up: [], down: [] },
    rsync: { ms: [], up: [], down: [] },
  }, 0);
  await scenario(`5 ${opt["big-mib"]} MiB file, 1 MiB changed in the middle`, (rep) => {
    const f = Deno.openSync(big, { write: true });
    const b = new Uint8Array(1024 * 1024);
    for (let i = 0; i < b.length; i += 65536) crypto.getRandomValues(b.subarray(i, i + 65536));
    f.seekSync(Math.floor(BIG / 2) + rep * 4096, Deno.SeekMode.Start);
    f.writeSync(b);
    f.close();
  });
  await scenario(`6 the ${opt["big-mib"]} MiB file duplicated`, (rep) => {
    Deno.copyFileSync(big, join(SRC, `huge-copy-${rep}.bin`));
  });

  // --watch latency: a small new file, until it is on the server.
  const watcher = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...clientFlags,
      MIMEO_MAIN,
      "sync",
      SRC,
      mimeoUrl,
      "--watch",
      "--debounce",
      "50ms",
      "-q",
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const lat: number[] = [];
  try {
    await sleep(8000);
    for (let i = 0; i < Number(opt["watch-changes"]); i++) {
      const name = `watch-${i}.txt`;
      const t0 = performance.now();
      Deno.writeTextFileSync(join(SRC, name), `change ${i} ${Date.now()}`);
      const dst = join(SRV, "r", name);
      for (let k = 0; k < 2000; k++) {
        try {
          Deno.lstatSync(dst);
          break;
        } catch { /* not yet */ }
        await sleep(5);
      }
      lat.push(performance.now() - t0);
      await sleep(300);
    }
  } finally {
    watcher.kill("SIGTERM");
    await watcher.status;
  }

  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const mb = (n: number) => n >= 1e6 ? `${(n / 1e6).toFixed(2)} MB` : `${(n / 1e3).toFixed(1)} kB`;
  const lines = [
    `Remote benchmark, ${new Date().toISOString()}: ${stats.files} files, ${
      (stats.bytes / 1e6).toFixed(1)
    } MB (scale ${SCALE}), ${REPS} reps (medians), loopback, ${DIR}`,
    "",
    "| scenario | mimeo s | rsync s | time ratio | mimeo sent / received | rsync sent / received | sent ratio |",
    "|---|---|---|---|---|---|---|",
  ];
  for (const r of rows) {
    const mt = med(r.mimeo.ms) / 1000, rt = med(r.rsync.ms) / 1000;
    const mu = med(r.mimeo.up), ru = med(r.rsync.up);
    lines.push(
      `| ${r.scenario} | ${mt.toFixed(3)} | ${rt.toFixed(3)} | ${(mt / rt).toFixed(2)}× | ${
        mb(mu)
      } / ${mb(med(r.mimeo.down))} | ${mb(ru)} / ${mb(med(r.rsync.down))} | ${
        (mu / ru * 100).toFixed(1)
      }% |`,
    );
  }
  lines.push(
    "",
    `--watch: a small new file on the server after ${
      med(lat).toFixed(0)
    } ms (median of ${lat.length}; min ${Math.min(...lat).toFixed(0)}, max ${
      Math.max(...lat).toFixed(0)
    })`,
  );
  const text = lines.join("\n") + "\n";
  console.log(text);
  if (opt.out) Deno.writeTextFileSync(opt.out, text);
} finally {
  mProxy.close();
  rProxy.close();
  try {
    server.kill("SIGTERM");
  } catch { /* gone */ }
  try {
    daemon.kill("SIGTERM");
  } catch { /* gone */ }
  await server.status;
  await daemon.status;
}
