/**
 * Test helpers for remote replicas: a real `mimeo serve` started as a subprocess on a free
 * loopback port, the way a user runs it, and the client's permissions.
 */
import { MAIN } from "./helpers.ts";

/** What a client run against a loopback server needs (a user's `deno task sync`). */
export const CLIENT_PERMS = [
  "--allow-read",
  "--allow-write",
  "--allow-net=127.0.0.1",
  "--allow-env=MIMEO_TOKEN",
];

/** A running server. */
export interface Server {
  /** `http(s)://127.0.0.1:PORT` */
  url: string;
  child: Deno.ChildProcess;
  /** What it printed on stderr so far. */
  stderr(): string;
  /** SIGTERM, then wait; returns the exit code. */
  stop(): Promise<number>;
  /** SIGKILL, then wait. */
  kill(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Start `mimeo serve DIR --listen 127.0.0.1:0 ...extra` and wait for its `listening on` line. */
export async function startServer(dir: string, extra: string[] = []): Promise<Server> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--quiet",
      "--allow-read",
      "--allow-write",
      "--allow-net=127.0.0.1",
      MAIN,
      "serve",
      dir,
      "--listen",
      "127.0.0.1:0",
      ...extra,
    ],
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let err = "";
  const dec = new TextDecoder();
  const drainErr = (async () => {
    for await (const b of child.stderr) err += dec.decode(b, { stream: true });
  })();
  let out = "";
  const reader = child.stdout.getReader();
  const deadline = Date.now() + 20_000;
  while (!out.includes("\n")) {
    const r = await Promise.race([
      reader.read(),
      new Promise<"timeout">((res) => setTimeout(() => res("timeout"), deadline - Date.now())),
    ]);
    if (r === "timeout" || r.done) {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.status;
      throw new Error(`server did not start: ${out}\n${err}`);
    }
    out += dec.decode(r.value, { stream: true });
  }
  const m = /^listening on (\S+)/.exec(out);
  if (!m) throw new Error(`unexpected first line: ${out}`);
  // Keep stdout drained too.
  const drainOut = (async () => {
    try {
      while (!(await reader.read()).done) { /* more output */ }
    } catch { /* closed */ }
  })();
  let done = false;
  const wait = async () => {
    const s = await child.status;
    await Promise.all([drainErr, drainOut]);
    done = true;
    return s.code;
  };
  const server: Server = {
    url: m[1],
    child,
    stderr: () => err,
    async stop() {
      if (!done) {
        try {
          child.kill("SIGTERM");
        } catch { /* gone */ }
      }
      return await wait();
    },
    async kill() {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await wait();
    },
    async [Symbol.asyncDispose]() {
      if (!done) await server.kill();
    },
  };
  return server;
}

/** Make a self-signed certificate for 127.0.0.1 with openssl; returns the PEM paths. */
export async function selfSignedCert(dir: string): Promise<{ cert: string; key: string }> {
  const cert = `${dir}/cert.pem`, key = `${dir}/key.pem`;
  const r = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "2",
      "-subj",
      "/CN=127.0.0.1",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
      // (A self-signed certificate marked CA:TRUE is refused as a server's own by rustls.)
      "-addext",
      "basicConstraints=critical,CA:FALSE",
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (r.code !== 0) throw new Error(`openssl failed: ${new TextDecoder().decode(r.stderr)}`);
  return { cert, key };
}
