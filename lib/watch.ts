/**
 * Loops around single runs: periodic (`--interval`, `--count`) and, later, watch mode.
 * Runs never overlap: the next one starts only after the previous one has finished.
 *
 * @module
 */

/** Sleep for `ms`, or until `signal` aborts (then resolves early, without throwing). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Options for {@linkcode runPeriodic}. */
export interface PeriodicOptions {
  /** Time from the start of one run to the start of the next. */
  intervalMs: number;
  /** Stop after this many runs. @default unlimited */
  count?: number;
  /** Stops the loop (after the run in flight has stopped cleanly). */
  signal: AbortSignal;
}

/**
 * Call `once` every `intervalMs` until `count` runs are done or `signal` aborts. `once`
 * handles and logs its own failures and returns an exit code; a failing run does not end
 * the loop. Returns the last run's exit code.
 *
 * @example
 * ```ts
 * const ac = new AbortController();
 * await runPeriodic(async (n) => { console.log("run", n); return 0; }, {
 *   intervalMs: 1000, count: 3, signal: ac.signal,
 * });
 * ```
 */
export async function runPeriodic(
  once: (run: number) => Promise<number>,
  o: PeriodicOptions,
): Promise<number> {
  let last = 0;
  for (let run = 1; !o.signal.aborted; run++) {
    const start = performance.now();
    last = await once(run);
    if (o.count !== undefined && run >= o.count) break;
    await sleep(Math.max(0, o.intervalMs - (performance.now() - start)), o.signal);
  }
  return last;
}
