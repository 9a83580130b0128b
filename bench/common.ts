/**
 * How the benchmarks launch mimeo: exactly as `deno task mimeo` does (the same permission
 * and V8 flags, read from deno.json), so the figures are those of the shipped command.
 *
 * @module
 */
import { join } from "node:path";

/** The repository root. */
export const REPO_DIR = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
/** mimeo's entry point. */
export const MIMEO_MAIN = join(REPO_DIR, "main.ts");
/** The Deno flags of `deno task mimeo` (between `deno run` and `main.ts`). */
export const MIMEO_FLAGS: string[] = (() => {
  const task: string = JSON.parse(Deno.readTextFileSync(join(REPO_DIR, "deno.json"))).tasks.mimeo;
  const words = task.split(/\s+/);
  return words.slice(words.indexOf("run") + 1, words.indexOf("main.ts"));
})();
