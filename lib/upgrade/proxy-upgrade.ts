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
import { forwardedPath } from '../routing/forwarded-path';
import { applyToResponse, headerObject } from '../headers/header-policy';
import { connectionOf, responseEndToEnd } from '../headers/hop-by-hop';
import { closeAfterFlush, responseHead } from '../runtime/raw-response';
import { upstreamHeaders } from '../headers/upstream-headers';
import type { Route } from '../routing/route';
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

/**
 * One upgrade on a route, from the match to the 101 (then a {@link Tunnel}) or the refusal. Its
 * connect and read deadlines are checked by the proxy's sweep, as HTTP read timeouts are, rather
 * than by two timers and their listeners per upgrade.
 */
class Handshake extends InFlight implements TunnelHooks {
  private proxyReq: ClientRequest | undefined;
  /** Answered (101, refusal or error): later engine events are echoes. */
  private settled = false;
  private holdsSlot = false;
  private readonly startedAt = Date.now();
  /** When the upstream connection (with TLS, its handshake) was up; 0 until then. The read deadline counts from it. */
  private connectedAt = 0;
  /** For 'close', and for 'end': upgrade sockets allow half-open, and a FIN before the 101 means the client is gone. */
  private readonly onClientGone = (): void => this.onClientClose();
  private readonly onUpstreamSocket = (upstream: Socket): void => {
    if (!upstream.connecting) this.connectedAt = Date.now();
    else upstream.once(this.route.secure ? 'secureConnect' : 'connect', this.onConnected);
  };
  private readonly onConnected = (): void => {
    this.connectedAt = Date.now();
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
    // Gone while a router or a middleware was deciding: its 'close' has passed, nothing would follow it.
    if (socket.destroyed || !socket.writable || socket.readableEnded) return this.onClientClose();
    if (ctx.closing) return this.reject(new ProxyError('ESHUTDOWN'));
    const outgoing = attempt(() => prepare(route, req));
    if (outgoing instanceof ProxyError) return this.reject(outgoing);
    route.tunnelSlots++;
    this.holdsSlot = true;
    ctx.handshakes.add(this);
    ctx.sweep.start();
    socket.once('close', this.onClientGone);
    socket.once('end', this.onClientGone);
    route.engine.ws(socket, this.head, outgoing, this);
  }

  onProxyReq(proxyReq: ClientRequest): void {
    this.proxyReq = proxyReq;
    // 'socket' comes once per request: `on` spares the wrapper `once` would add.
    proxyReq.on('socket', this.onUpstreamSocket);
    this.ctx.emit('proxyReq', proxyReq, this.req, this.socket);
  }

  /** No connection within the connect timeout, or no answer within the read timeout after it. */
  override checkDeadline(now: number): void {
    const { route } = this;
    if (this.connectedAt === 0) {
      if (now - this.startedAt >= route.settings.timeouts.connect)
        this.reject(
          new ProxyError(
            'ECONNECTTIMEOUT',
            `not connected after ${route.settings.timeouts.connect} ms`,
          ),
        );
    } else if (now - this.connectedAt >= route.settings.timeouts.read) {
      this.reject(
        new ProxyError('EREADTIMEOUT', `no handshake answer in ${route.settings.timeouts.read} ms`),
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
    if (this.settled) {
      upstreamSocket.destroy();
      return;
    }
    const headers = this.clientHeaders(proxyRes);
    headers.connection = 'Upgrade';
    headers.upgrade = proxyRes.headers.upgrade;
    // Listeners of 'proxyRes' may still change what the 101 carries.
    proxyRes.headers = headers as IncomingHttpHeaders;
    this.ctx.emit('proxyRes', proxyRes, this.req, this.socket);
    // The tunnel takes over the slot, and is in flight before the handshake leaves, so that close()
    // never finds both lists empty in between.
    this.holdsSlot = false;
    new Tunnel(this.ctx, this.route, this.req, this.socket, upstreamSocket as Socket).open(
      responseHead(101, 'Switching Protocols', proxyRes.headers),
      upstreamHead,
    );
    this.settle();
  }

  /** Anything but 101: passed to the client as HTTP, then the socket is closed. */
  onRefused(proxyRes: IncomingMessage): void {
    if (this.settled) {
      proxyRes.resume();
      return;
    }
    const unrelayable = unrelayableCoding(proxyRes);
    if (unrelayable) {
      proxyRes.socket.destroy();
      return this.reject(
        new ProxyError('EBADRESPONSE', `${unrelayable} from ${this.route.targetLabel}`),
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
      if (proxyRes.complete) closeAfterFlush(socket);
      else socket.destroy();
    });
  }

  onError(error: Error): void {
    if (!this.settled) this.reject(toProxyError(error));
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
    this.settle();
    ctx.stats.tunnelRejected(route.stats);
    ctx.report(error, req, socket, route);
    this.proxyReq?.destroy();
    writeErrorAnswer(socket, error, req, (headers) => this.applyResponsePolicy(headers));
  }

  private settle(): void {
    this.settled = true;
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
