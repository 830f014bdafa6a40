/**
 * The only module that calls the engine, `http-proxy-3` (the maintained, API-compatible rewrite of
 * `http-proxy`). For HTTP it uses the engine's two halves of `web`, and drives the request between
 * them itself: `setupOutgoing` makes the upstream request's options (target, TLS, socket path,
 * agent, `changeOrigin`), and where its rewrites (`autoRewrite`, cookies) are configured, the
 * engine's response passes copy the status and headers to the client. The call of `web` around
 * them (its options merged per call, an event for each step, a closure for each listener, its
 * `pipe()`s) cost 5–6 % of the front's CPU time per small request. For upgrades it calls `ws`.
 * What the engine lacks or does differently from what viaduct promises is worked around here:
 *
 * - It builds the upstream path by joining the target's path and the request's, which merges a
 *   query into it and turns `http:/` in a path into `http://`. The caller's path is sent byte for
 *   byte: for `web` it replaces the engine's before the request is created, for `ws` it is set in
 *   `proxyReqWs` and checked here as `http.request` would have checked it.
 * - Its headers option can add headers but not remove them. The engine is shown the headers we
 *   computed on a stand-in for the client's request, which stays unchanged.
 * - Its `web` turns a chunked DELETE/OPTIONS body into `Content-Length: 0` followed by the body
 *   bytes, which the upstream reads as a second request: framing is decided by the caller.
 * - On an upgrade it writes a refusal to the client with the upstream's hop-by-hop headers and a
 *   `Transfer-Encoding: chunked` of its own. Refusals are handed to the caller instead.
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
import {
  type Agent,
  type ClientRequest,
  request as httpRequest,
  type IncomingMessage,
  type InformationEvent,
  type OutgoingHttpHeaders,
  type ServerResponse,
} from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { relayResponseBody } from './response-relay';
import { ProxyError } from '../runtime/proxy-error';
import {
  engineListeners,
  REWRITING_PASSES,
  requestOptions,
  upstreamRequestOptions,
  withCallKeys,
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
  /** The response's status and headers are copied to the client response; no byte of it is written yet. */
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
type CallOptions = ServerOptions & { viaductHooks: TunnelHooks };

/** Every key a call of `ws` passes (`agent` is always set at construction). */
const CALL_KEYS = ['viaductHooks', 'ssl'] as const;

/** What the listeners of one upstream request of `web` need: shared listeners find it there. */
interface WebCall {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly hooks: WebHooks;
  /** The engine's options, which its response passes read. */
  readonly options: object;
  /** The engine's response passes copy the response: a rewrite of theirs is configured. */
  readonly rewrites: boolean;
}

type CalledRequest = ClientRequest & { viaductCall: WebCall };

function socketAssigned(this: CalledRequest): void {
  this.viaductCall.hooks.onProxyReq(this);
}

/**
 * The upstream response: the hooks run around the engine's response passes, then the body is
 * relayed with backpressure (two listeners where `pipe()` sets up and tears down eight).
 */
function responded(this: CalledRequest, proxyRes: IncomingMessage): void {
  const { res, hooks } = this.viaductCall;
  hooks.onProxyRes(proxyRes);
  // First: Node's own 'end' listener frees the connection's parser and pools the connection.
  proxyRes.prependListener('end', responseEnded);
  // The hooks may have answered the client already (an unrelayable response).
  if (!res.headersSent) copyResponseHead(this.viaductCall, proxyRes);
  if (!res.writableEnded) relayResponseBody(proxyRes, res);
  hooks.onResponseCopied(proxyRes);
}

/**
 * Copies the upstream's status and headers to the client response: with the engine's passes where
 * one of their rewrites is configured (or for an HTTP/2 client, to which they send no `Connection`
 * or `Keep-Alive`), else in one `writeHead`. Node serialises that from the object as it is, where
 * the passes set each header with `setHeader` into a header table Node builds for them: 6 % of the
 * front's instructions per small response. Headers set on `res` before (by Express, or a
 * `proxyRes` listener) are merged by Node, the upstream's winning, as with the passes.
 */
function copyResponseHead(call: WebCall, proxyRes: IncomingMessage): void {
  const { req, res, options } = call;
  if (call.rewrites || req.httpVersionMajor !== 1) {
    for (const pass of REWRITING_PASSES) pass(req, res, proxyRes, options);
    return;
  }
  const { statusCode, statusMessage, headers } = proxyRes;
  // Two arguments without a message: `on-headers` reads a non-string second one as the headers.
  if (statusMessage) res.writeHead(statusCode!, statusMessage, headers);
  else res.writeHead(statusCode!, headers);
}

function responseEnded(this: IncomingMessage): void {
  (requestOf(this) as CalledRequest).viaductCall.hooks.onResponseEnd(this);
}

function relayInformation(this: CalledRequest, info: InformationEvent): void {
  this.viaductCall.hooks.onInformation(info);
}

/**
 * A 101 to a request that asked for no upgrade: Node hands the socket to an 'upgrade' listener, or
 * without one destroys it and the request ends with neither a response nor an error.
 */
function refuseUpgrade(this: CalledRequest, _proxyRes: IncomingMessage, socket: Duplex): void {
  socket.destroy();
  this.viaductCall.hooks.onError(
    new ProxyError(
      'EBADRESPONSE',
      'a 101 Switching Protocols to a request that asked for no upgrade',
    ),
    this,
  );
}

/** An error of the upstream request, or of the client's request it streams: as the engine reports them. */
function failed(proxyReq: CalledRequest, error: NodeJS.ErrnoException): void {
  const { req, hooks } = proxyReq.viaductCall;
  // The client reset its connection: there is no one to answer.
  if (req.socket.destroyed && error.code === 'ECONNRESET') proxyReq.destroy();
  else hooks.onError(error, proxyReq);
}

function upstreamFailed(this: CalledRequest, error: NodeJS.ErrnoException): void {
  failed(this, error);
}

/** The engine's report of a client socket's error during `ws`: the handshake or the tunnel handles it as `close`. */
const ignoreSocketError = (): void => {};

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

/** What `setupOutgoing` reads of the client's request, with our headers in place of the client's. */
class WebRequestView {
  constructor(
    readonly method: string | undefined,
    readonly headers: OutgoingHttpHeaders,
    readonly httpVersionMajor: number,
  ) {}

  // The path is the caller's, set on the result: the engine's own join is not used.
  readonly url = '';
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

/** The error `http.request` throws for such a path; in `ws` ours is set after it, so it is checked here. */
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
 * Sends the request's body, once the `proxyReq` listeners (added first) could still set headers:
 * one a body parser already read, or none, with no stream pipe set up for it; otherwise the
 * client's stream. `connectedEvent`: set when the request may go to another upstream, the
 * `connect`/`secureConnect` to wait for, so that a request that could not connect goes there with
 * its body still unread.
 */
function sendBody(
  req: IncomingMessage,
  proxyReq: ClientRequest,
  body: Buffer | undefined,
  connectedEvent: string | undefined,
): void {
  if (body === undefined) {
    if (connectedEvent === undefined) req.pipe(proxyReq);
    else
      proxyReq.once('socket', (socket: Socket) => {
        if (socket.connecting) socket.once(connectedEvent, () => req.pipe(proxyReq));
        else req.pipe(proxyReq);
      });
  } else if (body.length === 0) proxyReq.on('socket', endRequest);
  else proxyReq.on('socket', () => proxyReq.end(body));
}

export class Engine {
  private readonly server: ProxyServer;
  /** The engine's options, which `setupOutgoing` and the response passes read. */
  private readonly webOptions: object;
  /** A cookie or redirect rewrite is configured: the engine's passes copy responses. */
  private readonly rewritesResponses: boolean;
  private readonly secure: boolean;
  private readonly servername: string | undefined;
  private readonly wsAgent: Agent | ConnectionSource | false;
  private createdUpgradeRequest: ClientRequest | undefined;
  /** What a fresh connection to the target emits once it can carry the request. */
  private readonly connectedEvent: 'connect' | 'secureConnect';

  constructor(options: EngineOptions) {
    const hostname = options.target.hostname ?? '';
    const secure = options.target.protocol === 'https:';
    this.servername =
      secure && !options.target.socketPath && !isIP(hostname.replace(/^\[|\]$/g, ''))
        ? hostname
        : undefined;
    this.wsAgent = options.wsAgent;
    this.secure = secure;
    this.connectedEvent = secure ? 'secureConnect' : 'connect';
    this.rewritesResponses =
      options.autoRewrite === true ||
      options.cookieDomainRewrite !== undefined ||
      options.cookiePathRewrite !== undefined;
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
    // The engine copies its options on every call of `ws`: unset ones need not be copied.
    const setOptions = withCallKeys(
      Object.fromEntries(Object.entries(allOptions).filter(([, value]) => value !== undefined)),
      CALL_KEYS,
    );
    this.server = createProxyServer(setOptions);
    this.webOptions = setOptions;
    this.server.on('error', ignoreSocketError);
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
    let proxyReq: CalledRequest;
    try {
      const view = new WebRequestView(req.method, outgoing.headers, req.httpVersionMajor);
      const options = upstreamRequestOptions(
        requestOptions(this.servername),
        this.webOptions,
        view,
      );
      // `http.request` checks the path as it creates the request.
      options.path = outgoing.path;
      // Looked up per call, as the engine did: an instrumentation (OpenTelemetry's) may wrap it later.
      proxyReq = (this.secure ? httpsRequest : httpRequest)(options) as CalledRequest;
    } catch (error) {
      hooks.onError(asError(error), undefined);
      return undefined;
    }
    proxyReq.viaductCall = {
      req,
      res,
      hooks,
      options: this.webOptions,
      rewrites: this.rewritesResponses,
    };
    proxyReq.on('socket', socketAssigned);
    proxyReq.on('response', responded);
    proxyReq.on('information', relayInformation);
    proxyReq.on('upgrade', refuseUpgrade);
    proxyReq.on('error', upstreamFailed);
    req.on('error', (error: NodeJS.ErrnoException) => failed(proxyReq, error));
    sendBody(req, proxyReq, outgoing.body, mayRetry ? this.connectedEvent : undefined);
    return proxyReq;
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
