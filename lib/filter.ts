/**
 * Exclusion rules: `--exclude` globs and ignore files, both with `.gitignore` semantics,
 * matched by the `ignore` package (the matcher ESLint and Prettier use). The package is
 * loaded only when there are rules: it adds ~10 ms to every start-up otherwise.
 *
 * @module
 */
import { UsageError } from "./errors.ts";
import type { PathFilter } from "./scan.ts";

/** Name of the ignore file read from the source root when present. */
export const IGNORE_FILE_NAME = ".mimeoignore";

/** Options for {@linkcode buildFilter}. */
export interface FilterOptions {
  /** Patterns with `.gitignore` syntax (`*.tmp`, `build/`, `!keep.tmp`, `/top-only`). */
  patterns?: string[];
  /** Files holding more patterns, one per line (`#` comments, blank lines ignored). */
  ignoreFiles?: string[];
  /**
   * Read `<source>/.mimeoignore` when it exists.
   * @default undefined
   */
  sourceRoot?: string;
}

/**
 * Build a path filter, or `undefined` when there are no rules (the common fast path).
 *
 * @example
 * ```ts
 * const f = (await buildFilter({ patterns: ["*.log", "cache/"] }))!;
 * f("a/x.log", false); // true
 * ```
 */
export function buildFilter(options: FilterOptions): Promise<PathFilter | undefined> {
  try {
    return filterOf(filterRules(options));
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * The rules of {@linkcode buildFilter}'s options: the patterns, then each ignore file's
 * text (what a remote replica's server is given, to build the same filter).
 */
export function filterRules(options: FilterOptions): string[] {
  const rules: string[] = [];
  for (const p of options.patterns ?? []) {
    if (p.trim() === "") throw new UsageError("--exclude needs a non-empty pattern");
    rules.push(p);
  }
  const files = [...(options.ignoreFiles ?? [])];
  if (options.sourceRoot) {
    const auto = `${options.sourceRoot}/${IGNORE_FILE_NAME}`;
    try {
      if (Deno.statSync(auto).isFile) files.push(auto);
    } catch { /* no ignore file: nothing to add */ }
  }
  for (const f of files) {
    let text: string;
    try {
      text = Deno.readTextFileSync(f);
    } catch (e) {
      throw new UsageError(`Cannot read ignore file '${f}': ${(e as Error).message}`);
    }
    rules.push(text);
  }
  return rules;
}

/** The filter of a list of rules (patterns or whole ignore-file texts); none for no rules. */
export async function filterOf(rules: string[]): Promise<PathFilter | undefined> {
  if (rules.length === 0) return undefined;
  const { default: ignore } = await import("ignore");
  // Case-sensitive, as rsync's patterns and git's on Linux: the package ignores case by
  // default, which left `KEEP.LOG` out of a mirror excluding `*.log`.
  const ig = ignore({ allowRelativePaths: false, ignorecase: false });
  for (const r of rules) ig.add(r);
  return (path, isDir) => ig.ignores(isDir ? `${path}/` : path);
}
