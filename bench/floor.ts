/**
 * Deno's floor for a run with nothing to do: walk two trees with `Deno.readDirSync` and one
 * `Deno.lstatSync` per entry, the first on this thread and the second on a Worker at the
 * same time (as mimeo's quick check does), and nothing else: no index, no comparison, no
 * manifest: what a plain walk of both trees costs in Deno. Any tool that notices a changed
 * file on either side must at least stat every entry of both trees; the listing it can skip
 * where it knows a folder's names did not change (mimeo does, by the folder's fingerprint),
 * so a no-op can go somewhat below this. `bench/run.ts` times it beside the tools (the
 * "Deno floor" table).
 *
 * Usage: deno run --allow-read bench/floor.ts SOURCE REPLICA
 *
 * @module
 */

/** Entries under `root` (not counting it), each stat'ed once. */
export function statWalk(root: string): number {
  let n = 0;
  const stack = [root];
  while (stack.length) {
    const dir = stack.pop()!;
    for (const d of Deno.readDirSync(dir)) {
      const p = `${dir}/${d.name}`;
      const st = Deno.lstatSync(p);
      n++;
      if (st.isDirectory) stack.push(p);
    }
  }
  return n;
}

// deno-lint-ignore no-explicit-any
const WorkerGlobal = (globalThis as any).WorkerGlobalScope;
if (WorkerGlobal !== undefined && globalThis instanceof WorkerGlobal) {
  const scope = globalThis as unknown as {
    onmessage: ((ev: MessageEvent<string>) => void) | null;
    postMessage(n: number): void;
  };
  scope.onmessage = (ev) => scope.postMessage(statWalk(ev.data));
} else if (import.meta.main) {
  const [source, replica] = Deno.args;
  if (!source || !replica) {
    console.error("usage: deno run --allow-read bench/floor.ts SOURCE REPLICA");
    Deno.exit(2);
  }
  const worker = new Worker(import.meta.url, { type: "module" });
  const other = new Promise<number>((resolve) => {
    worker.onmessage = (ev: MessageEvent<number>) => resolve(ev.data);
  });
  worker.postMessage(replica);
  const here = statWalk(source);
  const there = await other;
  worker.terminate();
  console.log(`${here} + ${there} entries stat'ed`);
}
