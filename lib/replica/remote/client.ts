/**
 * The client of a `mimeo serve` replica: one method per protocol step (see protocol.ts),
 * each one request, typed errors for what the server answers.
 *
 * @module
 */
import { BusyError, errorMessage, ExitCode, MimeoError, UsageError } from "../../errors.ts";
import { VERSION } from "../../cli.ts";
import {
  type ApplyLine,
  type ApplyRequest,
  type ApplyResult,
  type LogLine,
  type NeedAnswer,
  type NeedItem,
  type OpenRequest,
  type OpenState,
  PROTOCOL_HEADER,
  PROTOCOL_VERSION,
  type RemoteLocation,
  SESSION_HEADER,
  type StateAnswer,
} from "./protocol.ts";

/** The server could not be reached, or failed while serving the run (exit 69). */
export class RemoteError extends MimeoError {
  constructor(message: string) {
    super(message, ExitCode.Unavailable);
  }
}

/** How to reach a server. */
export interface RemoteOptions {
  /** The bearer token (from --token-file or MIMEO_TOKEN). */
  token?: string;
  /** A PEM file of CA certificates to trust (a self-signed server certificate). */
  caFile?: string;
}

/** The client of one replica on one server. */
export class RemoteClient {
  #http?: Deno.HttpClient;
  #session?: string;
  #openBody?: ReadableStreamDefaultReader<Uint8Array>;

  constructor(readonly loc: RemoteLocation, readonly options: RemoteOptions = {}) {
    if (options.caFile) {
      let pem: string;
      try {
        pem = Deno.readTextFileSync(options.caFile);
      } catch (e) {
        throw new UsageError(`Cannot read --ca-file '${options.caFile}': ${errorMessage(e)}`);
      }
      this.#http = Deno.createHttpClient({ caCerts: [pem] });
    }
  }

  #url(action: string): string {
    return `${this.loc.base}/v1/${encodeURIComponent(this.loc.name)}/${action}`;
  }

  async #fetch(url: string, init: RequestInit & { duplex?: "half" }): Promise<Response> {
    const headers = new Headers(init.headers);
    headers.set(PROTOCOL_HEADER, String(PROTOCOL_VERSION));
    if (this.options.token !== undefined) {
      headers.set("authorization", `Bearer ${this.options.token}`);
    }
    if (this.#session) headers.set(SESSION_HEADER, this.#session);
    let res: Response;
    try {
      res = await fetch(url, { ...init, headers, client: this.#http } as RequestInit);
    } catch (e) {
      const cause = (e as Error).cause;
      throw new RemoteError(
        `cannot reach ${this.loc.base}: ${
          errorMessage(cause ?? e).replace(/^error sending request for url \([^)]*\): /, "")
        }`,
      );
    }
    if (res.ok) {
      const v = res.headers.get(PROTOCOL_HEADER);
      if (v !== String(PROTOCOL_VERSION)) {
        await res.body?.cancel();
        throw new UsageError(
          v === null
            ? `${this.loc.base} is not a mimeo server (no ${PROTOCOL_HEADER} header)`
            : `${this.loc.base} speaks protocol ${v}, this mimeo ${VERSION} speaks ${PROTOCOL_VERSION}: use the same mimeo version on both sides`,
        );
      }
      return res;
    }
    let msg = `HTTP ${res.status}`;
    let code = "";
    try {
      const body = await res.json() as { error?: string; code?: string };
      if (body.error) msg = body.error;
      code = body.code ?? "";
    } catch { /* not JSON */ }
    if (res.status === 401) {
      throw new UsageError(
        `${this.loc.base} refused the token (${msg}); pass the server's token with --token-file FILE or MIMEO_TOKEN`,
      );
    }
    if (code === "busy") throw new BusyError(`replica '${this.loc.url}': ${msg}`);
    if (code === "protocol") throw new UsageError(`${this.loc.base}: ${msg}`);
    if (res.status === 404) throw new UsageError(`replica '${this.loc.url}': ${msg}`);
    throw new RemoteError(`replica '${this.loc.url}': ${msg}`);
  }

  /**
   * Open a session: the server locks the replica (unless a dry run) and answers what it
   * holds. The session lasts until {@linkcode close}.
   */
  async open(req: OpenRequest): Promise<OpenState> {
    const res = await this.#fetch(this.#url("open"), {
      method: "POST",
      body: JSON.stringify(req),
      headers: { "content-type": "application/json" },
    });
    const reader = res.body!.getReader();
    this.#openBody = reader;
    const first = await readLine(reader);
    if (first === undefined) throw new RemoteError(`${this.loc.base} closed the session at once`);
    const state = JSON.parse(first) as OpenState;
    this.#session = state.session;
    // Keep reading the keep-alive lines, so the connection stays drained.
    (async () => {
      try {
        while ((await reader.read()).done === false) { /* keep-alive */ }
      } catch { /* closed */ }
    })();
    return state;
  }

  /** What the replica holds (after {@linkcode open}). */
  async state(): Promise<StateAnswer> {
    const res = await this.#fetch(this.#url("state"), { method: "GET" });
    return await res.json() as StateAnswer;
  }

  /** Which of these contents the server lacks. */
  async need(items: NeedItem[]): Promise<NeedAnswer> {
    const res = await this.#fetch(this.#url("need"), {
      method: "POST",
      body: await gzipJson({ items }),
      headers: { "content-type": "application/json", "content-encoding": "gzip" },
    });
    return await res.json() as NeedAnswer;
  }

  /** Send small contents and chunks, framed: 32 bytes of SHA-256, a 4-byte length, the bytes. */
  async pack(frames: Uint8Array): Promise<{ stored: number; rejected: string[] }> {
    const res = await this.#fetch(this.#url("pack"), {
      method: "POST",
      body: frames as Uint8Array<ArrayBuffer>,
      headers: { "content-type": "application/octet-stream" },
    });
    return await res.json();
  }

  /** Send one large content (from `offset`: the bytes the server has of it). */
  async blob(
    sha: string,
    size: number,
    offset: number,
    body: ReadableStream<Uint8Array>,
  ): Promise<number> {
    const res = await this.#fetch(`${this.#url("blob")}/${sha}?size=${size}&offset=${offset}`, {
      method: "PUT",
      body,
      duplex: "half",
      headers: { "content-type": "application/octet-stream" },
    });
    return ((await res.json()) as { have: number }).have;
  }

  /** Apply a plan; `onLine` gets each event as the server logs it. */
  async apply(req: ApplyRequest, onLine: (l: LogLine) => void): Promise<ApplyResult> {
    const res = await this.#fetch(this.#url("apply"), {
      method: "POST",
      body: await gzipJson(req),
      headers: { "content-type": "application/json", "content-encoding": "gzip" },
    });
    const reader = res.body!.getReader();
    let result: ApplyResult | undefined;
    try {
      for (;;) {
        const line = await readLine(reader);
        if (line === undefined) break;
        if (!line) continue;
        const l = JSON.parse(line) as ApplyLine;
        if ("result" in l) result = l.result;
        else onLine(l);
      }
    } catch (e) {
      if (e instanceof MimeoError) throw e;
      throw new RemoteError(
        `lost ${this.loc.base} while it applied the plan: ${
          errorMessage(e)
        } (the next run repairs what is left)`,
      );
    }
    if (!result) {
      throw new RemoteError(
        `${this.loc.base} stopped while it applied the plan (the next run repairs what is left)`,
      );
    }
    return result;
  }

  /** Have the server re-hash the replica against its manifest. */
  async verify(): Promise<unknown> {
    const res = await this.#fetch(this.#url("verify"), { method: "POST", body: "{}" });
    return await res.json();
  }

  /** End the session (the server lets go of the replica's lock). */
  async close(): Promise<void> {
    const r = this.#openBody;
    this.#openBody = undefined;
    this.#session = undefined;
    try {
      await r?.cancel();
    } catch { /* gone */ }
    this.#http?.close();
  }
}

/** A JSON body, gzip-compressed (trees and plans shrink five- to tenfold). */
async function gzipJson(v: unknown): Promise<Uint8Array<ArrayBuffer>> {
  const stream = new Blob([JSON.stringify(v)]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const decoder = new TextDecoder();
const pending = new WeakMap<ReadableStreamDefaultReader<Uint8Array>, string>();

/** The next line of an NDJSON stream (undefined at its end). */
async function readLine(
  reader: ReadableStreamDefaultReader<Uint8Array>,
): Promise<string | undefined> {
  let buf = pending.get(reader) ?? "";
  for (;;) {
    const i = buf.indexOf("\n");
    if (i >= 0) {
      pending.set(reader, buf.slice(i + 1));
      return buf.slice(0, i);
    }
    const { value, done } = await reader.read();
    if (done) {
      pending.delete(reader);
      return buf.length ? buf : undefined;
    }
    buf += decoder.decode(value, { stream: true });
  }
}
