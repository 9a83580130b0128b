/** Log files: size rotation and one file per day, as a long-running service needs. */
import { assert, assertEquals, jsonLines, mimeo, tempDir, writeTree } from "./helpers.ts";
import { humanLine, jsonLine } from "../lib/log.ts";

Deno.test("--log-max-size rotates the log and keeps --log-max-files files", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, logs = `${d.path}/logs`;
  writeTree(src, Object.fromEntries(Array.from({ length: 400 }, (_, i) => [`f${i}`, `${i}`])));
  Deno.mkdirSync(logs);
  const r = await mimeo([
    "sync",
    src,
    `${d.path}/dst`,
    "-q",
    "--log",
    `${logs}/m.jsonl`,
    "--log-max-size",
    "8KB",
    "--log-max-files",
    "2",
  ]);
  assertEquals(r.code, 0, r.stderr);
  const files = [...Deno.readDirSync(logs)].map((e) => e.name).sort();
  assert(files.includes("m.jsonl") && files.includes("m.jsonl.1"), files.join(","));
  assert(files.length <= 3, `at most the current file and 2 rotated ones: ${files}`);
  for (const f of files) {
    const text = Deno.readTextFileSync(`${logs}/${f}`);
    assert(text.length <= 8192 + 1024 + 2048, `${f} is ${text.length} bytes`);
    for (const e of jsonLines(text)) assert(typeof e.event === "string");
  }
});

Deno.test("--log-rotate daily writes <name>-YYYY-MM-DD.jsonl in the log's folder", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, logs = `${d.path}/logs`;
  writeTree(src, { a: "a" });
  Deno.mkdirSync(logs);
  const r = await mimeo([
    "sync",
    src,
    `${d.path}/dst`,
    "-q",
    "--log",
    `${logs}/mimeo.jsonl`,
    "--log-rotate",
    "daily",
  ]);
  assertEquals(r.code, 0, r.stderr);
  const today = new Date().toISOString().slice(0, 10);
  const files = [...Deno.readDirSync(logs)].map((e) => e.name);
  assertEquals(files, [`mimeo-${today}.jsonl`]);
  const events = jsonLines(Deno.readTextFileSync(`${logs}/${files[0]}`));
  assert(events.some((e) => e.event === "copy" && e.path === "a"));
  assert(events.some((e) => e.event === "summary"));
});

Deno.test("jsonLine() and humanLine() format events", () => {
  const rec = {
    category: ["mimeo"],
    level: "info" as const,
    message: ["copy"],
    rawMessage: "{event}",
    timestamp: Date.UTC(2026, 0, 2, 3, 4, 5, 6),
    properties: { event: "copy", path: "a b.txt", bytes: 2048, sha256: "ab", run: 1 },
  };
  assertEquals(
    JSON.parse(jsonLine(rec)),
    {
      timestamp: "2026-01-02T03:04:05.006Z",
      level: "info",
      event: "copy",
      path: "a b.txt",
      bytes: 2048,
      sha256: "ab",
      run: 1,
    },
  );
  assertEquals(humanLine("info", rec.properties), "copy    a b.txt (2.0 KiB)");
  assertEquals(humanLine("info", { event: "rename", from: "x", path: "y" }), "rename  x -> y");
  assertEquals(
    humanLine("error", { event: "error", op: "copy", path: "p", error: "No space left on device" }),
    "error: copy 'p': No space left on device",
  );
});

Deno.test("console lines show control characters in names as rsync does; the JSON log keeps them", async () => {
  assertEquals(
    humanLine("info", { event: "copy", path: "a\nb\x1b[31m", bytes: 1 }),
    "copy    a\\#012b\\#033[31m (1 B)",
  );
  await using d = await tempDir();
  const src = `${d.path}/src`, log = `${d.path}/m.jsonl`;
  writeTree(src, { "two\nlines": "x", "tab\there": "y" });
  const r = await mimeo(["sync", src, `${d.path}/dst`, "--log", log]);
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stderr.trim().split("\n");
  assert(lines.includes("copy    two\\#012lines (1 B)"), r.stderr);
  assert(lines.includes("copy    tab\\#011here (1 B)"), r.stderr);
  const paths = jsonLines(Deno.readTextFileSync(log)).map((e) => e.path);
  assert(paths.includes("two\nlines") && paths.includes("tab\there"), JSON.stringify(paths));
  assertEquals(Deno.readTextFileSync(`${d.path}/dst/two\nlines`), "x");
});

Deno.test("a run refused after the log is open says why in the log file too, once on the console", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, dst = `${d.path}/dst`, log = `${d.path}/m.jsonl`;
  writeTree(src, { a: "a", b: "b", c: "c" });
  assertEquals((await mimeo(["sync", src, dst, "-q"])).code, 0);
  Deno.removeSync(`${src}/a`);
  Deno.removeSync(`${src}/b`);
  const r = await mimeo(["sync", src, dst, "--max-delete", "1", "--log", log]);
  assertEquals(r.code, 3, r.stderr);
  assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
  const failed = jsonLines(Deno.readTextFileSync(log)).filter((e) => e.event === "run-failed");
  assertEquals(failed.length, 1, Deno.readTextFileSync(log));
  assertEquals(failed[0].level, "error");
  assertEquals(failed[0].code, "RefusedError");
  assertEquals(failed[0].exitCode, 3);
  assert(
    String(failed[0].error).startsWith("refusing to delete 2 entries"),
    String(failed[0].error),
  );
});
