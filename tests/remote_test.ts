/**
 * Remote replicas end to end: a real `mimeo serve` on a free loopback port, the CLI run
 * against it as a user would, and hostile requests sent to it directly.
 */
import {
  assert,
  assertEquals,
  assertMatch,
  assertMirror,
  assertNotMatch,
  cliText,
  exists,
  jsonLines,
  mimeo,
  spawnMimeo,
  tempDir,
  writeTree,
} from "./helpers.ts";
import { CLIENT_PERMS, selfSignedCert, startServer } from "./remote_helpers.ts";

const P = { permissions: CLIENT_PERMS };
const PROTO = { "mimeo-protocol": "1" };

function randomBytes(n: number): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(b.subarray(i, Math.min(n, i + 65536)));
  return b;
}

function summary(stdout: string): Record<string, unknown> {
  const lines = jsonLines(stdout);
  return lines[lines.length - 1];
}

/** Open a raw session (holding the replica's lock); returns its id and a closer. */
async function openSession(url: string, name: string, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}/v1/${name}/open`, {
    method: "POST",
    headers: { ...PROTO, ...headers, "content-type": "application/json" },
    body: JSON.stringify({
      dryRun: false,
      checksum: false,
      exclude: [],
      rootMode: 0o755,
      client: "test",
    }),
  });
  assertEquals(res.status, 200, await (res.ok ? Promise.resolve("") : res.text()));
  const reader = res.body!.getReader();
  let text = "";
  while (!text.includes("\n")) {
    const r = await reader.read();
    if (r.done) break;
    text += new TextDecoder().decode(r.value);
  }
  const state = JSON.parse(text.slice(0, text.indexOf("\n")));
  return {
    id: state.session as string,
    state,
    async close() {
      await reader.cancel();
    },
  };
}

Deno.test("remote sync mirrors a tree exactly (bytes, empty folders, symlinks, modes, times); a no-op sends nothing", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  writeTree(src, {
    "a/b/c.txt": "hello",
    "a/empty/": null,
    "top.bin": randomBytes(300_000),
    "link": { link: "a/b/c.txt" },
    "dangling": { link: "nowhere" },
  });
  Deno.chmodSync(`${src}/a/b/c.txt`, 0o600);
  Deno.chmodSync(`${src}/a/empty`, 0o700);
  await using server = await startServer(srv);
  const r = await mimeo(["sync", src, `${server.url}/r`, "--json"], P);
  assertEquals(r.code, 0, cliText(r));
  assertMirror(src, `${srv}/r`);
  assert(exists(`${srv}/r.mimeo.json`), "manifest beside the replica in DIR");
  assert(!exists(`${srv}/r/.mimeo`), "nothing of mimeo's inside the replica");
  const again = await mimeo(["sync", src, `${server.url}/r`, "--json"], P);
  assertEquals(again.code, 0, cliText(again));
  const s = summary(again.stdout);
  assertEquals(s.bytes, 0);
  assertEquals(s.planned, 0);
  const v = await mimeo(["verify", `${server.url}/r`], P);
  assertEquals(v.code, 0, cliText(v));
  assertMatch(v.stdout, /verify: ok, 7 entries match r\.mimeo\.json/);
});

Deno.test("remote sync undoes changes made on the server behind mimeo's back", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  writeTree(src, { "keep.txt": "keep", "edit.txt": "original", "dir/x.txt": "x" });
  await using server = await startServer(srv);
  assertEquals((await mimeo(["sync", src, `${server.url}/r`, "-q"], P)).code, 0);
  const rep = `${srv}/r`;
  Deno.writeTextFileSync(`${rep}/edit.txt`, "tampered"); // same size
  Deno.removeSync(`${rep}/keep.txt`);
  Deno.writeTextFileSync(`${rep}/extra.txt`, "extra");
  Deno.chmodSync(`${rep}/dir/x.txt`, 0o666);
  const r = await mimeo(["sync", src, `${server.url}/r`], P);
  assertEquals(r.code, 0, cliText(r));
  assertMirror(src, rep);
  assertMatch(r.stderr, /delete +extra\.txt/);
});

Deno.test("remote: a renamed folder and a duplicated file send no content; a large file's edit sends only its changed chunks", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  const big = randomBytes(12 * 1024 * 1024);
  writeTree(src, { "data/big.bin": big, "data/small.txt": "small", "other.txt": "other" });
  await using server = await startServer(srv);
  const url = `${server.url}/r`;
  const first = await mimeo(["sync", src, url, "--json"], P);
  assertEquals(first.code, 0, cliText(first));
  assert((summary(first.stdout).bytes as number) >= big.length);

  // 1 KiB changed in the middle of 12 MiB: a chunk or two cross the network.
  const f = Deno.openSync(`${src}/data/big.bin`, { write: true });
  f.seekSync(6 * 1024 * 1024, Deno.SeekMode.Start);
  f.writeSync(randomBytes(1024));
  f.close();
  const edit = await mimeo(["sync", src, url, "--json"], P);
  assertEquals(edit.code, 0, cliText(edit));
  const se = summary(edit.stdout);
  assertEquals((se.done as Record<string, number>).update, 1);
  assert((se.bytes as number) < 600 * 1024, `sent ${se.bytes} bytes for a 1 KiB edit`);
  assertMirror(src, `${srv}/r`);
  // 100 bytes inserted at 3 MiB: every byte after it moves, and still only chunks near it go.
  const now = Deno.readFileSync(`${src}/data/big.bin`);
  const ins = new Uint8Array(now.length + 100);
  ins.set(now.subarray(0, 3 << 20));
  ins.set(randomBytes(100), 3 << 20);
  ins.set(now.subarray(3 << 20), (3 << 20) + 100);
  Deno.writeFileSync(`${src}/data/big.bin`, ins);
  const shifted = await mimeo(["sync", src, url, "--json"], P);
  assertEquals(shifted.code, 0, cliText(shifted));
  const sh = summary(shifted.stdout).bytes as number;
  assert(sh < 600 * 1024, `sent ${sh} bytes for a 100-byte insertion`);
  assertMirror(src, `${srv}/r`);

  Deno.renameSync(`${src}/data`, `${src}/moved`);
  Deno.copyFileSync(`${src}/moved/big.bin`, `${src}/copy-of-big.bin`);
  const mv = await mimeo(["sync", src, url, "--json"], P);
  assertEquals(mv.code, 0, cliText(mv));
  const sm = summary(mv.stdout);
  assertEquals(sm.bytes, 0, "nothing sent for a rename and a duplicate");
  assertEquals((sm.done as Record<string, number>).rename, 1);
  assertEquals((sm.done as Record<string, number>).copy, 1);
  assertMirror(src, `${srv}/r`);
  const v = await mimeo(["verify", url], P);
  assertEquals(v.code, 0, cliText(v));
});

Deno.test("remote: without the right token nothing is done and nothing is revealed", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(`${srv}/exists`, { recursive: true });
  writeTree(src, { "a.txt": "a" });
  Deno.writeTextFileSync(`${d.path}/token`, "correct-horse-battery\n");
  Deno.writeTextFileSync(`${d.path}/wrong`, "wrong\n");
  await using server = await startServer(srv, ["--token-file", `${d.path}/token`]);
  const none = await mimeo(["sync", src, `${server.url}/r`], P);
  assertEquals(none.code, 2, cliText(none));
  assertMatch(none.stderr, /refused the token/);
  const wrong = await mimeo(["sync", src, `${server.url}/r`, "--token-file", `${d.path}/wrong`], P);
  assertEquals(wrong.code, 2, cliText(wrong));
  assert(!exists(`${srv}/r`), "nothing created without a valid token");
  // The same answer whatever the request names.
  const a = await fetch(`${server.url}/v1/exists/open`, { method: "POST", headers: PROTO });
  const b = await fetch(`${server.url}/v1/nothing-here/open`, { method: "POST", headers: PROTO });
  const c = await fetch(`${server.url}/v1`, { headers: { authorization: "Bearer wrong" } });
  assertEquals([a.status, b.status, c.status], [401, 401, 401]);
  assertEquals(await a.text(), await b.text());
  await c.body?.cancel();
  const ok = await mimeo(["sync", src, `${server.url}/r`], {
    ...P,
    env: { MIMEO_TOKEN: "correct-horse-battery" },
  });
  assertEquals(ok.code, 0, cliText(ok));
  assertMirror(src, `${srv}/r`);
});

Deno.test("remote: traversal through names, encoded names, paths and planted symlinks reaches nothing outside", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`, outside = `${d.path}/outside`;
  Deno.mkdirSync(outside);
  Deno.mkdirSync(`${srv}/r`, { recursive: true });
  Deno.writeTextFileSync(`${d.path}/secret.txt`, "secret");
  await using server = await startServer(srv);
  for (
    const name of ["..", "%2e%2e", "%2E%2E%2Fsecret.txt", "a%2Fb", ".mimeo", "r.mimeo.json", "%00"]
  ) {
    const res = await fetch(`${server.url}/v1/${name}/open`, {
      method: "POST",
      headers: { ...PROTO, "content-type": "application/json" },
      body: JSON.stringify({
        dryRun: true,
        checksum: false,
        exclude: [],
        rootMode: 493,
        client: "t",
      }),
    });
    assert(res.status === 404 || res.status === 400, `${name}: ${res.status}`);
    const body = await res.text();
    assertNotMatch(body, /secret|outside|\/tmp\//, `${name}: ${body}`);
  }
  // A symlink in DIR is not a replica.
  Deno.symlinkSync(outside, `${srv}/planted`);
  writeTree(src, { "x.txt": "x", "link/inner.txt": "inner" });
  const viaLink = await mimeo(["sync", src, `${server.url}/planted`], P);
  assert(viaLink.code !== 0, cliText(viaLink));
  assertEquals([...Deno.readDirSync(outside)].length, 0);
  // A symlink planted inside the replica where the source has a folder: never written through.
  Deno.symlinkSync(outside, `${srv}/r/link`);
  const r = await mimeo(["sync", src, `${server.url}/r`], P);
  assertEquals(r.code, 0, cliText(r));
  assertEquals([...Deno.readDirSync(outside)].length, 0, "nothing written outside");
  assertMirror(src, `${srv}/r`);
  // Operations naming paths outside the replica are refused whole.
  const s = await openSession(server.url, "r");
  try {
    for (const path of ["../escape.txt", "/etc/escape.txt", "a//b", "a/./b", "a\u0000b", "x/"]) {
      const res = await fetch(`${server.url}/v1/r/apply`, {
        method: "POST",
        headers: { ...PROTO, "mimeo-session": s.id, "content-type": "application/json" },
        body: JSON.stringify({
          ops: [{ op: "delete", path, kind: "file" }],
          source: [],
          recipes: {},
          root: { mode: 493, mtime: 0 },
          dirTimes: true,
          exclude: [],
        }),
      });
      assertEquals(res.status, 400, path);
      await res.body?.cancel();
    }
  } finally {
    await s.close();
  }
  assert(exists(`${d.path}/secret.txt`));
  assertMirror(src, `${srv}/r`);
});

Deno.test("remote: malformed, truncated, oversized and mismatched requests get a 4xx and leave nothing behind", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  writeTree(src, { "a.txt": "a" });
  await using server = await startServer(srv);
  const bad = await fetch(`${server.url}/v1/r/open`, {
    method: "POST",
    headers: PROTO,
    body: "{not json",
  });
  assertEquals(bad.status, 400);
  assertMatch(await bad.text(), /not valid JSON/);
  const s = await openSession(server.url, "r");
  const H = { ...PROTO, "mimeo-session": s.id };
  try {
    const need = await fetch(`${server.url}/v1/r/need`, {
      method: "POST",
      headers: H,
      body: JSON.stringify({ items: [{ sha256: "zz" }] }),
    });
    assertEquals(need.status, 400);
    await need.body?.cancel();
    // A pack frame cut short.
    const trunc = await fetch(`${server.url}/v1/r/pack`, {
      method: "POST",
      headers: H,
      body: new Uint8Array(40),
    });
    assertEquals(trunc.status, 400);
    await trunc.body?.cancel();
    // A frame whose bytes do not match its hash is rejected, not stored.
    const frame = new Uint8Array(36 + 5);
    frame.fill(7, 0, 32);
    new DataView(frame.buffer).setUint32(32, 5);
    frame.set(new TextEncoder().encode("hello"), 36);
    const mis = await fetch(`${server.url}/v1/r/pack`, { method: "POST", headers: H, body: frame });
    assertEquals(mis.status, 200);
    assertEquals((await mis.json()).rejected.length, 1);
    // A whole content that does not match its hash.
    const sha = "ab".repeat(32);
    const blob = await fetch(`${server.url}/v1/r/blob/${sha}?size=5&offset=0`, {
      method: "PUT",
      headers: H,
      body: "hello",
    });
    assertEquals(blob.status, 422);
    await blob.body?.cancel();
    // Longer than announced.
    const long = await fetch(`${server.url}/v1/r/blob/${"cd".repeat(32)}?size=2&offset=0`, {
      method: "PUT",
      headers: H,
      body: "hello",
    });
    assertEquals(long.status, 409);
    await long.body?.cancel();
    // Too large a body.
    const huge = await fetch(`${server.url}/v1/r/pack`, {
      method: "POST",
      headers: { ...H, "content-length": String(2 ** 40) },
      body: new Uint8Array(10),
    }).catch(() => undefined);
    if (huge) {
      assert(huge.status === 413 || huge.status === 400, String(huge.status));
      await huge.body?.cancel();
    }
    // Unknown session.
    const nos = await fetch(`${server.url}/v1/r/need`, {
      method: "POST",
      headers: { ...PROTO, "mimeo-session": "nope" },
      body: "{}",
    });
    assertEquals(nos.status, 409);
    await nos.body?.cancel();
  } finally {
    await s.close();
  }
  const staged = [...Deno.readDirSync(`${srv}/.mimeo/r/stage`)].filter((e) =>
    !e.name.endsWith(".part")
  );
  assertEquals(staged.map((e) => e.name), [], "nothing unchecked staged");
  // The server still serves.
  const r = await mimeo(["sync", src, `${server.url}/r`], P);
  assertEquals(r.code, 0, cliText(r));
  assertMirror(src, `${srv}/r`);
});

Deno.test("remote: a second client at once gets exit 75; the first one's end frees the replica", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  writeTree(src, { "a.txt": "a" });
  await using server = await startServer(srv);
  const s = await openSession(server.url, "r");
  const busy = await mimeo(["sync", src, `${server.url}/r`], P);
  assertEquals(busy.code, 75, cliText(busy));
  assertMatch(busy.stderr, /another mimeo run is using/);
  await s.close();
  // The server sees the session's stream close and lets go of the lock.
  let r = await mimeo(["sync", src, `${server.url}/r`], P);
  for (let i = 0; i < 20 && r.code === 75; i++) {
    await new Promise((res) => setTimeout(res, 100));
    r = await mimeo(["sync", src, `${server.url}/r`], P);
  }
  assertEquals(r.code, 0, cliText(r));
  assertMirror(src, `${srv}/r`);
});

Deno.test("remote: HTTPS with a self-signed certificate made in the test", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  writeTree(src, { "a.txt": "a", "b/c.txt": "c" });
  const { cert, key } = await selfSignedCert(d.path);
  await using server = await startServer(srv, ["--tls-cert", cert, "--tls-key", key]);
  assertMatch(server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
  const untrusted = await mimeo(["sync", src, `${server.url}/r`], P);
  assertEquals(untrusted.code, 69, cliText(untrusted));
  assertMatch(untrusted.stderr, /cannot reach/);
  assertEquals(untrusted.stderr.trim().split("\n").length, 1, "one line");
  const r = await mimeo(["sync", src, `${server.url}/r`, "--ca-file", cert], P);
  assertEquals(r.code, 0, cliText(r));
  assertMirror(src, `${srv}/r`);
});

Deno.test("remote: --max-delete and the empty-source refusal touch nothing, as locally", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  writeTree(src, { "a.txt": "a", "b.txt": "b", "c.txt": "c" });
  await using server = await startServer(srv);
  const url = `${server.url}/r`;
  assertEquals((await mimeo(["sync", src, url, "-q"], P)).code, 0);
  Deno.removeSync(`${src}/a.txt`);
  Deno.removeSync(`${src}/b.txt`);
  const md = await mimeo(["sync", src, url, "--max-delete", "1"], P);
  assertEquals(md.code, 3, cliText(md));
  assert(exists(`${srv}/r/a.txt`) && exists(`${srv}/r/b.txt`));
  Deno.removeSync(`${src}/c.txt`);
  const empty = await mimeo(["sync", src, url], P);
  assertEquals(empty.code, 3, cliText(empty));
  assertMatch(empty.stderr, /is empty/);
  assert(exists(`${srv}/r/c.txt`));
  const plan = await mimeo(["plan", src, url], P);
  assertEquals(plan.code, 3, cliText(plan));
});

Deno.test("remote: a dry run lists the plan and creates nothing on the server", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  writeTree(src, { "a.txt": "a", "dir/b.txt": "b" });
  await using server = await startServer(srv);
  const r = await mimeo(["plan", src, `${server.url}/new`], P);
  assertEquals(r.code, 0, cliText(r));
  assertMatch(r.stdout, /copy +dir\/b\.txt/);
  assert(!exists(`${srv}/new`) && !exists(`${srv}/new.mimeo.json`), "nothing created");
});

Deno.test("remote verify reports a corrupted file and shows no server path", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  writeTree(src, { "a.txt": "aaaa", "b.txt": "bbbb" });
  await using server = await startServer(srv);
  assertEquals((await mimeo(["sync", src, `${server.url}/r`, "-q"], P)).code, 0);
  Deno.writeTextFileSync(`${srv}/r/a.txt`, "AAAA");
  const v = await mimeo(["verify", `${server.url}/r`], P);
  assertEquals(v.code, 1, cliText(v));
  assertMatch(v.stdout, /a\.txt/);
  assert(!v.stdout.includes(srv) && !v.stderr.includes(srv), "no server path sent");
});

Deno.test("remote: a protocol mismatch and a server that is not mimeo's are one line each", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  writeTree(src, { "a.txt": "a" });
  await using server = await startServer(srv);
  const res = await fetch(`${server.url}/v1/r/open`, {
    method: "POST",
    headers: { "mimeo-protocol": "99" },
    body: "{}",
  });
  assertEquals(res.status, 400);
  assertMatch((await res.json()).error, /protocol version 99 is not spoken here/);
  const other = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("{}"),
  );
  try {
    const r = await mimeo(["sync", src, `http://127.0.0.1:${other.addr.port}/r`], P);
    assertEquals(r.code, 2, cliText(r));
    assertMatch(r.stderr, /is not a mimeo server/);
  } finally {
    await other.shutdown();
  }
});

Deno.test("serve refuses a non-loopback address without a token, and plain HTTP there without --allow-plain-http", async () => {
  await using d = await tempDir();
  Deno.writeTextFileSync(`${d.path}/token`, "t\n");
  const noToken = await mimeo(["serve", d.path, "--listen", "0.0.0.0:0"]);
  assertEquals(noToken.code, 2, cliText(noToken));
  assertMatch(noToken.stderr, /without --token-file/);
  const plain = await mimeo([
    "serve",
    d.path,
    "--listen",
    "0.0.0.0:0",
    "--token-file",
    `${d.path}/token`,
  ]);
  assertEquals(plain.code, 2, cliText(plain));
  assertMatch(plain.stderr, /refusing plain HTTP/);
});

Deno.test("remote: an interrupted upload of a large file resumes where it stopped", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  const big = randomBytes(6 * 1024 * 1024);
  writeTree(src, { "big.bin": big });
  await using server = await startServer(srv);
  const sha = new Uint8Array(await crypto.subtle.digest("SHA-256", big));
  const hex = [...sha].map((b) => b.toString(16).padStart(2, "0")).join("");
  const s = await openSession(server.url, "r");
  // Half of it arrives, then the client is gone.
  const half = await fetch(`${server.url}/v1/r/blob/${hex}?size=${big.length}&offset=0`, {
    method: "PUT",
    headers: { ...PROTO, "mimeo-session": s.id },
    body: big.subarray(0, 4 * 1024 * 1024),
  });
  assertEquals((await half.json()).have, 4 * 1024 * 1024);
  await s.close();
  let r = await mimeo(["sync", src, `${server.url}/r`, "--json"], P);
  for (let i = 0; i < 20 && r.code === 75; i++) {
    await new Promise((res) => setTimeout(res, 100));
    r = await mimeo(["sync", src, `${server.url}/r`, "--json"], P);
  }
  assertEquals(r.code, 0, cliText(r));
  assertEquals(summary(r.stdout).bytes, 2 * 1024 * 1024, "only the rest is sent");
  assertMirror(src, `${srv}/r`);
});

Deno.test("remote: a client killed at a random moment loses nothing; the next run repairs everything", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  const spec: Record<string, Uint8Array> = {};
  for (let i = 0; i < 40; i++) spec[`f/${i}.bin`] = randomBytes(i % 5 === 0 ? 5_000_000 : 20_000);
  writeTree(src, spec);
  await using server = await startServer(srv);
  const url = `${server.url}/r`;
  for (const delay of [150, 400, 900]) {
    const child = spawnMimeo(["sync", src, url, "-q"], P);
    await new Promise((res) => setTimeout(res, delay));
    try {
      child.kill("SIGKILL");
    } catch { /* it had finished */ }
    await child.output();
    let r = await mimeo(["sync", src, url, "-q"], P);
    for (let i = 0; i < 30 && r.code === 75; i++) {
      await new Promise((res) => setTimeout(res, 100));
      r = await mimeo(["sync", src, url, "-q"], P);
    }
    assertEquals(r.code, 0, cliText(r));
    assertMirror(src, `${srv}/r`);
    const v = await mimeo(["verify", url], P);
    assertEquals(v.code, 0, cliText(v));
    // Change something for the next round.
    Deno.writeFileSync(`${src}/f/${delay % 40}.bin`, randomBytes(30_000));
    Deno.renameSync(`${src}/f`, `${src}/f${delay}`);
    Deno.mkdirSync(`${src}/f`);
  }
});

Deno.test("remote: a server killed at a random moment loses nothing; restarted, the next run repairs everything", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  const spec: Record<string, Uint8Array> = {};
  for (let i = 0; i < 30; i++) spec[`g/${i}.bin`] = randomBytes(i % 6 === 0 ? 6_000_000 : 50_000);
  writeTree(src, spec);
  for (const delay of [200, 600]) {
    const server = await startServer(srv);
    const child = spawnMimeo(["sync", src, `${server.url}/r`, "-q"], P);
    await new Promise((res) => setTimeout(res, delay));
    await server.kill();
    const out = await child.output();
    assert(out.code !== 0 || delay > 0, "the client saw the server go");
    await using again = await startServer(srv);
    const r = await mimeo(["sync", src, `${again.url}/r`, "-q"], P);
    assertEquals(r.code, 0, cliText(r));
    assertMirror(src, `${srv}/r`);
    const v = await mimeo(["verify", `${again.url}/r`], P);
    assertEquals(v.code, 0, cliText(v));
    Deno.writeFileSync(`${src}/g/${delay % 30}.bin`, randomBytes(7_000_000));
  }
});

Deno.test("remote: SIGTERM stops the server cleanly (exit 0) and the replica stays consistent", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  writeTree(src, { "a.txt": "a" });
  const server = await startServer(srv);
  assertEquals((await mimeo(["sync", src, `${server.url}/r`, "-q"], P)).code, 0);
  assertEquals(await server.stop(), 0, server.stderr());
  assertMirror(src, `${srv}/r`);
});

Deno.test("serve --log keeps each session's events as JSON Lines on the server", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`, log = `${d.path}/server.jsonl`;
  Deno.mkdirSync(srv);
  writeTree(src, { "a.txt": "a", "b/c.txt": "c" });
  const server = await startServer(srv, ["--log", log]);
  const r = await mimeo(["sync", src, `${server.url}/r`], P);
  assertEquals(r.code, 0, cliText(r));
  assertEquals(await server.stop(), 0);
  const events = jsonLines(Deno.readTextFileSync(log));
  const names = events.map((e) => e.event);
  for (const want of ["listening", "session-open", "copy", "mkdir", "session-close"]) {
    assert(names.includes(want), `${want} in ${names.join(",")}`);
  }
  assertEquals(events.find((e) => e.event === "copy" && e.path === "b/c.txt")?.level, "info");
});

Deno.test("remote: --exclude leaves excluded entries alone on the server; --delete-excluded removes them", async () => {
  await using d = await tempDir();
  const src = `${d.path}/src`, srv = `${d.path}/srv`;
  Deno.mkdirSync(srv);
  writeTree(src, { "keep.txt": "k", "skip.log": "s", "cache/x.bin": "x" });
  writeTree(`${srv}/r`, { "server-only.log": "mine", "cache/y.bin": "y" });
  await using server = await startServer(srv);
  const url = `${server.url}/r`;
  const r = await mimeo(["sync", src, url, "--exclude", "*.log", "--exclude", "cache/"], P);
  assertEquals(r.code, 0, cliText(r));
  assert(exists(`${srv}/r/keep.txt`));
  assert(!exists(`${srv}/r/skip.log`), "excluded source entries are not sent");
  assert(
    exists(`${srv}/r/server-only.log`) && exists(`${srv}/r/cache/y.bin`),
    "excluded replica entries stay",
  );
  const del = await mimeo([
    "sync",
    src,
    url,
    "--exclude",
    "*.log",
    "--exclude",
    "cache/",
    "--delete-excluded",
  ], P);
  assertEquals(del.code, 0, cliText(del));
  assert(
    !exists(`${srv}/r/server-only.log`) && !exists(`${srv}/r/cache`),
    "deleted with --delete-excluded",
  );
  assert(exists(`${srv}/r/keep.txt`));
});
