/** Signals: the first one stops cleanly; the same one delivered twice is still one stop. */
import { REPEAT_GRACE_MS, trapSignals } from "../lib/signals.ts";
import { StoppedError } from "../lib/errors.ts";
import { assert, assertEquals, waitFor } from "./helpers.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("a signal repeated at once is the same stop request; a later one is a second", async () => {
  const ac = new AbortController();
  const again: string[] = [];
  const untrap = trapSignals(ac, (sig) => again.push(sig));
  try {
    Deno.kill(Deno.pid, "SIGTERM");
    await waitFor(() => ac.signal.aborted, 5_000, "the first signal");
    assert(ac.signal.reason instanceof StoppedError && ac.signal.reason.signal === "SIGTERM");
    // `timeout` around `deno task` delivers it twice, a few milliseconds apart.
    Deno.kill(Deno.pid, "SIGTERM");
    await sleep(50);
    assertEquals(again, [], "a repeat within the grace period is not a second signal");
    await sleep(REPEAT_GRACE_MS);
    // (SIGTERM: the test runner itself answers SIGINT.)
    Deno.kill(Deno.pid, "SIGTERM");
    await waitFor(() => again.length > 0, 5_000, "the second signal");
    assertEquals(again, ["SIGTERM"]);
  } finally {
    untrap();
  }
});
