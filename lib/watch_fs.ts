/**
 * Watch mode (placeholder until implemented): runs the periodic loop.
 *
 * @module
 */
import { runPeriodic } from "./watch.ts";

/** Options for {@linkcode runWatch}. */
export interface WatchOptions {
  source: string;
  debounceMs: number;
  safetyIntervalMs?: number;
  count?: number;
  signal: AbortSignal;
}

/** Sync, then keep the replica current as the source changes. */
export function runWatch(
  once: (run: number, extra?: { only?: string[] }) => Promise<number>,
  o: WatchOptions,
): Promise<number> {
  return runPeriodic((n) => once(n), {
    intervalMs: o.safetyIntervalMs ?? 1000,
    count: o.count,
    signal: o.signal,
  });
}
