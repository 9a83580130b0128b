/**
 * Watch mode: a full sync, then the replica kept current as the source changes.
 *
 * File-system events are hints, never truth. Changed paths are collected into a set; once
 * the source has been quiet for the debounce period (or events have kept coming for
 * {@linkcode MAX_BATCH_DELAY_MS}), the changed subtrees are re-scanned and the same planner
 * as a full sync runs over them. A full rescan happens instead when the watcher overflows
 * (Deno's `rescan` flag, where it is reported), fails or restarts, after a run that did not
 * fully succeed, when a batch is very large, and every safety interval, so a dropped event is
 * repaired within one interval. Runs never overlap; events that arrive during a run make the next batch.
 *
 * @module
 */
import { relative } from "node:path";
import { errorMessage, ExitCode } from "./errors.ts";
import { logEvent, setLogContext } from "./log.ts";

/**
 * Without `--interval`, the safety rescan runs every `SAFETY_FACTOR` times the duration of
 * the last full run, kept between these bounds: full rescans then cost about 1% of the
 * time. Deno 2.9 drops events silently when the inotify queue overflows (no `rescan` flag
 * seen here), so this rescan is what repairs a burst that overflowed.
 */
export const SAFETY_INTERVAL_MIN_MS = 30_000;
/** Upper bound of the adaptive safety interval. */
export const SAFETY_INTERVAL_MAX_MS = 10 * 60_000;
const SAFETY_FACTOR = 100;
/** Longest a batch waits for quiet while events keep arriving. */
export const MAX_BATCH_DELAY_MS = 2_000;
/** A run refused because another run was using the replica is tried again this soon. */
export const BUSY_RETRY_MS = 1_000;
/** A batch with more changed paths than this becomes a full rescan. */
export const MAX_BATCH_PATHS = 10_000;

/** Options for {@linkcode runWatch}. */
export interface WatchOptions {
  /** The source folder to watch. */
  source: string;
  /** Quiet period before a batch runs. */
  debounceMs: number;
  /**
   * Full rescan every this often.
   * @default adaptive: 100 × the last full run, between 30 s and 10 min
   */
  safetyIntervalMs?: number;
  /** Stop after this many runs (the initial sync counts). @default unlimited */
  count?: number;
  /** Stops watching; the run in flight stops cleanly. */
  signal: AbortSignal;
}

/** One run: `only` lists relative paths to re-scan; absent means a full sync. */
export type RunFn = (run: number, extra?: { only?: string[] }) => Promise<number>;

/**
 * Sync, then keep the replica current until `signal` aborts or `count` runs are done.
 * Returns the last run's exit code.
 */
export async function runWatch(once: RunFn, o: WatchOptions): Promise<number> {
  const root = Deno.realPathSync(o.source);
  let safetyMs = o.safetyIntervalMs ?? SAFETY_INTERVAL_MIN_MS;
  const adapt = (fullRunMs: number) => {
    if (o.safetyIntervalMs !== undefined) return;
    safetyMs = Math.min(
      SAFETY_INTERVAL_MAX_MS,
      Math.max(SAFETY_INTERVAL_MIN_MS, fullRunMs * SAFETY_FACTOR),
    );
  };
  const pending = new Set<string>();
  /** Why the next batch must be a full rescan (undefined: it need not). */
  let full: string | undefined;
  let lastEventAt = 0;
  let firstPendingAt = 0;
  let wake: (() => void) | undefined;
  const notify = () => wake?.();
  let watcher: Deno.FsWatcher | undefined;
  const onAbort = () => {
    try {
      watcher?.close();
    } catch { /* already closed */ }
    notify();
  };
  o.signal.addEventListener("abort", onAbort, { once: true });

  const startWatcher = (): void => {
    try {
      watcher = Deno.watchFs(root, { recursive: true });
    } catch (e) {
      logEvent("error", {
        event: "watch-error",
        error: errorMessage(e),
        message: `cannot watch '${o.source}': ${errorMessage(e)}; relying on the safety rescan`,
      });
      return;
    }
    const w = watcher;
    (async () => {
      try {
        for await (const ev of w) {
          if (ev.kind === "access") continue;
          const now = performance.now();
          if (ev.flag === "rescan") full = "overflow";
          for (const abs of ev.paths) {
            const rel = relative(root, abs);
            if (rel === "" || rel.startsWith("..")) full ??= "root changed";
            else pending.add(rel);
          }
          lastEventAt = now;
          if (!firstPendingAt) firstPendingAt = now;
          notify();
        }
      } catch (e) {
        if (!o.signal.aborted) {
          logEvent("warning", {
            event: "watch-error",
            error: errorMessage(e),
            message: `watcher failed: ${errorMessage(e)}; restarting it and rescanning`,
          });
        }
      }
      if (o.signal.aborted) return;
      // The watcher ended without being asked to: restart it and rescan everything.
      await new Promise((r) => setTimeout(r, 500));
      if (o.signal.aborted) return;
      full = "watcher restarted";
      startWatcher();
      notify();
    })();
  };

  /** Wait until notified, `ms` passes, or the signal aborts. */
  const waitFor = (ms: number) =>
    new Promise<void>((resolve) => {
      if (o.signal.aborted) return resolve();
      const t = setTimeout(done, Math.max(0, ms));
      function done() {
        clearTimeout(t);
        wake = undefined;
        resolve();
      }
      wake = done;
    });

  // Watch before the first sync, so changes made during it are not missed.
  startWatcher();
  let run = 0;
  const t0 = performance.now();
  let last = await once(++run);
  adapt(performance.now() - t0);
  let nextSafety = performance.now() + safetyMs;
  // Another run had the replica: a full rescan soon, whether or not events come.
  if (last === ExitCode.Busy) nextSafety = performance.now() + BUSY_RETRY_MS;
  try {
    while (!o.signal.aborted && (o.count === undefined || run < o.count)) {
      const now = performance.now();
      if (!full && pending.size === 0) {
        if (now >= nextSafety) full = "safety interval";
        else {
          await waitFor(nextSafety - now);
          continue;
        }
      }
      if (!full) {
        const quietFor = now - lastEventAt;
        const waited = now - firstPendingAt;
        if (quietFor < o.debounceMs && waited < MAX_BATCH_DELAY_MS) {
          await waitFor(Math.min(o.debounceMs - quietFor, MAX_BATCH_DELAY_MS - waited));
          continue;
        }
      }
      const paths = [...pending];
      pending.clear();
      firstPendingAt = 0;
      const reason = full ??
        (last !== 0
          ? "previous run failed"
          : paths.length > MAX_BATCH_PATHS
          ? "large batch"
          : undefined);
      const isFull = reason !== undefined;
      full = undefined;
      setLogContext({ run: run + 1 });
      logEvent("debug", {
        event: "batch",
        paths: paths.length,
        full: isFull,
        reason,
        message: isFull
          ? `full rescan (${reason})${paths.length ? `, ${paths.length} changed paths` : ""}`
          : `re-scanning ${paths.length} changed paths`,
      });
      const started = performance.now();
      last = await once(++run, isFull ? {} : { only: paths });
      if (isFull) {
        adapt(performance.now() - started);
        nextSafety = performance.now() + safetyMs;
      }
      if (last === ExitCode.Busy) nextSafety = performance.now() + BUSY_RETRY_MS;
    }
  } finally {
    o.signal.removeEventListener("abort", onAbort);
    try {
      watcher?.close();
    } catch { /* already closed */ }
  }
  return last;
}
