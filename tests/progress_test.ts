/** The progress line: pure formatting, and the CLI on a pseudo-terminal (via `script`). */
import { formatEta, progressText } from "../lib/progress.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  assertNotMatch,
  MAIN,
  mimeo,
  tempDir,
  writeTree,
} from "./helpers.ts";

Deno.test("progressText() shows ops, bytes, rate and an ETA that counts per-file work", () => {
  const t = progressText(
    { phase: "apply", opsDone: 300, opsTotal: 1500, bytesDone: 1500, bytesTotal: 300 << 20 },
    1000,
  );
  assertMatch(t, /^300\/1500 ops {2}1\.5 KiB\/300 MiB {2}1\.5 KiB\/s {2}ETA \d+s$/);
  assertEquals(
    progressText({ phase: "scan", opsDone: 0, opsTotal: 0, bytesDone: 0, bytesTotal: 0 }, 0),
    "scanning…",
  );
  assertEquals(formatEta(3725), "1h02m");
  assertEquals(formatEta(65), "1m05s");
  assertEquals(formatEta(Infinity), "?");
});

async function inTerminal(args: string[]): Promise<string> {
  const cmd = [Deno.execPath(), "run", "--quiet", "--allow-read", "--allow-write", MAIN, ...args]
    .map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ");
  const r = await new Deno.Command("script", {
    args: ["-qfec", cmd, "/dev/null"],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(r.success, new TextDecoder().decode(r.stderr));
  return new TextDecoder().decode(r.stdout);
}

function bigTree(root: string) {
  const spec: Record<string, string | Uint8Array> = {};
  for (let i = 0; i < 1500; i++) spec[`small/${i % 20}/f${i}`] = `${i}`;
  spec["large.bin"] = new Uint8Array(120 << 20).fill(7);
  writeTree(root, spec);
}

Deno.test("a long sync on a terminal shows progress on stderr; --quiet and pipes do not", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`;
  bigTree(src);
  const tty = await inTerminal(["sync", src, `${d.path}/a`]);
  assertMatch(tty, /\r\d+\/\d+ ops {2}[\d.]+ \w+\/[\d.]+ \w+ {2}[\d.]+ \w+\/s {2}ETA /);
  assertMatch(tty, /synced: /);
  const quiet = await inTerminal(["sync", src, `${d.path}/b`, "--quiet"]);
  assertNotMatch(quiet, /ops {2}/);
  const off = await inTerminal(["sync", src, `${d.path}/d`, "--no-progress"]);
  assertNotMatch(off, /ops {2}/);
  assertMatch(off, /synced: /);
  // Forced on even with --quiet (stderr still a terminal here).
  const forced = await inTerminal(["sync", src, `${d.path}/e`, "--quiet", "--progress"]);
  assertMatch(forced, /\r\d+\/\d+ ops /);
  const piped = await mimeo(["sync", src, `${d.path}/c`, "--json"]);
  assertEquals(piped.code, 0, piped.stderr);
  assertNotMatch(piped.stderr, /ops {2}|\r/);
  JSON.parse(piped.stdout); // stdout holds only the JSON summary
});
