/**
 * mimeo's entry point: parse the command line, run, and turn every error into one line on
 * stderr and an exit code. This is the only place that decides exit codes.
 *
 * @module
 */
import { eventOf } from "./lib/apply.ts";
import { type Command, COMMAND_HELP, HELP, isLoopback, parseCommand, VERSION } from "./lib/cli.ts";
import { isRemoteUrl } from "./lib/replica/remote/protocol.ts";
import {
  BusyError,
  errorMessage,
  ExitCode,
  MimeoError,
  StoppedError,
  UsageError,
} from "./lib/errors.ts";
import {
  configureLogging,
  flushConsole,
  humanLine,
  logEvent,
  logFileEvent,
  printable,
  setLogContext,
} from "./lib/log.ts";
import { modeString, serializeManifest, treeDigest, writeFileAtomicSync } from "./lib/manifest.ts";
import { type Op } from "./lib/plan.ts";
import { validatePaths } from "./lib/paths.ts";
import { createProgress } from "./lib/progress.ts";
import { summaryFields, sync, type SyncOptions } from "./lib/sync.ts";
import { buildManifest, verify, type VerifyReport } from "./lib/verify.ts";
import { runPeriodic } from "./lib/watch.ts";
import { runWatch } from "./lib/watch_fs.ts";
import { trapSignals } from "./lib/signals.ts";

const enc = new TextEncoder();
function out(text: string): void {
  const data = enc.encode(text);
  let off = 0;
  while (off < data.length) off += Deno.stdout.writeSync(data.subarray(off));
}
function err(text: string): void {
  flushConsole();
  Deno.stderr.writeSync(enc.encode(text));
}

/** An operation as JSON (modes as octal text, mtimes as ISO dates). */
function opJson(op: Op): Record<string, unknown> {
  const o: Record<string, unknown> = { ...op };
  if (typeof o.mode === "number") o.mode = modeString(o.mode);
  if (typeof o.mtime === "number") o.mtime = new Date(o.mtime as number).toISOString();
  return o;
}

function printPlan(ops: Op[], json: boolean, summary: Record<string, unknown>): void {
  if (json) {
    out(JSON.stringify({ ops: ops.map(opJson), summary }) + "\n");
    return;
  }
  const lines = ops.map((op) => humanLine("info", eventOf(op)));
  lines.push(
    ops.length ? `${ops.length} operations planned` : "nothing to do: the replica is up to date",
  );
  out(lines.join("\n") + "\n");
}

/**
 * A remote replica's token: the first line of --token-file, else `MIMEO_TOKEN` (when Deno
 * lets mimeo read it), else none.
 */
function readToken(tokenFile: string | undefined, flag = "--token-file"): string | undefined {
  if (tokenFile !== undefined) {
    let text: string;
    try {
      text = Deno.readTextFileSync(tokenFile);
    } catch (e) {
      throw new UsageError(`Cannot read ${flag} '${tokenFile}': ${errorMessage(e)}`);
    }
    const token = text.split(/\r?\n/)[0].trim();
    if (!token) throw new UsageError(`${flag} '${tokenFile}' is empty`);
    return token;
  }
  const env = Deno.permissions.querySync({ name: "env", variable: "MIMEO_TOKEN" });
  return env.state === "granted" ? Deno.env.get("MIMEO_TOKEN") || undefined : undefined;
}

/**
 * A local run never uses the network: what `deno task sync` grants for remote replicas is
 * given up first (and the token variable with it).
 */
function stayOffTheNetwork(): void {
  Deno.permissions.revokeSync({ name: "net" });
  Deno.permissions.revokeSync({ name: "env", variable: "MIMEO_TOKEN" });
}

async function runSync(cmd: Extract<Command, { command: "sync" | "plan" }>): Promise<number> {
  const dryRun = cmd.command === "plan" || cmd.dryRun;
  const isSync = cmd.command === "sync" ? cmd : undefined;
  const remote = isRemoteUrl(cmd.replica);
  // Refuse bad paths before anything (even the log file) is created.
  if (!remote) {
    stayOffTheNetwork();
    validatePaths(cmd.source, cmd.replica, cmd.manifest, { logFile: isSync?.log, writes: !dryRun });
  }
  const token = remote ? readToken(cmd.tokenFile) : undefined;
  let close: () => void;
  try {
    close = await configureLogging({
      console: cmd.verbosity,
      logFile: isSync?.log
        ? {
          path: isSync.log,
          rotate: isSync.logRotate,
          maxSize: isSync.logMaxSize,
          maxFiles: isSync.logMaxFiles,
        }
        : undefined,
    });
  } catch (e) {
    throw new UsageError(`Cannot open log file '${isSync?.log}': ${errorMessage(e)}`);
  }
  const ac = new AbortController();
  const untrap = trapSignals(ac, (sig) => {
    err(`mimeo: ${sig} again; exiting now (the next run cleans up)\n`);
    Deno.exit(new StoppedError(sig).exitCode);
  });
  const progress = isSync && !dryRun ? createProgress(isSync.progress, cmd.verbosity) : undefined;
  const base: SyncOptions = {
    source: cmd.source,
    replica: cmd.replica,
    manifest: cmd.manifest,
    exclude: cmd.exclude,
    ignoreFiles: cmd.ignoreFiles,
    deleteExcluded: cmd.deleteExcluded,
    checksum: cmd.checksum,
    dryRun,
    maxDelete: cmd.maxDelete,
    maxDeletePercent: cmd.maxDeletePercent,
    allowEmptySource: cmd.allowEmptySource,
    renames: cmd.renames,
    dirTimes: cmd.dirTimes,
    signal: ac.signal,
    logFile: isSync?.log,
    progress: progress?.update,
    token,
    caFile: cmd.caFile,
  };

  /** One run; in a loop, failures are logged and the loop goes on. */
  const once = async (run: number, extra: Partial<SyncOptions> = {}): Promise<number> => {
    setLogContext({ run });
    logEvent("debug", {
      event: "start",
      source: cmd.source,
      replica: cmd.replica,
      dryRun,
      message: `run ${run}: ${cmd.source} -> ${cmd.replica}${dryRun ? " (dry run)" : ""}`,
    });
    try {
      const report = await sync({ ...base, ...extra });
      progress?.clear();
      if (dryRun) printPlan(report.ops, cmd.json, summaryFields(report));
      else if (cmd.json) out(JSON.stringify({ run, ...summaryFields(report) }) + "\n");
      return report.exitCode;
    } catch (e) {
      progress?.clear();
      if (ac.signal.aborted && (e === ac.signal.reason || e instanceof StoppedError)) {
        return (ac.signal.reason as StoppedError).exitCode;
      }
      // Any problem is fatal in the first run (a configuration mistake) and bugs always are;
      // later, a failing run (say an unmounted source) is logged and the loop goes on. A
      // replica busy with another run is never a mistake: a loop waits for its turn.
      const looping = isSync?.watch || isSync?.intervalMs !== undefined;
      if ((run === 1 && !(looping && e instanceof BusyError)) || !(e instanceof MimeoError)) {
        // The console gets its one `mimeo: …` line from main(); the log file gets it here.
        logFileEvent("error", {
          event: "run-failed",
          code: e instanceof MimeoError ? e.constructor.name : "unexpected",
          error: errorMessage(e),
          exitCode: e instanceof MimeoError ? e.exitCode : ExitCode.PartialFailure,
          message: `run ${run} failed: ${errorMessage(e)}`,
        });
        throw e;
      }
      logEvent(e instanceof BusyError ? "warning" : "error", {
        event: "run-failed",
        code: e.constructor.name,
        error: errorMessage(e),
        exitCode: e.exitCode,
        message: `run ${run} failed: ${errorMessage(e)}; trying again`,
      });
      if (cmd.json) {
        out(
          JSON.stringify({ run, failed: true, error: errorMessage(e), exitCode: e.exitCode }) +
            "\n",
        );
      }
      return e.exitCode;
    }
  };

  try {
    let code: number;
    if (isSync?.watch) {
      code = await runWatch(once, {
        source: cmd.source,
        debounceMs: isSync.debounceMs,
        safetyIntervalMs: isSync.intervalMs,
        count: isSync.count,
        signal: ac.signal,
      });
    } else if (isSync?.intervalMs !== undefined) {
      code = await runPeriodic(once, {
        intervalMs: isSync.intervalMs,
        count: isSync.count,
        signal: ac.signal,
      });
    } else code = await once(1);
    if (ac.signal.aborted) {
      const reason = ac.signal.reason as StoppedError;
      logEvent("warning", {
        event: "stopped",
        signal: reason.signal,
        message: `stopped cleanly by ${reason.signal}`,
      });
      return reason.exitCode;
    }
    return code;
  } finally {
    untrap();
    progress?.clear();
    close();
  }
}

async function runManifest(cmd: Extract<Command, { command: "manifest" }>): Promise<number> {
  const { manifest, issues } = await buildManifest(cmd.dir, {
    exclude: cmd.exclude,
    ignoreFiles: cmd.ignoreFiles,
  });
  for (const i of issues) err(`${printable(`${i.level}: '${i.path}': ${i.message}`)}\n`);
  const digest = treeDigest(manifest.entries);
  if (cmd.digestOnly) out(`${digest}\n`);
  else if (cmd.out) {
    try {
      writeFileAtomicSync(cmd.out, serializeManifest(manifest, false));
    } catch (e) {
      throw new UsageError(`Cannot write '${cmd.out}': ${errorMessage(e)}`);
    }
    out(`${digest}  ${cmd.out}\n`);
  } else out(serializeManifest(manifest, false));
  return issues.some((i) => i.level === "error") ? ExitCode.PartialFailure : ExitCode.Ok;
}

async function runVerify(cmd: Extract<Command, { command: "verify" }>): Promise<number> {
  let r: VerifyReport;
  if (isRemoteUrl(cmd.replica)) {
    if (cmd.manifest) {
      throw new UsageError(
        "--manifest names a local file: a remote replica's manifest is kept by its server",
      );
    }
    const { RemoteClient } = await import("./lib/replica/remote/client.ts");
    const { parseRemote } = await import("./lib/replica/remote/protocol.ts");
    let loc;
    try {
      loc = parseRemote(cmd.replica);
    } catch (e) {
      throw new UsageError(errorMessage(e));
    }
    const client = new RemoteClient(loc, { token: readToken(cmd.tokenFile), caFile: cmd.caFile });
    try {
      r = await client.verify() as VerifyReport;
    } finally {
      await client.close();
    }
  } else {
    stayOffTheNetwork();
    r = await verify(cmd.replica, { manifest: cmd.manifest, exclude: cmd.exclude });
  }
  if (cmd.json) out(JSON.stringify(r) + "\n");
  else {
    const lines = r.mismatches.map((m) =>
      printable(
        `${m.problem.padEnd(10)} ${m.path}${m.expected ? `  expected ${m.expected}` : ""}${
          m.actual ? `  found ${m.actual}` : ""
        }`,
      )
    );
    lines.push(
      r.mismatches.length
        ? `verify: ${r.mismatches.length} mismatches in ${r.checked} entries`
        : `verify: ok, ${r.checked} entries match ${r.manifest}`,
    );
    out(lines.join("\n") + "\n");
  }
  return r.mismatches.length ? ExitCode.PartialFailure : ExitCode.Ok;
}

async function runServe(cmd: Extract<Command, { command: "serve" }>): Promise<number> {
  let dir: string;
  try {
    dir = Deno.realPathSync(cmd.dir);
    if (!Deno.statSync(dir).isDirectory) throw new UsageError(`'${cmd.dir}' is not a folder`);
  } catch (e) {
    if (e instanceof MimeoError) throw e;
    throw new UsageError(`Cannot serve '${cmd.dir}': ${errorMessage(e)}`);
  }
  const token = cmd.tokenFile !== undefined ? readToken(cmd.tokenFile) : undefined;
  const loopback = isLoopback(cmd.hostname);
  if (!loopback && token === undefined) {
    throw new UsageError(
      `refusing to serve ${cmd.hostname} without --token-file: anyone who reaches it could overwrite the replicas`,
    );
  }
  if (!loopback && !cmd.tlsCert && !cmd.allowPlainHttp) {
    throw new UsageError(
      `refusing plain HTTP on ${cmd.hostname}: give --tls-cert and --tls-key, or --allow-plain-http if the network is trusted`,
    );
  }
  let tls: { cert: string; key: string } | undefined;
  if (cmd.tlsCert && cmd.tlsKey) {
    try {
      tls = { cert: Deno.readTextFileSync(cmd.tlsCert), key: Deno.readTextFileSync(cmd.tlsKey) };
    } catch (e) {
      throw new UsageError(`Cannot read the TLS certificate or key: ${errorMessage(e)}`);
    }
  }
  const close = await configureLogging({
    console: cmd.verbosity,
    logFile: cmd.log ? { path: cmd.log } : undefined,
  });
  const ac = new AbortController();
  const untrap = trapSignals(ac, (sig) => {
    err(`mimeo: ${sig} again; exiting now\n`);
    Deno.exit(new StoppedError(sig).exitCode);
  });
  try {
    if (token === undefined) {
      logEvent("warning", {
        event: "no-auth",
        message:
          "serving without a token (--token-file): any program on this machine can write the replicas",
      });
    }
    const { serve } = await import("./lib/server/serve.ts");
    await serve({
      dir,
      hostname: cmd.hostname,
      port: cmd.port,
      token,
      tls,
      signal: ac.signal,
      onListen: (url) => {
        out(`listening on ${url}\n`);
        logFileEvent("info", { event: "listening", url, dir });
      },
    });
    logEvent("info", { event: "stopped", message: "server stopped" });
    return ExitCode.Ok;
  } finally {
    untrap();
    close();
  }
}

/** Run mimeo with these arguments; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  try {
    const cmd = parseCommand(argv);
    switch (cmd.command) {
      case "help":
        out(cmd.topic ? COMMAND_HELP[cmd.topic] : HELP);
        return ExitCode.Ok;
      case "version":
        out(`mimeo ${VERSION}\n`);
        return ExitCode.Ok;
      case "manifest":
        return await runManifest(cmd);
      case "verify":
        return await runVerify(cmd);
      case "plan":
      case "sync":
        return await runSync(cmd);
      case "serve":
        return await runServe(cmd);
    }
  } catch (e) {
    if (e instanceof MimeoError) {
      err(`mimeo: ${printable(e.message)}\n`);
      return e.exitCode;
    }
    if (e instanceof Deno.errors.NotCapable) {
      err(`mimeo: ${errorMessage(e)}\n`);
      return ExitCode.Usage;
    }
    err(`mimeo: unexpected error: ${errorMessage(e)}\n`);
    const env = Deno.permissions.querySync({ name: "env", variable: "MIMEO_DEBUG" });
    if (env.state === "granted" && Deno.env.get("MIMEO_DEBUG")) err(`${(e as Error).stack}\n`);
    return ExitCode.PartialFailure;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
