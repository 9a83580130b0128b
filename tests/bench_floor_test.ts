/**
 * The benchmark's floor probe (bench/floor.ts) must stat every entry of both trees once
 * and follow no symlink, or the "Deno floor" it reports would be too low.
 */
import { statWalk } from "../bench/floor.ts";
import { assertEquals, assertMatch, ROOT, tempDir, writeTree } from "./helpers.ts";

const TREE = {
  "a.txt": "a",
  "d/b.txt": "b",
  "d/e/c.txt": "c",
  "empty/": null,
  "d/link-to-e": { link: "e" },
  "loop": { link: "." },
};

Deno.test("floor: statWalk counts every entry once and follows no symlink", async () => {
  await using dir = await tempDir();
  writeTree(dir.path, TREE);
  // a.txt, d, d/b.txt, d/e, d/e/c.txt, empty, d/link-to-e, loop
  assertEquals(statWalk(dir.path), 8);
});

Deno.test("floor: the CLI walks the source here and the replica on a worker", async () => {
  await using dir = await tempDir();
  writeTree(`${dir.path}/src`, TREE);
  writeTree(`${dir.path}/dst`, { "only.txt": "x", "sub/more.txt": "y" });
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", `${ROOT}/bench/floor.ts`, `${dir.path}/src`, `${dir.path}/dst`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 0, text);
  assertMatch(text, /^8 \+ 3 entries stat'ed$/m);
});

Deno.test("calls: bench/calls.ts times each call over every file of the tree", async () => {
  await using dir = await tempDir();
  writeTree(dir.path, TREE);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", `${ROOT}/bench/calls.ts`, dir.path, "2"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 0, text);
  // a.txt, d/b.txt, d/e/c.txt: symlinks and folders are not files
  assertMatch(text, /^3 files; permissions: without -A$/m);
  assertMatch(text, /^pass 2: lstatSync \d+\.\d\d µs, openSync\+close \d+\.\d\d µs$/m);
});
