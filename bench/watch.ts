/**
 * Watch-mode latency and long-run memory (issue 5).
 *
 *   deno task bench:watch [--edits 20] [--cycles 1000]
 *
 * 1. Latency: `sync --watch` (default debounce) on a 1,000-file source; one small file is
 *    rewritten, and the time until the replica holds the new bytes is measured (polled
 *    every 2 ms), `--edits` times. Prints median and p90.
 * 2. Memory: the resident set size each run reports (`rssBytes` in `--json` summaries)
 *    after run 10 and after run `--cycles`, for periodic mode (`--interval 1ms`) and for
 *    watch mode (one edit per cycle).
 */
import { parseArgs } from "node:util";
import { MIMEO_FLAGS, MIMEO_MAIN } from "./common.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    edits: { type: "string", default: "20" },
    cycles: { type: "string", default: "1000" },
  },
});
const EDITS = Number(values.edits);
const CYCLES = Number(values.cycles);
const work = await Deno.makeTempDir({ prefix: "mimeo-bench-watch-" });
const src = `${work}/src`;
for (let i = 0; i < 1000; i++) {
  Deno.mkdirSync(`${src}/d${i % 20}`, { recursive: true });
  Deno.writeTextFileSync(`${src}/d${i % 20}/f${i}.txt`, `file ${i}\n`.repeat(10));
}

function spawn(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", ...MIMEO_FLAGS, MIMEO_MAIN, ...args],
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  }).spawn();
}

/** Read JSON lines from a child's stdout as they come. */
async function* summaries(child: Deno.ChildProcess): AsyncGenerator<Record<string, unknown>> {
  let buf = "";
  for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.trim()) yield JSON.parse(line);
    }
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const p90 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.9)];
const mb = (b: unknown) => `${(Number(b) / 2 ** 20).toFixed(1)} MB`;
/** RSS after cycle 10, 100 and the last, and the live heap at the end. */
function memoryLine(what: string, runs: Record<string, unknown>[]): string {
  const rss = runs.map((r) => Number(r.rssBytes));
  const last = runs[runs.length - 1];
  return `${what}: RSS after cycle 10 ${mb(rss[9])}, after 100 ${
    mb(rss[99])
  }, after ${runs.length} ${mb(rss[rss.length - 1])} (max ${
    mb(Math.max(...rss))
  }); live heap at the end ${mb(last.heapUsedBytes)}`;
}

// 1. Latency.
{
  const dst = `${work}/latency`;
  const child = spawn(["sync", src, dst, "--watch", "--json", "-q"]);
  const it = summaries(child);
  await it.next(); // the initial full sync
  const lat: number[] = [];
  for (let i = 0; i < EDITS; i++) {
    await new Promise((r) => setTimeout(r, 300));
    const text = `edit ${i} ${crypto.randomUUID()}\n`;
    const t0 = performance.now();
    Deno.writeTextFileSync(`${src}/d3/f3.txt`, text);
    for (;;) {
      try {
        if (Deno.readTextFileSync(`${dst}/d3/f3.txt`) === text) break;
      } catch { /* mid-rename */ }
      await new Promise((r) => setTimeout(r, 2));
    }
    lat.push(performance.now() - t0);
  }
  child.kill("SIGTERM");
  await child.status;
  console.log(
    `watch latency, one small file changed (default 200 ms debounce), ${EDITS} edits: ` +
      `median ${median(lat).toFixed(0)} ms, p90 ${p90(lat).toFixed(0)} ms, max ${
        Math.max(...lat).toFixed(0)
      } ms`,
  );
}

// 2a. Memory, periodic mode.
{
  const args = ["--interval", "1ms", "--count", String(CYCLES), "--json", "-q"];
  const child = spawn(["sync", src, `${work}/periodic`, ...args]);
  const runs: Record<string, unknown>[] = [];
  for await (const s of summaries(child)) runs.push(s);
  await child.status;
  console.log(memoryLine(`periodic mode, ${runs.length} runs on 1,000 files`, runs));
}

// 2b. Memory, watch mode: one edit per cycle.
{
  const args = ["--watch", "--debounce", "1ms", "--count", String(CYCLES), "--json", "-q"];
  const child = spawn(["sync", src, `${work}/watch`, ...args]);
  const runs: Record<string, unknown>[] = [];
  for await (const s of summaries(child)) {
    runs.push(s);
    const n = runs.length;
    if (n < CYCLES) Deno.writeTextFileSync(`${src}/d${n % 20}/f${n % 1000}.txt`, `cycle ${n}\n`);
  }
  await child.status;
  console.log(memoryLine(`watch mode, ${runs.length} cycles (one edit each)`, runs));
}

await Deno.remove(work, { recursive: true });
