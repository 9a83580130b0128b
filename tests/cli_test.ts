/** Command-line surface not covered elsewhere: help, version, and flags run end to end. */
import {
  ageTree,
  assert,
  assertEquals,
  assertMatch,
  assertMirror,
  assertNotMatch,
  jsonLines,
  mimeo,
  tempDir,
  writeTree,
} from "./helpers.ts";

Deno.test("--help, <command> --help, help <command> and --version print to stdout, exit 0", async () => {
  const top = await mimeo(["--help"]);
  assertEquals(top.code, 0);
  assertMatch(top.stdout, /Usage:\n {2}mimeo \[sync\] <source> <replica>/);
  assertMatch(top.stdout, /Exit codes: 0 done; 1 /);
  for (
    const [args, re] of [
      [["sync", "--help"], /--interval DURATION/],
      [["help", "verify"], /Re-hash every file of <replica>/],
      [["plan", "-h"], /change nothing/],
      [["manifest", "--help"], /--digest/],
    ] as const
  ) {
    const r = await mimeo([...args]);
    assertEquals(r.code, 0, r.stderr);
    assertMatch(r.stdout, re);
    assertEquals(r.stderr, "");
  }
  assertEquals((await mimeo(["--version"])).stdout, "mimeo 0.1.0\n");
  const bad = await mimeo(["help", "frobnicate"]);
  assertEquals(bad.code, 2);
  assertMatch(bad.stderr, /no help for 'frobnicate'/);
});

Deno.test("--no-renames copies a moved file instead of renaming it", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "a.bin": new Uint8Array(10_000).fill(5) });
  ageTree(src);
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  Deno.renameSync(`${src}/a.bin`, `${src}/b.bin`);
  const r = await mimeo(["sync", src, dst, "--no-renames", "--json", "-q"]);
  assertEquals(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  assertEquals([s.done.rename, s.done.copy, s.done.delete], [0, 1, 1]);
  assertMirror(src, dst);
});

Deno.test("--ignore-file reads .gitignore-style patterns from a file", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`;
  writeTree(src, { "keep.txt": "k", "skip.tmp": "s", "build/out": "o" });
  Deno.writeTextFileSync(`${d.path}/rules`, "# temporary stuff\n*.tmp\nbuild/\n");
  const r = await mimeo(["sync", src, dst, "--ignore-file", `${d.path}/rules`, "-q"]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals([...Deno.readDirSync(dst)].map((e) => e.name), ["keep.txt"]);
  const missing = await mimeo(["sync", src, dst, "--ignore-file", `${d.path}/nope`]);
  assertEquals(missing.code, 2);
  assertMatch(missing.stderr, /Cannot read ignore file/);
});

Deno.test("--verbose adds debug lines such as the phase timings; the log has them too", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, log = `${d.path}/log.jsonl`;
  writeTree(src, { a: "a" });
  const v = await mimeo(["sync", src, dst, "-v", "--log", log]);
  assertEquals(v.code, 0, v.stderr);
  assertMatch(v.stderr, /run 1: .* -> /);
  assertMatch(v.stderr, /timings \(ms\): \{.*"scan":[\d.]+.*\}; full check/);
  const n = await mimeo(["sync", src, dst]);
  assertNotMatch(n.stderr, /timings/);
  const t = jsonLines(Deno.readTextFileSync(log)).find((e) => e.event === "timings");
  assert(t && typeof (t.ms as Record<string, number>).scan === "number");
});
