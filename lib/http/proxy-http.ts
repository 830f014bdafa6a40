import type {
  ClientRequest,
  IncomingHttpHeaders,
  IncomingMessage,
  InformationEvent,
  ServerResponse,
} from 'node:http';
import { performance } from 'node:perf_hooks';
import onHeaders = require('on-headers');
import { isEventStream } from '../upstream/response-relay';
import { announcesBody, unrelayableCoding } from '../headers/body-framing';
import { consumedBody } from './consumed-body';
import type { ProxyContext } from '../runtime/context';
import { InFlight } from '../runtime/in-flight';
import type { OutgoingRequest, WebHooks } from '../upstream/engine';
import { writeErrorAnswer } from '../runtime/error-answer';
import { ProxyError, attempt, toProxyError } from '../runtime/proxy-error';
import { forwardedPath, upstreamPath } from '../routing/forwarded-path';
import { failureOf, isIdempotent, type UpstreamFailure } from '../upstream/failure';
import type { Upstream } from '../upstream/upstream';
import { writeInformational } from '../internals/node';
import { applyToResponse, headerObject, type HeaderSink } from '../headers/header-policy';
import { connectionOf, endToEnd, responseEndToEnd } from '../headers/hop-by-hop';
import { clientAddress } from '../headers/forwarding';
import { upstreamHeaders } from '../headers/upstream-headers';
import type { RequestEndMessage } from '../types';
import type { Route } from '../routing/route';
import { shareShape } from '../internals/v8';
import { type ConnectWatcher, watchConnect } from '../upstream/connect-timeout';

const NO_BODY = Buffer.alloc(0);

/** Connections told `Connection: close` by an error response: what Node parsed behind it is not forwarded. */
const closingConnections = new WeakSet<object>();

/**
 * Decides what to send upstream (the route's part of the path: each upstream puts its own in
 * front), or the error that stops the request first (returned or thrown).
 */
function prepare(route: Route, req: IncomingMessage): OutgoingRequest | ProxyError {
  const path = forwardedPath(req.url ?? '/', route, req);
  if (path === undefined) return new ProxyError('EBADPATH', `${req.method} ${req.url}`);
  const coding = req.headers['transfer-encoding'];
  if (coding !== undefined && coding.trim().toLowerCase() !== 'chunked')
    return new ProxyError('EUNSUPPORTEDTE', coding);
  const headers = upstreamHeaders(req, route.settings, false);
  // Without a body there is nothing to stream or re-send, whether or not a parser looked. Asked
  // first: in Express on V8 before 13, each first read of a property of `req` misses V8's caches.
  if (!announcesBody(req)) return { path, headers, body: NO_BODY };
  const consumed = consumedBody(req);
  if (consumed === undefined) return { path, headers };
  if (consumed.kind === 'lost') return new ProxyError('EBODYLOST', consumed.reason);
  headers['content-length'] = String(consumed.body.length);
  delete headers['transfer-encoding'];
  // Body parsers inflate what they read: the re-serialised body is not encoded.
  delete headers['content-encoding'];
  return { path, headers, body: consumed.body };
}

/**
 * One proxied HTTP request, from the route match to the last byte (or the error), over one try
 * per upstream of the route's pool: a request that could not reach one goes to the next, where
 * nothing of it can have been taken for a request (no connection was made) or repeating it is
 * harmless (an idempotent method with its body in hand), and never once the response started.
 */
class HttpExchange extends InFlight implements WebHooks, ConnectWatcher {
  /** The current try's upstream request. */
  private proxyReq: ClientRequest | undefined;
  private upstream: Upstream | undefined;
  private tries = 0;
  /** The upstreams tried before the current one; only a request that went on has them. */
  private tried: Upstream[] | undefined;
  /** The current try's upstream has answered or failed: its health has been told. */
  private judged = false;
  private outgoing: OutgoingRequest | undefined;
  /** The route's part of the path, which each try's upstream puts its own path in front of. */
  private routePath = '';
  /** The URL of the last try's upstream. */
  private lastUpstream: string | undefined;
  /** The proxy's own error answer or cut, for the observers. */
  private error: ProxyError | undefined;
  /** Someone watches how requests go (channels, access log, metrics): timings are taken (ms). */
  private watched = false;
  private startedAt = 0;
  /** For the access log, where there is one: the client's address, read while its socket is open, and the bytes sent. */
  private bytesAtStart = 0;
  private client = '';
  private connectMs: number | undefined;
  private firstByteMs: number | undefined;
  /** The upstream's response headers were accepted: from now on a failure cuts the connection. */
  private responded = false;
  /** An error was answered or the connection cut: later engine errors are echoes. */
  private settled = false;
  private clientGone = false;
  /** The upstream's response headers as received, while the engine sees the client's version. */
  private upstreamHeaders: IncomingHttpHeaders | undefined;
  private proxyRes: IncomingMessage | undefined;
  private pastResponseLogged = false;

  constructor(
    private readonly ctx: ProxyContext,
    private readonly route: Route,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
  ) {
    super();
  }

  start(): void {
    const { ctx, route, req, res } = this;
    ctx.stats.requestStarted(route.stats);
    ctx.requests.add(this);
    if (ctx.observers.watchingRequests) {
      this.watched = true;
      this.startedAt = performance.now();
      if (ctx.observers.loggingRequests) {
        this.bytesAtStart = req.socket.bytesWritten;
        this.client = clientAddress(req, route.settings.trustProxy);
      }
    }
    res.on('close', () => this.onClientClose());
    // Only routes with response rules pay for the hook; it also covers headers set before the proxy ran.
    if (route.settings.headers.response.length > 0)
      onHeaders(res, () => this.applyResponsePolicy());
    if (ctx.closing) return this.fail(new ProxyError('ESHUTDOWN'));
    const outgoing = attempt(() => prepare(route, req));
    if (outgoing instanceof ProxyError) return this.fail(outgoing);
    this.outgoing = outgoing;
    this.routePath = outgoing.path;
    this.send();
  }

  /**
   * Sends the request to the pool's next upstream, or answers 502 when none is left.
   * `failed`: why the last try failed, when this is the next one.
   */
  private send(failed?: string): void {
    const { route, req } = this;
    // A hashKey is the user's: what it throws is answered as a failing router's is.
    const picked = attempt(() => route.pool.pick(req, this.tried));
    if (picked instanceof ProxyError) return this.fail(picked);
    const upstream = picked;
    if (!upstream) {
      const why =
        this.tries === 0
          ? `every upstream of ${route.targetLabel} is down`
          : `${this.tries} tries failed, the last: ${failed}`;
      return this.fail(new ProxyError('ENOUPSTREAM', why));
    }
    if (failed)
      this.ctx.logger.info(`viaduct: ${req.method} ${req.url}: ${failed}; trying ${upstream.url}`);
    const outgoing = this.outgoing!;
    const thisTry = ++this.tries;
    // The read timeout follows this try's socket from nothing seen.
    this.restartProgress();
    if (thisTry === 1)
      this.ctx.observers.requestStarted({ route: route.key, upstream: upstream.url, req });
    this.upstream = upstream;
    this.lastUpstream = upstream.url;
    this.judged = false;
    upstream.stats.requests++;
    upstream.stats.active++;
    outgoing.path = upstreamPath(upstream.basePath, this.routePath);
    this.proxyReq = undefined;
    const proxyReq = upstream.engine.web(req, this.res, outgoing, this, route.pool.retries > 0);
    // A try that failed at once may have been followed by another, or ended the exchange.
    if (this.tries === thisTry && !this.settled) this.proxyReq = proxyReq;
    else if (proxyReq !== this.proxyReq) proxyReq?.destroy();
  }

  /** The current try is over: its upstream has one request less in flight. */
  private releaseUpstream(): void {
    const upstream = this.upstream;
    if (!upstream) return;
    this.upstream = undefined;
    upstream.stats.active--;
    if (!this.judged && upstream.probing) upstream.probeAbandoned();
  }

  /** Response policy, on proxied and proxy-made responses alike. */
  private applyResponsePolicy(sink: HeaderSink = this.res): void {
    applyToResponse(this.route.settings.headers.response, sink, this.req, (error) => {
      this.ctx.logger.error(
        `viaduct: route "${this.route.key}": a response header rule failed: ${String(error)}`,
      );
    });
  }

  onProxyReq(proxyReq: ClientRequest): void {
    // A try given up on, or a client gone, before the upstream request got its connection.
    if (
      this.clientGone ||
      this.settled ||
      (this.proxyReq !== undefined && proxyReq !== this.proxyReq)
    ) {
      proxyReq.destroy();
      return;
    }
    watchConnect(
      proxyReq,
      this.route.settings.timeouts.connect,
      this.upstream!.secure,
      this.watched ? this : undefined,
    );
    this.ctx.sweep.watchShort();
    this.ctx.emit('proxyReq', proxyReq, this.req, this.res);
  }

  onProxyRes(proxyRes: IncomingMessage): void {
    this.proxyRes = proxyRes;
    if (this.watched) this.firstByteMs = performance.now() - this.startedAt;
    if (!this.judged && this.upstream) {
      this.judged = true;
      this.route.pool.answered(this.upstream);
    }
    const unrelayable = unrelayableCoding(proxyRes);
    // Answered here, the engine finds the client response ended and copies nothing.
    if (unrelayable)
      return this.fail(new ProxyError('EBADRESPONSE', `${unrelayable} from ${this.upstream?.url}`));
    this.responded = true;
    // These are copied to the client (`copyResponseHead` in the engine module). (Removing hop-by-hop
    // headers from the client response afterwards would tell Node not to frame the body itself.)
    // The upstream's own headers come back once copied: the agent reads their Keep-Alive hint when
    // it pools the socket.
    this.upstreamHeaders = proxyRes.headers;
    const headers = responseEndToEnd(proxyRes.headers, proxyRes.statusCode);
    // What Node decided for our connection to the client, listing `Upgrade` where it is kept (426).
    headers.connection = connectionOf(headers, this.res.shouldKeepAlive);
    proxyRes.headers = headers;
    proxyRes.on('close', () => {
      if (!proxyRes.complete)
        this.onError(new ProxyError('EUPSTREAMABORTED', `from ${this.upstream?.url}`), undefined);
    });
    this.ctx.emit('proxyRes', proxyRes, this.req, this.res);
  }

  onResponseCopied(proxyRes: IncomingMessage): void {
    if (this.settled) return;
    const headers = proxyRes.headers;
    if (this.upstreamHeaders) proxyRes.headers = this.upstreamHeaders;
    // An event stream is open once its head arrives (`EventSource` fires `open`), before any event:
    // the engine would write the head with the first chunk of the body.
    if (isEventStream(headers['content-type'])) this.res.flushHeaders();
  }

  /**
   * Forwards a 1xx (`103 Early Hints`, `102 Processing`…) to an HTTP/1.1 client before the final
   * response, with the response policy. `100 Continue` was the front's to answer (Node's server
   * did), and HTTP/1.0 clients know no 1xx.
   */
  onInformation(info: InformationEvent): void {
    const { res } = this;
    if (
      info.statusCode === 100 ||
      this.req.httpVersion !== '1.1' ||
      res.headersSent ||
      this.settled
    )
      return;
    const headers = endToEnd(info.headers);
    this.applyResponsePolicy(headerObject(headers));
    writeInformational(res, info.statusCode, info.statusMessage, headers);
  }

  /**
   * The upstream response's body ended. Node destroys the connection itself when the same read
   * carried a whole second response after it (bytes past `Content-Length`, a body on a HEAD,
   * 204 or 304 answer that parse as one): that connection was not the upstream's to close.
   */
  onResponseEnd(proxyRes: IncomingMessage): void {
    const socket = proxyRes.socket;
    // Destroyed by us, when the client went away or the exchange failed: not the upstream's doing.
    if (this.clientGone || this.settled) return;
    if (socket?.destroyed && !socket.readableEnded && !socket.errored)
      this.readPastResponse('a second response');
  }

  /** Logs, once, that bytes after a complete response were dropped with their connection. */
  private readPastResponse(what: string): void {
    if (this.pastResponseLogged) return;
    this.pastResponseLogged = true;
    this.ctx.logger.warn(
      `viaduct: ${this.req.method} ${this.req.url}: ${this.upstream?.url ?? this.route.targetLabel} sent bytes after a complete response (${what}); they are dropped and the connection is not reused`,
    );
  }

  onError(error: Error, proxyReq: ClientRequest | undefined): void {
    if (proxyReq !== undefined && this.proxyReq !== undefined && proxyReq !== this.proxyReq) {
      this.ctx.logger.debug(
        `viaduct: ${this.req.method} ${this.req.url}: after its try was given up: ${error.message}`,
      );
      return;
    }
    if (this.proxyRes?.complete && !this.settled) {
      // Node's parser failed on bytes past a complete response and destroyed that connection:
      // the response itself is relayed whole.
      const code = (error as NodeJS.ErrnoException).code;
      if (code?.startsWith('HPE_')) this.readPastResponse(code);
      else
        this.ctx.logger.debug(
          `viaduct: ${this.req.method} ${this.req.url}: after the response was complete: ${error.message}`,
        );
      return;
    }
    if (this.settled || this.clientGone || this.res.destroyed) {
      this.ctx.logger.debug(
        `viaduct: ${this.req.method} ${this.req.url}: after the exchange ended: ${error.message}`,
      );
      return;
    }
    this.upstreamFailed(toProxyError(error), failureOf(error));
  }

  /**
   * The current try failed. A failure of the upstream's (`failure`) before any response byte counts
   * against its health, and the request goes to the next upstream when nothing of it can have been
   * taken for a request or repeating it is harmless; with the tries used up, a pool answers 502.
   */
  private upstreamFailed(error: ProxyError, failure: UpstreamFailure | undefined): void {
    const { route, upstream } = this;
    const beforeResponse = !this.responded && !this.res.headersSent;
    if (failure === undefined || !beforeResponse || !upstream) return this.abandon(error);
    if (!this.judged) {
      this.judged = true;
      route.pool.failed(upstream, error.message);
    }
    const replayable =
      failure === 'connect' || (isIdempotent(this.req.method) && this.outgoing?.body !== undefined);
    if (!replayable || this.ctx.closing) return this.abandon(error);
    if (this.tries > route.pool.retries) {
      return route.pool.upstreams.length > 1
        ? this.fail(
            new ProxyError('ENOUPSTREAM', `${this.tries} tries failed, the last: ${error.message}`),
          )
        : this.abandon(error);
    }
    this.proxyReq?.destroy();
    this.releaseUpstream();
    (this.tried ??= []).push(upstream);
    this.send(`${upstream.url} failed (${error.message})`);
  }

  /**
   * The read timeout: from the connect until the upstream's response is complete, its socket moved
   * no byte either way for `readTimeout` (a socket timer counts the same activity).
   */
  override checkDeadline(now: number): void {
    const socket = this.proxyReq?.socket;
    if (
      !socket ||
      socket.connecting ||
      socket.destroyed ||
      this.settled ||
      this.clientGone ||
      this.proxyRes?.complete
    )
      return;
    const { read } = this.route.settings.timeouts;
    if (this.stalledFor(socket.bytesRead + socket.bytesWritten, now) >= read) {
      const error = new ProxyError('EREADTIMEOUT', `${this.upstream?.url} silent for ${read} ms`);
      // Only before the response is it the upstream's failure to answer.
      this.upstreamFailed(error, this.responded ? undefined : 'read');
    }
  }

  /** An error answer while nothing reached the client yet, else a cut connection. */
  private abandon(error: ProxyError): void {
    if (this.responded || this.res.headersSent) this.cut(error);
    else this.fail(error);
  }

  private onClientClose(): void {
    const { ctx, route, res } = this;
    ctx.requests.delete(this);
    ctx.stats.requestEnded(route.stats);
    this.releaseUpstream();
    if (!res.writableFinished && !this.settled) {
      this.clientGone = true;
      this.proxyReq?.destroy();
      ctx.logger.debug(`viaduct: ${this.req.method} ${this.req.url}: the client went away`);
    }
    if (this.watched) this.observed();
    ctx.released();
  }

  /** A fresh upstream connection is up (told only while watched). */
  connected(): void {
    this.connectMs = performance.now() - this.startedAt;
  }

  /** Tells the observers how the request went. */
  private observed(): void {
    const { route, req, res } = this;
    const timings: RequestEndMessage['timings'] = { total: performance.now() - this.startedAt };
    if (this.connectMs !== undefined) timings.connect = this.connectMs;
    if (this.firstByteMs !== undefined) timings.firstByte = this.firstByteMs;
    this.ctx.observers.requestEnded(
      {
        route: route.key,
        ...(this.lastUpstream !== undefined && { upstream: this.lastUpstream }),
        req,
        // A client that left before any answer got none: 499, as nginx logs it.
        status: this.clientGone && !res.headersSent ? 499 : res.statusCode,
        ...(this.error && { error: this.error }),
        tries: this.tries,
        timings,
      },
      this.ctx.observers.loggingRequests
        ? { client: this.client, bytes: req.socket.bytesWritten - this.bytesAtStart }
        : undefined,
    );
  }

  /** Answers with a proxy-made error response. */
  private fail(error: ProxyError): void {
    const { ctx, route, req, res } = this;
    this.settled = true;
    this.error = error;
    ctx.stats.requestFailed(route.stats);
    ctx.report(error, req, res, route);
    this.proxyReq?.destroy();
    // An unread request body or a shutdown: do not keep the connection for another request.
    if (!req.complete || error.code === 'ESHUTDOWN') {
      res.shouldKeepAlive = false;
      closingConnections.add(req.socket);
    }
    writeErrorAnswer(res, error, req);
  }

  /** Destroys the client connection: a response already under way must not look complete. */
  private cut(error: ProxyError): void {
    this.settled = true;
    this.error = error;
    this.ctx.stats.requestFailed(this.route.stats);
    this.ctx.report(error, this.req, this.res, this.route);
    this.proxyReq?.destroy();
    this.res.destroy();
  }

  shutdown(): void {
    if (!this.settled && !this.clientGone)
      this.abandon(new ProxyError('ESHUTDOWN', 'still running at the close timeout'));
  }
}

export function proxyHttp(
  ctx: ProxyContext,
  route: Route,
  req: IncomingMessage,
  res: ServerResponse,
): void {
  // A request pipelined behind one we refused and said `Connection: close` to (RFC 9112 §9.6): its
  // framing may be what we refused, and Node closes the connection before it could be answered.
  if (closingConnections.has(req.socket)) {
    ctx.logger.debug(
      `viaduct: ${req.method} ${req.url}: pipelined behind a refused request, not forwarded`,
    );
    return;
  }
  // First: every read of `req` and `res` after this, ours included, gains from it.
  shareShape(req);
  shareShape(res);
  new HttpExchange(ctx, route, req, res).start();
}
