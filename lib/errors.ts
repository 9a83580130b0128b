/**
 * Typed errors with user-facing messages. `main.ts` turns every one of them into a single
 * line on stderr and an exit code; nothing else in mimeo decides exit codes.
 *
 * @module
 */

/** Exit codes, documented in the README. */
export const ExitCode = {
  /** Everything was done. */
  Ok: 0,
  /** The run finished, but some operations failed (the rest were done). */
  PartialFailure: 1,
  /** Bad usage or unsafe configuration; nothing was touched. */
  Usage: 2,
  /**
   * Refused by a safety limit (--max-delete, empty source, a first sync that would empty a
   * folder mimeo did not make); nothing was touched.
   */
  Refused: 3,
  /**
   * Another run is using the replica; nothing was touched. Try again later (sysexits'
   * EX_TEMPFAIL, so a cron wrapper can tell a skipped run from a refused one).
   */
  Busy: 75,
  /**
   * A remote replica's server could not be reached, or was lost during the run (sysexits'
   * EX_UNAVAILABLE); the next run repairs what was left.
   */
  Unavailable: 69,
  /** Stopped by SIGINT after a clean stop. */
  Interrupted: 130,
  /** Stopped by SIGTERM after a clean stop. */
  Terminated: 143,
} as const;

/** Base class of every error mimeo reports as one line with an exit code. */
export class MimeoError extends Error {
  /** The process exit code this error maps to. */
  readonly exitCode: number;
  constructor(message: string, exitCode: number) {
    super(message);
    this.name = new.target.name;
    this.exitCode = exitCode;
  }
}

/**
 * Bad command line: unknown option, malformed value, conflicting options.
 *
 * @example
 * ```ts
 * throw new UsageError("--count must be a positive whole number, got 'x'");
 * ```
 */
export class UsageError extends MimeoError {
  constructor(message: string) {
    super(message, ExitCode.Usage);
  }
}

/** A configuration that could lose or corrupt data: refused before anything is written. */
export class UnsafeConfigError extends MimeoError {
  constructor(message: string) {
    super(message, ExitCode.Usage);
  }
}

/** A Deno permission mimeo needs was not granted. */
export class PermissionMissingError extends MimeoError {
  constructor(message: string) {
    super(message, ExitCode.Usage);
  }
}

/** A safety limit tripped (--max-delete, empty source); the run changed nothing. */
export class RefusedError extends MimeoError {
  constructor(message: string) {
    super(message, ExitCode.Refused);
  }
}

/** Another mimeo run holds the replica's lock; nothing was touched (exit 75). */
export class BusyError extends MimeoError {
  constructor(message: string) {
    super(message, ExitCode.Busy);
  }
}

/** The run was stopped by a signal; carries the exit code for that signal. */
export class StoppedError extends MimeoError {
  constructor(readonly signal: "SIGINT" | "SIGTERM") {
    super(
      `stopped by ${signal}`,
      signal === "SIGINT" ? ExitCode.Interrupted : ExitCode.Terminated,
    );
  }
}

/** A short, stable code for an I/O error, for logs (`EACCES`, `ENOENT`, `ENOSPC` …). */
export function errorCode(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "ENOENT";
  if (err instanceof Deno.errors.PermissionDenied) return "EACCES";
  if (err instanceof Deno.errors.NotCapable) return "NOTCAPABLE";
  if (err instanceof Deno.errors.AlreadyExists) return "EEXIST";
  if (err instanceof Deno.errors.IsADirectory) return "EISDIR";
  if (err instanceof Deno.errors.NotADirectory) return "ENOTDIR";
  if (err instanceof Deno.errors.FilesystemLoop) return "ELOOP";
  const code = (err as { code?: unknown })?.code;
  if (typeof code === "string") return code;
  const msg = err instanceof Error ? err.message : String(err);
  const m = /\(os error (\d+)\)/.exec(msg);
  if (m) {
    const known: Record<string, string> = {
      "28": "ENOSPC",
      "30": "EROFS",
      "39": "ENOTEMPTY",
      "36": "ENAMETOOLONG",
      "122": "EDQUOT",
      "18": "EXDEV",
    };
    return known[m[1]] ?? `OS${m[1]}`;
  }
  return "EIO";
}

/** The message of an unknown thrown value, without Deno's stack. */
export function errorMessage(err: unknown): string {
  if (err instanceof Deno.errors.NotCapable) {
    return `${
      (err as Error).message
    } (mimeo needs --allow-read and --allow-write for the paths it uses)`;
  }
  if (err instanceof Error) return err.message;
  return String(err);
}
