/**
 * The progress line on a terminal: files and bytes done of total, rate and ETA, on stderr,
 * redrawn at most ten times a second. Absent when stderr is not a terminal or with
 * `--quiet`, unless forced with `--progress`. Never written to stdout.
 *
 * @module
 */
import { formatBytes, setConsoleHooks } from "./log.ts";
import type { ProgressInfo } from "./sync.ts";

const enc = new TextEncoder();

/** A run shorter than this shows no progress line at all. */
export const SHOW_AFTER_MS = 200;
/** An operation's fixed cost, in bytes of copying, for the ETA (~100 µs at ~1 GB/s). */
export const OP_COST_BYTES = 128 * 1024;

/** A progress display. */
export interface Progress {
  update(p: ProgressInfo): void;
  clear(): void;
}

/** Format a duration in seconds as `1h02m`, `3m05s` or `12s`. */
export function formatEta(sec: number): string {
  if (!Number.isFinite(sec) || sec < 0) return "?";
  const s = Math.round(sec);
  if (s >= 3600) {
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

/** The progress text for a state (pure, for tests). */
export function progressText(p: ProgressInfo, elapsedMs: number): string {
  if (p.phase !== "apply") return p.phase === "scan" ? "scanning…" : "hashing…";
  const rate = elapsedMs > 0 ? (p.bytesDone / elapsedMs) * 1000 : 0;
  // ETA over work units: bytes plus a per-operation cost, so thousands of small files
  // ahead of one large file do not promise hours.
  const done = p.bytesDone + p.opsDone * OP_COST_BYTES;
  const total = p.bytesTotal + p.opsTotal * OP_COST_BYTES;
  const eta = done > 0 && elapsedMs > 0
    ? formatEta(((total - done) * elapsedMs) / done / 1000)
    : "?";
  return `${p.opsDone}/${p.opsTotal} ops  ${formatBytes(p.bytesDone)}/${
    formatBytes(p.bytesTotal)
  }  ${formatBytes(Math.round(rate))}/s  ETA ${eta}`;
}

/**
 * Create the progress display for `mode` (`auto`: only on a terminal and not quiet), or
 * `undefined` when it should be off.
 */
export function createProgress(
  mode: "auto" | "always" | "never",
  verbosity: "quiet" | "normal" | "verbose",
  stream: { writeSync(p: Uint8Array): number; isTerminal(): boolean } = Deno.stderr,
): Progress | undefined {
  if (mode === "never") return undefined;
  if (mode === "auto" && (verbosity === "quiet" || !stream.isTerminal())) return undefined;
  let shown = "";
  let lastDraw = -Infinity;
  let runStart = 0;
  let applyStart = 0;
  let latest: ProgressInfo | undefined;
  const write = (s: string) => stream.writeSync(enc.encode(s));
  const draw = () => {
    if (!latest) return;
    const text = progressText(latest, performance.now() - applyStart);
    shown = text;
    write(`\r${text}\x1b[K`);
  };
  const clear = () => {
    if (shown) write("\r\x1b[K");
    shown = "";
  };
  setConsoleHooks({ before: clear, after: () => latest && draw() });
  return {
    update(p) {
      const now = performance.now();
      if (runStart === 0) runStart = now;
      if (p.phase === "apply" && applyStart === 0) applyStart = now;
      latest = p;
      // Quick runs show nothing; longer ones redraw at most ten times a second.
      if (now - runStart < SHOW_AFTER_MS || now - lastDraw < 100) return;
      lastDraw = now;
      draw();
    },
    clear() {
      clear();
      latest = undefined;
      runStart = 0;
      applyStart = 0;
      lastDraw = -Infinity;
    },
  };
}
