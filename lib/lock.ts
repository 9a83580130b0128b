/**
 * One run at a time per replica. Two syncs into the same replica at once (a cron job that
 * overlaps the previous one, a manual run during a `--watch` process's run) would plan from
 * the same manifest, take each other's temporary files for a crash's leftovers, and leave
 * the manifest of whichever wrote last. So a sync holds an advisory lock (`flock`) on the
 * replica folder itself for the whole run, and `verify` a shared one: a second run finds
 * it taken and is refused at once, before it reads or writes anything (exit 75, "try again
 * later"; `--watch` and `--interval` try again themselves).
 *
 * The lock is the kernel's, on the folder's open handle: no lock file to leave behind, and
 * a run that is killed releases it as it dies. A file system without locks (some network
 * mounts) runs unlocked, as rsync always does.
 *
 * @module
 */
import { BusyError, errorMessage } from "./errors.ts";
import { logEvent } from "./log.ts";

/**
 * Take the replica's lock for a run: exclusive for a sync, shared for a verify. Throws a
 * {@linkcode BusyError} when another run holds it; dispose of the result to release it.
 *
 * @example
 * ```ts
 * using _lock = lockReplica("/srv/mirror", "sync");
 * ```
 */
export function lockReplica(replica: string, purpose: "sync" | "verify"): Disposable {
  let dir: Deno.FsFile;
  try {
    dir = Deno.openSync(replica, { read: true });
  } catch (e) {
    // Not there (yet): nothing to protect. Any real problem is met by the run itself.
    logEvent("debug", { event: "lock-failed", path: replica, message: errorMessage(e) });
    return { [Symbol.dispose]() {} };
  }
  let got: boolean;
  try {
    got = dir.tryLockSync(purpose === "sync");
  } catch (e) {
    logEvent("debug", {
      event: "lock-failed",
      path: replica,
      message: `no lock on the replica (runs are not kept apart): ${errorMessage(e)}`,
    });
    return dir;
  }
  if (!got) {
    dir.close();
    throw new BusyError(
      `another mimeo run is ${
        purpose === "sync" ? "using" : "syncing into"
      } replica '${replica}'; nothing was done (one run at a time: try again when it ends)`,
    );
  }
  return dir; // closing the handle releases the lock
}
