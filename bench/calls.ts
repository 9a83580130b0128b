/**
 * What one file-system call costs a Deno program, per call, over every file of a tree: the
 * figures behind bench/README's "What a Deno program pays per entry" table. Run it under
 * the permissions to compare: mimeo's, and `-A` (which mimeo never asks for) to see what
 * Deno's permission layer adds (for `open`, a `readlink` per path component, skipped only
 * when every permission is granted).
 *
 * Usage:
 *   deno run --allow-read bench/calls.ts TREE [PASSES]
 *   deno run -A bench/calls.ts TREE [PASSES]
 *
 * @module
 */

/** Every regular file under `root`, as absolute paths. */
export function filesUnder(root: string): string[] {
  const files: string[] = [];
  const stack = [root];
  while (stack.length) {
    const dir = stack.pop()!;
    for (const d of Deno.readDirSync(dir)) {
      const p = `${dir}/${d.name}`;
      if (d.isDirectory) stack.push(p);
      else if (d.isFile) files.push(p);
    }
  }
  return files;
}

/** Microseconds per call of each measured call over `files`, one pass. */
export function measureCalls(files: string[]): Record<string, number> {
  const per = (f: (p: string) => void) => {
    const t = performance.now();
    for (const p of files) f(p);
    return ((performance.now() - t) * 1000) / Math.max(files.length, 1);
  };
  return {
    "lstatSync": per((p) => Deno.lstatSync(p)),
    "openSync+close": per((p) => Deno.openSync(p).close()),
  };
}

if (import.meta.main) {
  const [tree, passes = "3"] = Deno.args;
  if (!tree) {
    console.error("usage: deno run --allow-read bench/calls.ts TREE [PASSES]");
    Deno.exit(2);
  }
  const all = Deno.permissions.querySync({ name: "run" }).state === "granted" &&
    Deno.permissions.querySync({ name: "ffi" }).state === "granted";
  const files = filesUnder(tree);
  console.log(`${files.length} files; permissions: ${all ? "all (-A)" : "without -A"}`);
  for (let i = 1; i <= Number(passes); i++) {
    const r = measureCalls(files);
    console.log(
      `pass ${i}: ${Object.entries(r).map(([k, v]) => `${k} ${v.toFixed(2)} µs`).join(", ")}`,
    );
  }
}
