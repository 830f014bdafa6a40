/**
 * The only module that calls the engine, `http-proxy-3` (the maintained, API-compatible rewrite of
 * `http-proxy`). What it lacks or does differently from what viaduct promises is worked around here:
 *
 * - It builds the upstream path by joining the target's path and the request's, which merges a
 *   query into it and turns `http:/` in a path into `http://`. The caller's path is sent byte for
 *   byte: it is set on the upstream request before anything is written (for `web` by the body
 *   source it pipes from, for `ws` in `proxyReqWs`), and checked here as `http.request` would have
 *   checked it.
 * - Its headers option can add headers but not remove them. The headers we computed are shown to
 *   it as `req.headers`: by `web` for the synchronous span of the call in which it reads them, then
 *   put back, so that the caller's request is never left changed; by `ws` on a stand-in request.
 * - Its `deleteLength` pass turns a chunked DELETE/OPTIONS body into `Content-Length: 0` followed by
 *   the body bytes, which the upstream reads as a second request. The pass is removed; framing is
 *   decided by the caller.
 * - On an upgrade it writes a refusal to the client with the upstream's hop-by-hop headers and a
 *   `Transfer-Encoding: chunked` of its own. Refusals are handed to the caller instead.
 * - It `pipe()`s the response body to the client: for a small response, setting up and tearing
 *   down the pipe costs more than the copy. The response's `pipe` is replaced by a lighter relay.
 * - Its tunnel is `pipe()` both ways plus listeners of its own, and no idle timeout. The caller
 *   writes the 101 and relays the bytes itself (`tunnel.ts`).
 * - During `ws` it leaves listeners on the client socket that hold the whole call (options, hooks,
 *   the upstream request and its 101) for the tunnel's life, more than the tunnel itself; they are
 *   taken off again at once (`engineListeners`). Until then, it reports a client socket's error on
 *   the engine's `error` event, which throws when nobody listens: the engine has a listener.
 * - It ignores 1xx responses and a 101 to an ordinary request (Node then ends that request with
 *   neither a response nor an error): both are handed to the caller.
 * - For an `https` upstream the TLS server name is taken from the client's `Host`; it is set to
 *   the target's host name here.
 */
import { createProxyServer, type ProxyServer, type ServerOptions } from 'http-proxy-3';
import type {
  Agent,
  ClientRequest,
  IncomingMessage,
  InformationEvent,
  OutgoingHttpHeaders,
  ServerResponse,
} from 'node:http';
import { isIP, type Socket } from 'node:net';
import type { Duplex, Readable } from 'node:stream';
import { relayResponseBody } from './response-relay';
import { ProxyError } from '../runtime/proxy-error';
import {
  engineListeners,
  requestOptions,
  withCallKeys,
  withoutWebPass,
} from '../internals/http-proxy-3';
import { requestOf } from '../internals/node';
import type { EngineUrl } from './target';
import type { ConnectionSource } from './upstream-agents';
import type { CookieRewrite } from '../types';

export interface EngineOptions {
  target: EngineUrl;
  changeOrigin: boolean;
  secure: boolean | undefined;
  ca: string | Buffer | Array<string | Buffer> | undefined;
  /** Agent for HTTP requests. */
  webAgent: Agent | false;
  /** Agent for upgrade requests. */
  wsAgent: Agent | ConnectionSource | false;
  cookieDomainRewrite: CookieRewrite | undefined;
  cookiePathRewrite: CookieRewrite | undefined;
  autoRewrite: boolean | undefined;
}

/** What to send upstream, decided by the caller. */
export interface OutgoingRequest {
  /** Path and query, sent byte for byte. */
  path: string;
  headers: OutgoingHttpHeaders;
  /** A body to send instead of streaming the request: one a body parser already read, or empty when there is none. */
  body?: Buffer;
}

export interface WebHooks {
  /** The upstream request has its socket; headers are not sent yet. */
  onProxyReq(proxyReq: ClientRequest): void;
  /** The upstream response arrived; its headers may be changed before they are copied to the client. */
  onProxyRes(proxyRes: IncomingMessage): void;
  /** The response's status and headers are set on the client response, not written yet. */
  onResponseCopied(proxyRes: IncomingMessage): void;
  /** The upstream response's body ended, before Node lets go of its connection. */
  onResponseEnd(proxyRes: IncomingMessage): void;
  /** A 1xx response other than 101 arrived before the final one. */
  onInformation(info: InformationEvent): void;
  /** `proxyReq`: the upstream request it concerns, when the engine had created one. */
  onError(error: Error, proxyReq: ClientRequest | undefined): void;
}

export interface TunnelHooks {
  /** The upstream request was created; headers are not sent yet. */
  onProxyReq(proxyReq: ClientRequest): void;
  /** The upstream answered 101: nothing is written to the client, no byte is relayed yet. `upstreamHead` came with the 101. */
  onUpgrade(proxyRes: IncomingMessage, upstreamSocket: Duplex, upstreamHead: Buffer): void;
  /** The upstream answered anything but 101; nothing has been written to the client. */
  onRefused(proxyRes: IncomingMessage): void;
  /** `proxyReq`: the upstream request it concerns, when the engine had created one. */
  onError(error: Error, proxyReq: ClientRequest | undefined): void;
}

// The engine copies per-call options with a spread, so the hooks travel under a string key.
type CallOptions = ServerOptions & { viaductHooks: WebHooks | TunnelHooks };

/** Every key a call of `web` or `ws` passes (`agent` is always set at construction). */
const CALL_KEYS = ['viaductHooks', 'ssl', 'buffer'] as const;

/** An upstream request of `web`, with its hooks: shared listeners find them there, no closure per request. */
type HookedRequest = ClientRequest & { viaductHooks: WebHooks };

/**
 * Stands in for `proxyRes.pipe` in the engine's one call, `proxyRes.pipe(res)`: the same relay with
 * backpressure, for two listeners where `pipe` sets up and tears down eight on every response.
 */
function relayBody<T extends NodeJS.WritableStream>(this: IncomingMessage, destination: T): T {
  relayResponseBody(this, destination);
  return destination;
}

function beforeCopy(this: HookedRequest, proxyRes: IncomingMessage): void {
  this.viaductHooks.onProxyRes(proxyRes);
  proxyRes.pipe = relayBody;
  // First: Node's own 'end' listener frees the connection's parser and pools the connection.
  proxyRes.prependListener('end', responseEnded);
}

function responseEnded(this: IncomingMessage): void {
  (requestOf(this) as HookedRequest).viaductHooks.onResponseEnd(this);
}

function afterCopy(this: HookedRequest, proxyRes: IncomingMessage): void {
  this.viaductHooks.onResponseCopied(proxyRes);
}

function relayInformation(this: HookedRequest, info: InformationEvent): void {
  this.viaductHooks.onInformation(info);
}

/**
 * A 101 to a request that asked for no upgrade: Node hands the socket to an 'upgrade' listener, or
 * without one destroys it and the request ends with neither a response nor an error.
 */
function refuseUpgrade(this: HookedRequest, _proxyRes: IncomingMessage, socket: Duplex): void {
  socket.destroy();
  this.viaductHooks.onError(
    new ProxyError(
      'EBADRESPONSE',
      'a 101 Switching Protocols to a request that asked for no upgrade',
    ),
    this,
  );
}

/** The engine's report of a client socket's error during `ws`: the handshake or the tunnel handles it as `close`. */
const ignoreSocketError = (): void => {};

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

/** Shows the engine our headers as `req.headers` until `restore()`. */
class RequestView {
  private readonly headers: IncomingMessage['headers'];

  constructor(
    private readonly req: IncomingMessage,
    outgoing: OutgoingRequest,
  ) {
    this.headers = req.headers;
    req.headers = outgoing.headers as IncomingMessage['headers'];
  }

  restore(): void {
    this.req.headers = this.headers;
  }
}

/**
 * What `ws` is given as the client's request: the engine reads only the method and our headers from
 * it, and `proxyReqWs` brings our path back with it. A stand-in rather than the request itself,
 * which stays unchanged; it also has one hidden class, where a request an Express app dispatched
 * has one of its own (Express changes its prototype), so that every property read of it would
 * miss V8's caches.
 */
class UpgradeRequestView {
  readonly method = 'GET';

  constructor(
    readonly url: string,
    readonly headers: OutgoingHttpHeaders,
  ) {}
}

/** What `http.request` refuses in a path (Node's own check). */
const UNESCAPED_PATH = /[^\u0021-\u00ff]/;

/** The error `http.request` throws for such a path; ours is set after it, so it is checked here. */
function unescapedPathError(path: string): Error | undefined {
  if (!UNESCAPED_PATH.test(path)) return undefined;
  return Object.assign(new TypeError('Request path contains unescaped characters'), {
    code: 'ERR_UNESCAPED_CHARACTERS',
  });
}

function endRequest(this: ClientRequest): void {
  this.end();
}

/**
 * What `web` pipes into the upstream request (the engine's `buffer` option), called synchronously
 * right after the request is created: it sets our path before anything is written, then streams
 * the client's body. A body already in hand, or none, is sent once the request has its socket,
 * after the `proxyReq` listeners could still set headers: with no stream pipe set up for it.
 */
class UpstreamBodySource {
  /** The upstream request the engine created, known as soon as it pipes into it. */
  proxyReq: ClientRequest | undefined;

  constructor(
    private readonly req: IncomingMessage,
    private readonly outgoing: OutgoingRequest,
    /** Set when the request may go to another upstream: `connect`/`secureConnect` to wait for. */
    private readonly connectedEvent: string | undefined,
  ) {}

  pipe(proxyReq: ClientRequest): ClientRequest {
    this.proxyReq = proxyReq;
    proxyReq.path = this.outgoing.path;
    const { body } = this.outgoing;
    if (body === undefined) {
      if (this.connectedEvent === undefined) return this.req.pipe(proxyReq);
      // Not a byte of the body is read before the connection is up: a request that could not
      // connect goes to the next upstream with its body still unread.
      const event = this.connectedEvent;
      return proxyReq.once('socket', (socket: Socket) => {
        if (socket.connecting) socket.once(event, () => this.req.pipe(proxyReq));
        else this.req.pipe(proxyReq);
      });
    }
    // 'socket' comes once; the engine's own listener, which emits `proxyReq`, was added first.
    if (body.length === 0) return proxyReq.on('socket', endRequest);
    return proxyReq.on('socket', () => proxyReq.end(body));
  }
}

export class Engine {
  private readonly server: ProxyServer;
  private readonly servername: string | undefined;
  private readonly wsAgent: Agent | ConnectionSource | false;
  private createdUpgradeRequest: ClientRequest | undefined;
  /** What a fresh connection to the target emits once it can carry the request. */
  private readonly connectedEvent: 'connect' | 'secureConnect';

  constructor(options: EngineOptions) {
    const hostname = options.target.hostname ?? '';
    this.servername =
      options.target.protocol === 'https:' &&
      !options.target.socketPath &&
      !isIP(hostname.replace(/^\[|\]$/g, ''))
        ? hostname
        : undefined;
    this.wsAgent = options.wsAgent;
    this.connectedEvent = options.target.protocol === 'https:' ? 'secureConnect' : 'connect';
    const allOptions: ServerOptions = {
      target: options.target,
      changeOrigin: options.changeOrigin,
      secure: options.secure,
      ca: options.ca,
      agent: options.webAgent,
      cookieDomainRewrite: options.cookieDomainRewrite,
      cookiePathRewrite: options.cookiePathRewrite,
      autoRewrite: options.autoRewrite,
      // The caller computes the whole path and sets it on the upstream request; the engine must
      // neither re-parse nor prepend to it, and need not join it: its own result is replaced.
      toProxy: true,
      prependPath: false,
      ignorePath: true,
    } as ServerOptions;
    // The engine copies its options on every call: unset ones need not be copied.
    const setOptions = withCallKeys(
      Object.fromEntries(Object.entries(allOptions).filter(([, value]) => value !== undefined)),
      CALL_KEYS,
    );
    this.server = createProxyServer(setOptions);
    withoutWebPass(this.server, 'deleteLength');
    this.server.on('error', ignoreSocketError);
    this.server.on('proxyReq', (proxyReq, _req, _res, callOptions) => {
      const hooks = (callOptions as CallOptions).viaductHooks as WebHooks;
      // the engine's own 'response' listener copies the response status and headers to the client
      // response (it also echoes the client's Connection header there); the hooks run around it.
      (proxyReq as HookedRequest).viaductHooks = hooks;
      proxyReq.prependListener('response', beforeCopy);
      proxyReq.on('response', afterCopy);
      proxyReq.on('information', relayInformation);
      proxyReq.on('upgrade', refuseUpgrade);
      hooks.onProxyReq(proxyReq);
    });
    this.server.on('proxyReqWs', (proxyReq, request, _socket, callOptions) => {
      this.createdUpgradeRequest = proxyReq;
      // Not written yet: the engine ends the request after this event.
      proxyReq.path = (request as unknown as UpgradeRequestView).url;
      (callOptions as CallOptions).viaductHooks.onProxyReq(proxyReq);
    });
  }

  /** The upstream request the last `ws` call created, reported synchronously by `proxyReqWs`. */
  private takeUpgradeRequest(): ClientRequest | undefined {
    const proxyReq = this.createdUpgradeRequest;
    this.createdUpgradeRequest = undefined;
    return proxyReq;
  }

  /**
   * Proxies one HTTP request; returns the upstream request it created (`undefined` when it failed
   * first, reported to `hooks.onError`). With `mayRetry`, a streamed body is not read before the
   * upstream connection is up, so that a request that could not connect can go elsewhere.
   */
  web(
    req: IncomingMessage,
    res: ServerResponse,
    outgoing: OutgoingRequest,
    hooks: WebHooks,
    mayRetry: boolean,
  ): ClientRequest | undefined {
    const pathError = unescapedPathError(outgoing.path);
    if (pathError) {
      hooks.onError(pathError, undefined);
      return undefined;
    }
    const source = new UpstreamBodySource(
      req,
      outgoing,
      mayRetry ? this.connectedEvent : undefined,
    );
    const options: CallOptions = {
      viaductHooks: hooks,
      ssl: requestOptions(this.servername),
      buffer: source as unknown as Readable,
    };
    const view = new RequestView(req, outgoing);
    let failure: unknown;
    try {
      this.server.web(req, res, options, (error) => hooks.onError(error, source.proxyReq));
    } catch (error) {
      failure = error;
    } finally {
      view.restore();
    }
    if (failure !== undefined) hooks.onError(asError(failure), source.proxyReq);
    return source.proxyReq;
  }

  /** Sends one upgrade handshake upstream; returns the upstream request (`undefined` when it failed first). */
  ws(
    socket: Duplex,
    head: Buffer,
    outgoing: OutgoingRequest,
    hooks: TunnelHooks,
  ): ClientRequest | undefined {
    const pathError = unescapedPathError(outgoing.path);
    if (pathError) {
      hooks.onError(pathError, undefined);
      return undefined;
    }
    // The path the engine puts in `ssl` is its own; `proxyReqWs` replaces it before it is written.
    const options: CallOptions = {
      viaductHooks: hooks,
      ssl: requestOptions(this.servername),
      agent: this.wsAgent,
    };
    const own = engineListeners(socket);
    try {
      const request = new UpgradeRequestView(
        outgoing.path,
        outgoing.headers,
      ) as unknown as IncomingMessage;
      this.server.ws(request, socket, head, options, (error) => hooks.onError(error, undefined));
    } catch (error) {
      hooks.onError(asError(error), undefined);
      return undefined;
    } finally {
      own.detach();
    }
    const proxyReq = this.takeUpgradeRequest();
    if (!proxyReq) {
      hooks.onError(new Error('the engine did not create an upstream request'), undefined);
      return undefined;
    }
    // The engine's own listeners would write a refusal itself, pipe a tunnel, and on an error end
    // the client's socket, which the caller may still send to another upstream.
    proxyReq.removeAllListeners('response');
    proxyReq.removeAllListeners('upgrade');
    proxyReq.removeAllListeners('error');
    proxyReq.on('error', (error: Error) => hooks.onError(error, proxyReq));
    proxyReq.on('response', (proxyRes: IncomingMessage) => hooks.onRefused(proxyRes));
    proxyReq.on(
      'upgrade',
      (proxyRes: IncomingMessage, upstreamSocket: Duplex, upstreamHead: Buffer) =>
        hooks.onUpgrade(proxyRes, upstreamSocket, upstreamHead),
    );
    return proxyReq;
  }
}
