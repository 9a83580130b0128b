/**
 * Logging, on LogTape: the engine logs structured events to the `["mimeo"]` category as a
 * library would (nothing is printed unless an application configures sinks); the CLI
 * configures two sinks: human lines on stderr and JSON Lines in a log file (plain, rotated
 * by size, or one file per day/hour).
 *
 * Every event is an object with an `event` name and fields such as `path`, `bytes`,
 * `sha256`; the JSON Lines sink adds `timestamp` and `level`. The field list is in the
 * README.
 *
 * @module
 */
import {
  configureSync,
  disposeSync,
  getLogger,
  type LogLevel,
  type LogRecord,
  type Sink,
  withFilter,
} from "@logtape/logtape";
import { AsyncLocalStorage } from "node:async_hooks";
import { basename, dirname } from "node:path";

/** A structured log event. */
export interface LogEvent {
  event: string;
  path?: string;
  [field: string]: unknown;
}

let logger = getLogger(["mimeo"]);
let fileLogger = getLogger(["mimeo", "file"]);
/** Add fields (e.g. the run number) to every following event. */
export function setLogContext(fields: Record<string, unknown>): void {
  logger = getLogger(["mimeo"]).with(fields);
  fileLogger = getLogger(["mimeo", "file"]).with(fields);
}

/** A receiver of the events logged inside {@linkcode withEventTap}. */
export type EventTap = (level: "debug" | "info" | "warning" | "error", ev: LogEvent) => void;
const taps = new AsyncLocalStorage<EventTap>();

/**
 * Run `fn` with every event it logs (through {@linkcode logEvent}, in its async context)
 * also given to `tap`: the server streams a run's events to the client that asked for it,
 * while runs into other replicas go on at the same time.
 */
export function withEventTap<T>(tap: EventTap, fn: () => T): T {
  return taps.run(tap, fn);
}

/** Log one event at a level. */
export function logEvent(level: "debug" | "info" | "warning" | "error", ev: LogEvent): void {
  logger[level]("{event}", ev);
  taps.getStore()?.(level, ev);
}

/**
 * Log one event to the log file only: for what the console already shows its own way (a
 * run's fatal error is one `mimeo: …` line on stderr).
 */
export function logFileEvent(level: "debug" | "info" | "warning" | "error", ev: LogEvent): void {
  fileLogger[level]("{event}", ev);
}

/** How log files are kept. */
export interface LogFileOptions {
  /** The log file (with rotation by time: its folder and name prefix). */
  path: string;
  /** Start a new file every day or hour (`<name>-YYYY-MM-DD.log` …). */
  rotate?: "daily" | "hourly";
  /** Rotate by size: start a new file past this many bytes. */
  maxSize?: number;
  /**
   * With `maxSize`: how many rotated files to keep; with `rotate`: files older than this
   * many intervals are deleted.
   * @default 7
   */
  maxFiles?: number;
}

/** Options for {@linkcode configureLogging}. */
export interface LoggingOptions {
  /** Console verbosity. */
  console: "quiet" | "normal" | "verbose";
  logFile?: LogFileOptions;
  /** Where console lines go. @default Deno.stderr */
  stream?: { writeSync(p: Uint8Array): number };
}

const enc = new TextEncoder();

/** Format one record as a JSON Lines row: `timestamp`, `level`, then the event's fields. */
export function jsonLine(record: LogRecord): string {
  return JSON.stringify({
    timestamp: new Date(record.timestamp).toISOString(),
    level: record.level,
    ...record.properties,
  }) + "\n";
}

/** Human-readable size, e.g. `1.5 MiB`. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** One human line for an event (without the newline). */
export function humanLine(level: LogLevel, p: Record<string, unknown>): string {
  return printable(lineOf(level, p));
}

/**
 * A console line with its control characters shown as rsync shows them (`\#012` for a
 * newline): a name holding a newline stays on one line, and one holding an escape sequence
 * cannot drive the terminal. The JSON log keeps names exact.
 */
export function printable(line: string): string {
  return line.replace(
    // deno-lint-ignore no-control-regex
    /[\x00-\x1f\x7f]/g,
    (c) => `\\#${c.charCodeAt(0).toString(8).padStart(3, "0")}`,
  );
}

function lineOf(level: LogLevel, p: Record<string, unknown>): string {
  const path = p.path !== undefined ? String(p.path) : "";
  const ev = String(p.event);
  switch (ev) {
    case "copy":
    case "update":
      return `${ev.padEnd(7)} ${path} (${formatBytes(Number(p.bytes ?? 0))})`;
    case "rename":
      return `rename  ${p.from} -> ${path}`;
    case "symlink":
      return `symlink ${path} -> ${p.target}`;
    case "meta":
      return `meta    ${path}${p.mode ? ` mode ${p.mode}` : ""}${
        p.mtime ? ` mtime ${p.mtime}` : ""
      }`;
    case "mkdir":
    case "delete":
    case "rmdir":
    case "dirtime":
      return `${ev.padEnd(7)} ${path}${ev === "delete" ? "" : "/"}`;
    case "error":
      return `error: ${p.op ? `${p.op} ` : ""}${path ? `'${path}': ` : ""}${p.error}`;
    case "summary":
      return String(p.text ?? "");
    default: {
      const prefix = level === "error" ? "error: " : level === "warning" ? "warning: " : "";
      return `${prefix}${p.message ?? ev}${path && !p.message ? ` ${path}` : ""}`;
    }
  }
}

/** A console sink that buffers lines and writes them in batches to a stream. */
export function bufferedConsoleSink(
  stream: { writeSync(p: Uint8Array): number },
): Sink & { flush(): void } {
  let buf: string[] = [];
  let size = 0;
  let last = performance.now();
  const flush = () => {
    if (!buf.length) return;
    consoleHooks?.before();
    const data = enc.encode(buf.join(""));
    buf = [];
    size = 0;
    let off = 0;
    while (off < data.length) off += stream.writeSync(data.subarray(off));
    last = performance.now();
    consoleHooks?.after();
  };
  const sink = (record: LogRecord) => {
    const line = humanLine(record.level, record.properties) + "\n";
    buf.push(line);
    size += line.length;
    if (record.level === "error" || size > 32768 || performance.now() - last > 100) flush();
  };
  return Object.assign(sink, { flush });
}

let consoleSink: (Sink & { flush(): void }) | undefined;
let consoleHooks: { before(): void; after(): void } | undefined;

/** Let a progress line get out of the way of console lines (and come back after them). */
export function setConsoleHooks(hooks: { before(): void; after(): void } | undefined): void {
  consoleHooks = hooks;
}

/** Flush buffered console lines (at the end of a run, before a progress line, on exit). */
export function flushConsole(): void {
  consoleSink?.flush();
}

/**
 * Configure LogTape for the CLI. Returns a function that flushes and closes the sinks.
 *
 * @example
 * ```ts
 * const close = await configureLogging({ console: "normal", logFile: { path: "mimeo.log" } });
 * try { … } finally { close(); }
 * ```
 */
export async function configureLogging(o: LoggingOptions): Promise<() => void> {
  const sinks: Record<string, Sink> = {};
  const names = ["console"];
  if (o.logFile) {
    // Loaded only for a log file: the file sinks (and the node:fs they pull in) add ~10 ms
    // to every start-up otherwise.
    const { getFileSink, getRotatingFileSink, getTimeRotatingFileSink } = await import(
      "@logtape/file"
    );
    const f = o.logFile;
    const common = { formatter: jsonLine, bufferSize: 16384, flushInterval: 1000 };
    if (f.rotate) {
      const prefix = basename(f.path).replace(/\.(jsonl|log)$/, "");
      const pad = (n: number) => String(n).padStart(2, "0");
      sinks.file = getTimeRotatingFileSink({
        ...common,
        directory: dirname(f.path),
        interval: f.rotate,
        filename: (d) =>
          `${prefix}-${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}${
            f.rotate === "hourly" ? `-${pad(d.getUTCHours())}` : ""
          }.jsonl`,
        maxAgeMs: (f.maxFiles ?? 7) * (f.rotate === "hourly" ? 3600_000 : 86400_000),
      });
    } else if (f.maxSize) {
      sinks.file = getRotatingFileSink(f.path, {
        ...common,
        // The size is checked when the buffer is flushed: keep it small against maxSize.
        bufferSize: Math.max(1, Math.min(common.bufferSize, Math.floor(f.maxSize / 8))),
        maxSize: f.maxSize,
        maxFiles: f.maxFiles ?? 7,
      });
    } else {
      sinks.file = getFileSink(f.path, common);
    }
    names.push("file");
  }
  consoleSink = bufferedConsoleSink(o.stream ?? Deno.stderr);
  const consoleLevel: LogLevel = o.console === "quiet"
    ? "warning"
    : o.console === "verbose"
    ? "debug"
    : "info";
  sinks.console = withFilter(consoleSink, consoleLevel);
  configureSync({
    reset: true,
    sinks,
    loggers: [
      // Without a log file, events below the console's level are dropped by the logger,
      // before a record is built: 0.25 µs an event instead of 5 (one per operation).
      { category: ["mimeo"], lowestLevel: o.logFile ? "debug" : consoleLevel, sinks: names },
      {
        category: ["mimeo", "file"],
        lowestLevel: "debug",
        sinks: o.logFile ? ["file"] : [],
        parentSinks: "override",
      },
      { category: ["logtape", "meta"], lowestLevel: "error", sinks: [] },
    ],
  });
  return () => {
    consoleSink?.flush();
    disposeSync();
    consoleSink = undefined;
  };
}
