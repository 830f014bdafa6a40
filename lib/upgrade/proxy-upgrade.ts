import type {
  ClientRequest,
  IncomingHttpHeaders,
  IncomingMessage,
  OutgoingHttpHeaders,
} from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { announcesBody, unrelayableCoding } from '../headers/body-framing';
import type { ProxyContext } from '../runtime/context';
import { InFlight } from '../runtime/in-flight';
import type { OutgoingRequest, TunnelHooks } from '../upstream/engine';
import { writeErrorAnswer } from '../runtime/error-answer';
import { ProxyError, attempt, toProxyError } from '../runtime/proxy-error';
import { performance } from 'node:perf_hooks';
import { clientAddress } from '../headers/forwarding';
import { requestOf } from '../internals/node';
import { forwardedPath, upstreamPath } from '../routing/forwarded-path';
import { failureOf, type UpstreamFailure } from '../upstream/failure';
import type { Upstream } from '../upstream/upstream';
import { applyToResponse, headerObject } from '../headers/header-policy';
import { connectionOf, responseEndToEnd } from '../headers/hop-by-hop';
import { closeAfterFlush, responseHead } from '../runtime/raw-response';
import { upstreamHeaders } from '../headers/upstream-headers';
import type { Route } from '../routing/route';
import type { RequestEndMessage } from '../types';
import { Tunnel } from './tunnel';

/**
 * An RFC 6455 opening handshake: HTTP/1.1 GET with a key and no body. Node hands body bytes to the
 * upgrade as tunnel data, so an upgrade that announces a body is refused rather than reframed.
 */
function isWebSocketHandshake(req: IncomingMessage): boolean {
  const { headers } = req;
  return (
    req.method === 'GET' &&
    req.httpVersion === '1.1' &&
    headers.upgrade?.trim().toLowerCase() === 'websocket' &&
    typeof headers['sec-websocket-key'] === 'string' &&
    !announcesBody(req)
  );
}

/** Decides what to send upstream, or the error that refuses the upgrade first (returned or thrown). */
function prepare(route: Route, req: IncomingMessage): OutgoingRequest | ProxyError {
  if (!route.settings.ws) return new ProxyError('ENOWS');
  if (!isWebSocketHandshake(req))
    return new ProxyError('EBADUPGRADE', `${req.method} with Upgrade: ${req.headers.upgrade}`);
  const path = forwardedPath(req.url ?? '/', route, req);
  if (path === undefined) return new ProxyError('EBADPATH', `${req.method} ${req.url}`);
  if (route.settings.allowedOrigins && !route.settings.allowedOrigins(req.headers.origin, req)) {
    return new ProxyError('EFORBIDDENORIGIN', `Origin: ${req.headers.origin ?? '(none)'}`);
  }
  if (route.tunnelSlots >= route.settings.maxTunnels)
    return new ProxyError('ETUNNELLIMIT', `${route.settings.maxTunnels} open`);
  return { path, headers: upstreamHeaders(req, route.settings, true) };
}

const NO_HEAD = Buffer.alloc(0);

/**
 * One upgrade on a route, from the match to the 101 (then a {@link Tunnel}) or the refusal, over
 * one try per upstream of the route's pool: a handshake that could not reach one goes to the next
 * (a GET without a body, always safe to repeat). Its connect and read deadlines are checked by the
 * proxy's sweep, as HTTP read timeouts are, rather than by two timers and their listeners per try.
 */
class Handshake extends InFlight implements TunnelHooks {
  /** The current try's upstream request. */
  private proxyReq: ClientRequest | undefined;
  private upstream: Upstream | undefined;
  private tries = 0;
  private tried: Upstream[] | undefined;
  /** The current try's upstream has answered or failed: its health has been told. */
  private judged = false;
  private outgoing: OutgoingRequest | undefined;
  private routePath = '';
  private lastUpstream: string | undefined;
  /** Someone watches how requests go (channels, access log, metrics): the handshake is timed (ms). */
  private watched = false;
  private watchedSince = 0;
  private bytesAtStart = 0;
  /** The client's address, read while its socket is open. */
  private client = '';
  private connectMs: number | undefined;
  private firstByteMs: number | undefined;
  /** The status the client got: the 101, the upstream's refusal, the proxy's error; 499 when it left first. */
  private status = 499;
  private error: ProxyError | undefined;
  /** Answered (101, refusal or error): later engine events are echoes. */
  private settled = false;
  private holdsSlot = false;
  /** When the current try started. */
  private startedAt = 0;
  /** When the upstream connection (with TLS, its handshake) was up; 0 until then. The read deadline counts from it. */
  private connectedAt = 0;
  /** For 'close', and for 'end': upgrade sockets allow half-open, and a FIN before the 101 means the client is gone. */
  private readonly onClientGone = (): void => this.onClientClose();
  private readonly onUpstreamSocket = (upstream: Socket): void => {
    if (!upstream.connecting) this.connectedAt = Date.now();
    else upstream.once(this.upstream?.secure ? 'secureConnect' : 'connect', this.onConnected);
  };
  private readonly onConnected = (): void => {
    this.connectedAt = Date.now();
    if (this.watched) this.connectMs = performance.now() - this.watchedSince;
  };

  constructor(
    private readonly ctx: ProxyContext,
    private readonly route: Route,
    private readonly req: IncomingMessage,
    private readonly socket: Duplex,
    private readonly head: Buffer,
  ) {
    super();
  }

  start(): void {
    const { ctx, route, req, socket } = this;
    if (ctx.observers.watchingRequests) {
      this.watched = true;
      this.watchedSince = performance.now();
      this.bytesAtStart = socketBytes(socket);
      this.client = clientAddress(req, route.settings.trustProxy);
    }
    // Gone while a router or a middleware was deciding: its 'close' has passed, nothing would follow it.
    if (socket.destroyed || !socket.writable || socket.readableEnded) return this.onClientClose();
    if (ctx.closing) return this.reject(new ProxyError('ESHUTDOWN'));
    const outgoing = attempt(() => prepare(route, req));
    if (outgoing instanceof ProxyError) return this.reject(outgoing);
    route.tunnelSlots++;
    this.holdsSlot = true;
    ctx.handshakes.add(this);
    ctx.sweep.watchShort();
    socket.once('close', this.onClientGone);
    socket.once('end', this.onClientGone);
    this.outgoing = outgoing;
    this.routePath = outgoing.path;
    this.send();
  }

  /**
   * Sends the handshake to the pool's next upstream, or answers 502 when none is left.
   * `failed`: why the last try failed, when this is the next one.
   */
  private send(failed?: string): void {
    const { route } = this;
    // A hashKey is the user's: what it throws is answered as a failing router's is.
    const picked = attempt(() => route.pool.pick(this.req, this.tried));
    if (picked instanceof ProxyError) return this.reject(picked);
    const upstream = picked;
    if (!upstream) {
      const why =
        this.tries === 0
          ? `every upstream of ${route.targetLabel} is down`
          : `${this.tries} tries failed, the last: ${failed}`;
      return this.reject(new ProxyError('ENOUPSTREAM', why));
    }
    if (failed)
      this.ctx.logger.info(
        `viaduct: upgrade on route "${route.key}": ${failed}; trying ${upstream.url}`,
      );
    const outgoing = this.outgoing!;
    const thisTry = ++this.tries;
    if (thisTry === 1)
      this.ctx.observers.requestStarted({
        route: route.key,
        upstream: upstream.url,
        req: this.req,
      });
    this.upstream = upstream;
    this.lastUpstream = upstream.url;
    this.judged = false;
    this.startedAt = Date.now();
    this.connectedAt = 0;
    upstream.stats.requests++;
    upstream.stats.active++;
    outgoing.path = upstreamPath(upstream.basePath, this.routePath);
    this.proxyReq = undefined;
    // The bytes that came with the upgrade went back into the client's socket on the first try.
    const proxyReq = upstream.engine.ws(
      this.socket,
      thisTry === 1 ? this.head : NO_HEAD,
      outgoing,
      this,
    );
    if (this.tries === thisTry && !this.settled) this.proxyReq = proxyReq;
    else if (proxyReq !== this.proxyReq) proxyReq?.destroy();
  }

  /** The current try is over (its upstream now in a tunnel's hands, with `keep`). */
  private releaseUpstream(keep = false): void {
    const upstream = this.upstream;
    if (!upstream) return;
    this.upstream = undefined;
    if (!keep) upstream.stats.active--;
    if (!this.judged && upstream.probing) upstream.probeAbandoned();
  }

  /** The upstream answered (a 101 or a refusal) with `status`: its health is told. */
  private answered(status: number): void {
    this.status = status;
    if (this.watched) this.firstByteMs = performance.now() - this.watchedSince;
    if (this.judged || !this.upstream) return;
    this.judged = true;
    this.route.pool.answered(this.upstream);
  }

  /**
   * The current try failed. A failure of the upstream's counts against its health, and the
   * handshake goes to the next upstream while tries are left; with them used up, a pool answers 502.
   */
  private upstreamFailed(error: ProxyError, failure: UpstreamFailure | undefined): void {
    const { route, upstream } = this;
    if (failure === undefined || !upstream || this.ctx.closing) return this.reject(error);
    if (!this.judged) {
      this.judged = true;
      route.pool.failed(upstream, error.message);
    }
    if (this.tries > route.pool.retries) {
      return this.reject(
        route.pool.upstreams.length > 1
          ? new ProxyError('ENOUPSTREAM', `${this.tries} tries failed, the last: ${error.message}`)
          : error,
      );
    }
    this.proxyReq?.destroy();
    this.releaseUpstream();
    (this.tried ??= []).push(upstream);
    this.send(`${upstream.url} failed (${error.message})`);
  }

  onProxyReq(proxyReq: ClientRequest): void {
    if (this.settled || (this.proxyReq !== undefined && proxyReq !== this.proxyReq)) {
      proxyReq.destroy();
      return;
    }
    // 'socket' comes once per request: `on` spares the wrapper `once` would add.
    proxyReq.on('socket', this.onUpstreamSocket);
    this.ctx.emit('proxyReq', proxyReq, this.req, this.socket);
  }

  /** No connection within the connect timeout, or no answer within the read timeout after it. */
  override checkDeadline(now: number): void {
    const { route } = this;
    const { connect, read } = route.settings.timeouts;
    if (this.connectedAt === 0) {
      if (now - this.startedAt >= connect)
        this.upstreamFailed(
          new ProxyError('ECONNECTTIMEOUT', `not connected after ${connect} ms`),
          'connect',
        );
    } else if (now - this.connectedAt >= read) {
      this.upstreamFailed(
        new ProxyError('EREADTIMEOUT', `no handshake answer in ${read} ms`),
        'read',
      );
    }
  }

  /** The response policy over upstream headers, for the 101 and for a refusal. */
  private clientHeaders(proxyRes: IncomingMessage): OutgoingHttpHeaders {
    const headers: OutgoingHttpHeaders = responseEndToEnd(proxyRes.headers, proxyRes.statusCode);
    this.applyResponsePolicy(headers);
    return headers;
  }

  private applyResponsePolicy(headers: OutgoingHttpHeaders): void {
    applyToResponse(
      this.route.settings.headers.response,
      headerObject(headers),
      this.req,
      (error) => {
        this.ctx.logger.error(
          `viaduct: route "${this.route.key}": a response header rule failed: ${String(error)}`,
        );
      },
    );
  }

  onUpgrade(proxyRes: IncomingMessage, upstreamSocket: Duplex, upstreamHead: Buffer): void {
    // A try given up on was destroyed first: only the current one can get here.
    if (this.settled) {
      upstreamSocket.destroy();
      return;
    }
    this.answered(101);
    const upstream = this.upstream!;
    const headers = this.clientHeaders(proxyRes);
    headers.connection = 'Upgrade';
    headers.upgrade = proxyRes.headers.upgrade;
    // Listeners of 'proxyRes' may still change what the 101 carries.
    proxyRes.headers = headers as IncomingHttpHeaders;
    this.ctx.emit('proxyRes', proxyRes, this.req, this.socket);
    // The tunnel takes over the slot, and is in flight before the handshake leaves, so that close()
    // never finds both lists empty in between.
    this.holdsSlot = false;
    this.releaseUpstream(true);
    const head = responseHead(101, 'Switching Protocols', proxyRes.headers);
    new Tunnel(
      this.ctx,
      this.route,
      upstream,
      this.req,
      this.socket,
      upstreamSocket as Socket,
    ).open(head, upstreamHead);
    this.settle();
    // The bytes of the 101 itself: the tunnel's own go on after it.
    if (this.watched) this.observed(Buffer.byteLength(head));
  }

  /** Anything but 101: passed to the client as HTTP, then the socket is closed. */
  onRefused(proxyRes: IncomingMessage): void {
    if (this.settled || requestOf(proxyRes) !== this.proxyReq) {
      proxyRes.resume();
      return;
    }
    this.answered(proxyRes.statusCode ?? 502);
    const unrelayable = unrelayableCoding(proxyRes);
    if (unrelayable) {
      proxyRes.socket.destroy();
      return this.reject(
        new ProxyError('EBADRESPONSE', `${unrelayable} from ${this.upstream?.url}`),
      );
    }
    this.settle();
    this.ctx.stats.tunnelRejected(this.route.stats);
    this.ctx.logger.info(
      `viaduct: upgrade on route "${this.route.key}" refused by the upstream with ${proxyRes.statusCode}`,
    );
    this.ctx.emit('proxyRes', proxyRes, this.req, this.socket);
    const headers = this.clientHeaders(proxyRes);
    headers.connection = connectionOf(headers as IncomingHttpHeaders, false);
    const socket = this.socket;
    socket.write(responseHead(proxyRes.statusCode ?? 502, proxyRes.statusMessage, headers));
    // A handshake's connection is not reused, whatever the answer allows: Node would hand it back
    // to an agent's pool, and the plain-HTTP handshakes have no agent that would close it.
    const upstream = proxyRes.socket;
    proxyRes.pipe(socket, { end: false });
    proxyRes.once('close', () => {
      upstream.destroy();
      if (this.watched) this.observed();
      if (proxyRes.complete) closeAfterFlush(socket);
      else socket.destroy();
    });
  }

  onError(error: Error, proxyReq: ClientRequest | undefined): void {
    if (proxyReq !== undefined && this.proxyReq !== undefined && proxyReq !== this.proxyReq) return;
    if (!this.settled) this.upstreamFailed(toProxyError(error), failureOf(error));
    else
      this.ctx.logger.debug(
        `viaduct: upgrade on route "${this.route.key}" after it was answered: ${error.message}`,
      );
  }

  private onClientClose(): void {
    if (this.settled) return;
    const { socket } = this;
    // Not by the client (a FIN or a reset) and not by us: another upgrade listener ended it.
    const endedHere = socket.writableEnded || (!socket.readableEnded && !socket.errored);
    this.settle();
    if (this.watched) this.observed();
    this.ctx.stats.tunnelRejected(this.route.stats);
    socket.destroy();
    this.proxyReq?.destroy();
    if (endedHere) {
      this.ctx.logger.warn(
        `viaduct: upgrade on route "${this.route.key}": the client socket was ended by another upgrade listener before the upstream answered (socket.io does this after 1 s unless destroyUpgrade: false)`,
      );
    } else {
      this.ctx.logger.debug(
        `viaduct: upgrade on route "${this.route.key}": the client went away during the handshake`,
      );
    }
  }

  /** Refuses the upgrade with a proxy-made error written to the raw socket. */
  private reject(error: ProxyError): void {
    const { ctx, route, req, socket } = this;
    this.status = error.status;
    this.error = error;
    this.settle();
    ctx.stats.tunnelRejected(route.stats);
    ctx.report(error, req, socket, route);
    this.proxyReq?.destroy();
    writeErrorAnswer(socket, error, req, (headers) => this.applyResponsePolicy(headers));
    if (this.watched) this.observed();
  }

  private settle(): void {
    this.settled = true;
    this.releaseUpstream();
    this.socket.removeListener('close', this.onClientGone);
    this.socket.removeListener('end', this.onClientGone);
    if (this.holdsSlot) {
      this.holdsSlot = false;
      this.route.tunnelSlots--;
    }
    if (this.ctx.handshakes.delete(this)) this.ctx.released();
  }

  shutdown(): void {
    if (!this.settled) this.reject(new ProxyError('ESHUTDOWN'));
  }

  /** Tells the observers how the handshake went, as a request: `bytes` sent to the client, else those written since it began. */
  private observed(bytes = socketBytes(this.socket) - this.bytesAtStart): void {
    const { route, req } = this;
    const timings: RequestEndMessage['timings'] = { total: performance.now() - this.watchedSince };
    if (this.connectMs !== undefined) timings.connect = this.connectMs;
    if (this.firstByteMs !== undefined) timings.firstByte = this.firstByteMs;
    this.ctx.observers.requestEnded(
      {
        route: route.key,
        ...(this.lastUpstream !== undefined && { upstream: this.lastUpstream }),
        req,
        status: this.status,
        ...(this.error && { error: this.error }),
        tries: this.tries,
        timings,
      },
      { client: this.client, bytes },
    );
  }
}

/** What a raw socket wrote so far (a stream that is not a `net.Socket` counts nothing). */
function socketBytes(socket: Duplex): number {
  return (socket as Duplex & { bytesWritten?: number }).bytesWritten ?? 0;
}

export function proxyUpgrade(
  ctx: ProxyContext,
  route: Route,
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
): void {
  new Handshake(ctx, route, req, socket, head).start();
}
