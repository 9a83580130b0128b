/**
 * Command-line parsing (node:util `parseArgs`), help texts and validation. Pure: turns
 * argv into a {@linkcode Command} or throws {@linkcode UsageError}; does no I/O.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { UsageError } from "./errors.ts";

/** mimeo's version. */
export const VERSION = "0.1.0";

/** Options shared by `sync` and `plan`. */
export interface MirrorArgs {
  source: string;
  replica: string;
  manifest?: string;
  exclude: string[];
  ignoreFiles: string[];
  deleteExcluded: boolean;
  checksum: boolean;
  maxDelete?: number;
  maxDeletePercent?: number;
  allowEmptySource: boolean;
  renames: boolean;
  dirTimes: boolean;
  json: boolean;
  verbosity: "quiet" | "normal" | "verbose";
  /** A remote replica's token file (else `MIMEO_TOKEN`). */
  tokenFile?: string;
  /** CA certificates (PEM) to trust for a remote replica's HTTPS. */
  caFile?: string;
}

/** A parsed command line. */
export type Command =
  | { command: "help"; topic?: string }
  | { command: "version" }
  | ({ command: "plan" } & MirrorArgs)
  | ({
    command: "sync";
    dryRun: boolean;
    intervalMs?: number;
    count?: number;
    watch: boolean;
    debounceMs: number;
    log?: string;
    logRotate?: "daily" | "hourly";
    logMaxSize?: number;
    logMaxFiles?: number;
    progress: "auto" | "always" | "never";
  } & MirrorArgs)
  | {
    command: "manifest";
    dir: string;
    out?: string;
    digestOnly: boolean;
    exclude: string[];
    ignoreFiles: string[];
  }
  | {
    command: "verify";
    replica: string;
    manifest?: string;
    exclude: string[];
    json: boolean;
    tokenFile?: string;
    caFile?: string;
  }
  | {
    command: "serve";
    dir: string;
    hostname: string;
    port: number;
    tokenFile?: string;
    tlsCert?: string;
    tlsKey?: string;
    allowPlainHttp: boolean;
    log?: string;
    verbosity: "quiet" | "normal" | "verbose";
  };

const COMMANDS = ["sync", "plan", "manifest", "verify", "serve", "help"] as const;

/** Top-level help. */
export const HELP = `mimeo ${VERSION} - keep a replica folder an exact copy of a source folder

Usage:
  mimeo [sync] <source> <replica> [options]   mirror source into replica
  mimeo plan <source> <replica> [options]     show what a sync would do; change nothing
  mimeo manifest <dir> [--out FILE]           print a folder's manifest and digest
  mimeo verify <replica> [--manifest FILE]    re-hash a replica against its manifest
  mimeo serve <dir> [--listen HOST:PORT]      serve the folders in <dir> as remote replicas
  mimeo help <command>                        help for one command

A replica is a local folder or a served one: https://HOST:PORT/NAME (see mimeo help serve).

Run with Deno permissions --allow-read --allow-write (nothing else), e.g.
  deno task sync <source> <replica>

Exit codes: 0 done; 1 finished but some operations failed or entries were unreadable (or
verify found mismatches); 2 bad usage or unsafe configuration, nothing touched; 3 refused
by a safety limit, nothing touched; 75 another run is using the replica, nothing touched;
130/143 stopped by SIGINT/SIGTERM after a clean stop.
`;

const MIRROR_OPTIONS =
  `  --exclude GLOB         leave out paths matching a .gitignore-style pattern (repeatable);
                         excluded replica entries are left alone
  --delete-excluded      delete excluded entries from the replica too (as rsync's option)
  --ignore-file FILE     read more patterns from FILE (repeatable); <source>/.mimeoignore
                         is read automatically
  --checksum             hash every file instead of trusting size/mtime/ctime/inode
  --manifest FILE        the replica's manifest (default: <replica>.mimeo.json, beside it)
  --max-delete N|N%      refuse the run if it would delete more than N entries (or N% of them);
                         without it, a first sync into a folder mimeo did not make may not
                         delete more than half of it (--max-delete 100% allows that)
  --allow-empty-source   let an empty source empty a non-empty replica
  --no-renames           copy moved files instead of renaming them in the replica
  --omit-dir-times       leave folder mtimes to the replica's file system (as rsync -O),
                         e.g. for replica folders owned by another user
  --json                 machine-readable output on stdout
  -q, --quiet            only warnings and errors on stderr
  -v, --verbose          also debug details on stderr
  --token-file FILE      a remote replica's token (default: the MIMEO_TOKEN variable)
  --ca-file FILE         trust these CA certificates (PEM) for a remote replica's HTTPS
`;

/** Help for each command. */
export const COMMAND_HELP: Record<string, string> = {
  sync: `mimeo sync <source> <replica> [options]

Mirror <source> into <replica>: afterwards the replica holds exactly the source's files,
folders (empty ones too), symlinks (as links), permission bits and file mtimes. Files are
copied through a temporary name and renamed into place; moves become renames; metadata-only
changes are applied without copying. The manifest beside the replica records what it holds.

Options:
${MIRROR_OPTIONS}  -n, --dry-run          print the plan; change nothing
  --interval DURATION    run again every DURATION (30s, 5m, 1h, 500ms; a bare number is
                         seconds) until stopped; in --watch mode, the safety rescan interval
                         (default there: 100 x the last full run, between 30s and 10m)
  --count N              stop after N runs (with --interval or --watch)
  --watch                sync, then mirror changes as they happen until stopped
  --debounce DURATION    watch mode: quiet period before a batch is synced (default 200ms)
  --log FILE             append every event as JSON Lines to FILE
  --log-rotate daily|hourly  one log file per day/hour: FILE's folder, <name>-YYYY-MM-DD.jsonl
  --log-max-size SIZE    rotate FILE when it grows past SIZE (e.g. 10MB)
  --log-max-files N      rotated files to keep (default 7; with --log-rotate: days/hours)
  --progress / --no-progress  force the progress line on or off (default: on when stderr
                         is a terminal and not --quiet)
`,
  plan: `mimeo plan <source> <replica> [options]

Print the operations a sync would do, in order, and change nothing (same as sync --dry-run).

Options:
${MIRROR_OPTIONS}`,
  manifest: `mimeo manifest <dir> [options]

Hash every file of <dir> and print its manifest (deterministic JSON) on stdout.

Options:
  --out FILE             write the manifest to FILE instead, and print its digest
  --digest               print only the digest (compare two folders without copying them)
  --exclude GLOB         leave out matching paths (repeatable)
  --ignore-file FILE     read patterns from FILE (repeatable)
`,
  verify: `mimeo verify <replica> [options]

Re-hash every file of <replica> and compare it, and every folder and symlink, with the
manifest. Lists every mismatch; exit code 1 if there is any.

Options:
  --manifest FILE        the manifest (default: <replica>.mimeo.json)
  --exclude GLOB         leave out matching paths (repeatable)
  --json                 the report as JSON on stdout
  --token-file FILE      a remote replica's token (default: the MIMEO_TOKEN variable)
  --ca-file FILE         trust these CA certificates (PEM) for a remote replica's HTTPS

A remote replica (https://HOST:PORT/NAME) is re-hashed by its server.
`,
  serve: `mimeo serve <dir> [options]

Serve every folder directly inside <dir> as a replica, reached as http(s)://HOST:PORT/NAME
(a NAME that does not exist yet is created by the first sync into it). Each replica's
manifest is kept beside it in <dir> (NAME.mimeo.json); contents on their way are staged
in <dir>/.mimeo/NAME/. Prints 'listening on URL' first; SIGINT/SIGTERM stop it cleanly.

Options:
  --listen HOST:PORT     where to listen (default 127.0.0.1:8730; port 0 picks a free one)
  --token-file FILE      clients must send this token (its first line); without it only a
                         loopback address may be served
  --tls-cert FILE        serve HTTPS with this certificate (PEM) ...
  --tls-key FILE         ... and key
  --allow-plain-http     serve plain HTTP on a non-loopback address (the token and the
                         contents then cross the network in clear)
  --log FILE             append every event as JSON Lines to FILE
  -q, --quiet / -v, --verbose

Permissions: --allow-net=HOST:PORT --allow-read=<dir>,FILES --allow-write=<dir>.
`,
};

/**
 * Parse a duration: `500ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
 *
 * @example
 * ```ts
 * parseDuration("5m", "--interval"); // 300000
 * ```
 */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) {
    throw new UsageError(`${flag} takes a duration like 30s, 5m, 1h or 500ms, got '${text}'`);
  }
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? "s"]!;
  const ms = Math.round(Number(m[1]) * mult);
  if (!(ms > 0)) throw new UsageError(`${flag} must be greater than zero, got '${text}'`);
  return ms;
}

/** Parse a size: `1048576`, `512K`, `10MB`, `1GiB`. */
export function parseSize(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`${flag} takes a size like 10MB or 512K, got '${text}'`);
  const pow = " kmgt".indexOf((m[2] || " ").toLowerCase());
  const n = Math.round(Number(m[1]) * 1024 ** pow);
  if (!(n > 0)) throw new UsageError(`${flag} must be greater than zero, got '${text}'`);
  return n;
}

function parseCount(text: string, flag: string, min = 1): number {
  if (!/^\d+$/.test(text.trim()) || Number(text) < min) {
    throw new UsageError(
      `${flag} takes a whole number${min ? " of at least " + min : ""}, got '${text}'`,
    );
  }
  return Number(text);
}

const mirrorOptions = {
  exclude: { type: "string", multiple: true },
  "ignore-file": { type: "string", multiple: true },
  "delete-excluded": { type: "boolean" },
  checksum: { type: "boolean" },
  manifest: { type: "string" },
  "max-delete": { type: "string" },
  "allow-empty-source": { type: "boolean" },
  "no-renames": { type: "boolean" },
  "omit-dir-times": { type: "boolean" },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  verbose: { type: "boolean", short: "v" },
  help: { type: "boolean", short: "h" },
  "token-file": { type: "string" },
  "ca-file": { type: "string" },
} as const;

const syncOptions = {
  ...mirrorOptions,
  "dry-run": { type: "boolean", short: "n" },
  interval: { type: "string" },
  count: { type: "string" },
  watch: { type: "boolean" },
  debounce: { type: "string" },
  log: { type: "string" },
  "log-rotate": { type: "string" },
  "log-max-size": { type: "string" },
  "log-max-files": { type: "string" },
  progress: { type: "boolean" },
  "no-progress": { type: "boolean" },
} as const;

function parse<T extends NonNullable<ParseArgsConfig["options"]>>(args: string[], options: T) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (e) {
    const msg = (e as Error).message.split(". To specify a positional")[0].replace(
      /\s*\n\s*/g,
      " ",
    );
    throw new UsageError(`${msg.replace(/\.$/, "")} (see --help)`);
  }
}

function positionals(pos: string[], names: string[], command: string): string[] {
  if (pos.length !== names.length) {
    const want = names.map((n) => `<${n}>`).join(" ");
    throw new UsageError(
      pos.length < names.length
        ? `${command} needs ${want} (see mimeo ${command} --help)`
        : `${command} takes ${want}, got extra argument '${pos[names.length]}'`,
    );
  }
  return pos;
}

function mirrorArgs(
  v: Record<string, string | boolean | string[] | undefined>,
  source: string,
  replica: string,
): MirrorArgs {
  if (v.quiet && v.verbose) throw new UsageError("--quiet and --verbose cannot be used together");
  const out: MirrorArgs = {
    source,
    replica,
    manifest: v.manifest as string | undefined,
    exclude: (v.exclude as string[] | undefined) ?? [],
    ignoreFiles: (v["ignore-file"] as string[] | undefined) ?? [],
    deleteExcluded: !!v["delete-excluded"],
    checksum: !!v.checksum,
    allowEmptySource: !!v["allow-empty-source"],
    renames: !v["no-renames"],
    dirTimes: !v["omit-dir-times"],
    json: !!v.json,
    verbosity: v.quiet ? "quiet" : v.verbose ? "verbose" : "normal",
    tokenFile: v["token-file"] as string | undefined,
    caFile: v["ca-file"] as string | undefined,
  };
  for (const [flag, val] of [["--manifest", out.manifest], ["--source", source]] as const) {
    if (val === "") throw new UsageError(`${flag} needs a non-empty path`);
  }
  const md = v["max-delete"] as string | undefined;
  if (md !== undefined) {
    const m = /^(\d+(?:\.\d+)?)%$/.exec(md.trim());
    if (m) {
      const pct = Number(m[1]);
      if (pct > 100) {
        throw new UsageError(`--max-delete percentage must be at most 100%, got '${md}'`);
      }
      out.maxDeletePercent = pct;
    } else out.maxDelete = parseCount(md, "--max-delete", 0);
  }
  return out;
}

/**
 * Parse `--listen HOST:PORT` (`[::1]:PORT` for IPv6; port 0 picks a free one).
 *
 * @example
 * ```ts
 * parseListen("127.0.0.1:0"); // { hostname: "127.0.0.1", port: 0 }
 * ```
 */
export function parseListen(text: string): { hostname: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new UsageError(`--listen takes HOST:PORT (e.g. 127.0.0.1:8730), got '${text}'`);
  }
  return { hostname: m[1] ?? m[2], port };
}

/** Whether a listen address is on this machine only (loopback). */
export function isLoopback(hostname: string): boolean {
  return hostname === "localhost" || hostname === "::1" || /^127\.\d+\.\d+\.\d+$/.test(hostname);
}

/**
 * Parse a command line (without the program name).
 *
 * @example
 * ```ts
 * parseCommand(["sync", "src", "dst", "--interval", "30s"]);
 * ```
 */
export function parseCommand(argv: string[]): Command {
  if (argv.length === 0) throw new UsageError("missing <source> and <replica> (see --help)");
  if (argv[0] === "--version" || argv[0] === "-V") return { command: "version" };
  if (argv[0] === "--help" || argv[0] === "-h") return { command: "help" };
  let command = "sync" as (typeof COMMANDS)[number];
  let rest = argv;
  if ((COMMANDS as readonly string[]).includes(argv[0])) {
    command = argv[0] as typeof command;
    rest = argv.slice(1);
  }
  switch (command) {
    case "help":
      if (rest[0] && !COMMAND_HELP[rest[0]]) throw new UsageError(`no help for '${rest[0]}'`);
      return { command: "help", topic: rest[0] };
    case "plan": {
      const { values, positionals: pos } = parse(rest, mirrorOptions);
      if (values.help) return { command: "help", topic: "plan" };
      const [s, r] = positionals(pos, ["source", "replica"], "plan");
      return { command: "plan", ...mirrorArgs(values, s, r) };
    }
    case "manifest": {
      const { values, positionals: pos } = parse(rest, {
        out: { type: "string" },
        digest: { type: "boolean" },
        exclude: { type: "string", multiple: true },
        "ignore-file": { type: "string", multiple: true },
        help: { type: "boolean", short: "h" },
      });
      if (values.help) return { command: "help", topic: "manifest" };
      const [dir] = positionals(pos, ["dir"], "manifest");
      if (values.out !== undefined && values.digest) {
        throw new UsageError("--out and --digest cannot be used together");
      }
      return {
        command: "manifest",
        dir,
        out: values.out,
        digestOnly: !!values.digest,
        exclude: values.exclude ?? [],
        ignoreFiles: values["ignore-file"] ?? [],
      };
    }
    case "verify": {
      const { values, positionals: pos } = parse(rest, {
        manifest: { type: "string" },
        exclude: { type: "string", multiple: true },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
        "token-file": { type: "string" },
        "ca-file": { type: "string" },
      });
      if (values.help) return { command: "help", topic: "verify" };
      const [replica] = positionals(pos, ["replica"], "verify");
      return {
        command: "verify",
        replica,
        manifest: values.manifest,
        exclude: values.exclude ?? [],
        json: !!values.json,
        tokenFile: values["token-file"],
        caFile: values["ca-file"],
      };
    }
    case "serve": {
      const { values: v, positionals: pos } = parse(rest, {
        listen: { type: "string" },
        "token-file": { type: "string" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        "allow-plain-http": { type: "boolean" },
        log: { type: "string" },
        quiet: { type: "boolean", short: "q" },
        verbose: { type: "boolean", short: "v" },
        help: { type: "boolean", short: "h" },
      });
      if (v.help) return { command: "help", topic: "serve" };
      const [dir] = positionals(pos, ["dir"], "serve");
      const { hostname, port } = parseListen(v.listen ?? "127.0.0.1:8730");
      if ((v["tls-cert"] === undefined) !== (v["tls-key"] === undefined)) {
        throw new UsageError("--tls-cert and --tls-key go together");
      }
      if (v.quiet && v.verbose) {
        throw new UsageError("--quiet and --verbose cannot be used together");
      }
      return {
        command: "serve",
        dir,
        hostname,
        port,
        tokenFile: v["token-file"],
        tlsCert: v["tls-cert"],
        tlsKey: v["tls-key"],
        allowPlainHttp: !!v["allow-plain-http"],
        log: v.log,
        verbosity: v.quiet ? "quiet" : v.verbose ? "verbose" : "normal",
      };
    }
    case "sync": {
      const { values: v, positionals: pos } = parse(rest, syncOptions);
      if (v.help) return { command: "help", topic: "sync" };
      const [s, r] = positionals(pos, ["source", "replica"], "sync");
      const base = mirrorArgs(v, s, r);
      const intervalMs = v.interval !== undefined
        ? parseDuration(v.interval, "--interval")
        : undefined;
      const count = v.count !== undefined ? parseCount(v.count, "--count") : undefined;
      const watch = !!v.watch;
      const dryRun = !!v["dry-run"];
      if (count !== undefined && intervalMs === undefined && !watch) {
        throw new UsageError("--count needs --interval or --watch");
      }
      if (dryRun && (intervalMs !== undefined || watch)) {
        throw new UsageError("--dry-run cannot be combined with --interval or --watch");
      }
      if (v.debounce !== undefined && !watch) throw new UsageError("--debounce needs --watch");
      const rotate = v["log-rotate"];
      if (rotate !== undefined && rotate !== "daily" && rotate !== "hourly") {
        throw new UsageError(`--log-rotate takes daily or hourly, got '${rotate}'`);
      }
      const logMaxSize = v["log-max-size"] !== undefined
        ? parseSize(v["log-max-size"], "--log-max-size")
        : undefined;
      const logMaxFiles = v["log-max-files"] !== undefined
        ? parseCount(v["log-max-files"], "--log-max-files")
        : undefined;
      if ((rotate || logMaxSize || logMaxFiles) && v.log === undefined) {
        throw new UsageError("--log-rotate, --log-max-size and --log-max-files need --log FILE");
      }
      if (rotate && logMaxSize) {
        throw new UsageError("--log-rotate and --log-max-size cannot be used together");
      }
      if (v.log === "") throw new UsageError("--log needs a non-empty path");
      if (v.progress && v["no-progress"]) {
        throw new UsageError("--progress and --no-progress cannot be used together");
      }
      return {
        command: "sync",
        ...base,
        dryRun,
        intervalMs,
        count,
        watch,
        debounceMs: v.debounce !== undefined ? parseDuration(v.debounce, "--debounce") : 200,
        log: v.log,
        logRotate: rotate as "daily" | "hourly" | undefined,
        logMaxSize,
        logMaxFiles,
        progress: v.progress ? "always" : v["no-progress"] ? "never" : "auto",
      };
    }
  }
}
