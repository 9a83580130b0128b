/**
 * SIGINT and SIGTERM: the first asks for a clean stop (the run in flight stops after its
 * current operation and records what it did); a second one means "now".
 *
 * @module
 */
import { StoppedError } from "./errors.ts";
import { logEvent } from "./log.ts";

/**
 * A signal this soon after the first is the same request delivered twice, not a second
 * one: `timeout` signals its child and then the child's process group, and `deno task`
 * passes a SIGTERM on to the process it runs, which has had it from the group already.
 */
export const REPEAT_GRACE_MS = 250;

/**
 * Install SIGINT/SIGTERM handlers: the first aborts `ac` with a {@linkcode StoppedError};
 * a later one (after {@linkcode REPEAT_GRACE_MS}) calls `again`, which exits at once in
 * the CLI. Returns a function that removes the handlers.
 *
 * @example
 * ```ts
 * const ac = new AbortController();
 * const untrap = trapSignals(ac, () => Deno.exit(130));
 * untrap();
 * ```
 */
export function trapSignals(
  ac: AbortController,
  again: (sig: "SIGINT" | "SIGTERM") => void,
): () => void {
  const handlers: [Deno.Signal, () => void][] = [];
  let firstAt = 0;
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    const h = () => {
      if (ac.signal.aborted) {
        if (performance.now() - firstAt >= REPEAT_GRACE_MS) again(sig);
        return;
      }
      firstAt = performance.now();
      logEvent("warning", {
        event: "stop",
        signal: sig,
        message: `${sig} received; stopping after the current operation`,
      });
      ac.abort(new StoppedError(sig));
    };
    Deno.addSignalListener(sig, h);
    handlers.push([sig, h]);
  }
  return () => {
    for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
  };
}
