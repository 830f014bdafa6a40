import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Route } from '../routing/route';
import type { ProxyContext } from '../runtime/context';
import { InFlight } from '../runtime/in-flight';
import { closeAfterFlush } from '../runtime/raw-response';
import { clientAddress } from '../headers/forwarding';
import type {
  TunnelCloseCodes,
  TunnelCloseEvent,
  TunnelCloseReason,
  TunnelOpenEvent,
} from '../types';
import { readDirectly } from '../upstream/shared-read-buffer';
import type { Upstream } from '../upstream/upstream';
import { closeFrame, GOING_AWAY } from './close-frame';
import { FrameCursor } from './frame-cursor';

type Side = 'client' | 'upstream';

/** How long the proxy waits for the Close replies after sending its own, before it cuts both sides. */
const CLOSE_REPLY_WAIT = 2_000;

/** The reason carried by the proxy's Close frames, by why the proxy ended the tunnel. */
const CLOSE_REASONS: Partial<Record<TunnelCloseReason, string>> = {
  shutdown: 'server shutting down',
  idle: 'idle timeout',
  expired: 'tunnel lifetime reached',
};

// A socket error destroys the socket; 'close' follows and finds it in `socket.errored`. Until then
// the error must not be uncaught.
const readOnClose = (): void => {};

/** One direction of a tunnel, from `side`'s socket to the other's, followed frame by frame. */
class Direction {
  readonly frames = new FrameCursor();
  /** The proxy's own Close went this way: nothing more from `side` is relayed. */
  proxyClosed = false;
  /** The proxy's Close waits for the end of the frame in flight this way. */
  closePending = false;
  /** The proxy's Close was written this way (the destination could still take it). */
  proxyCloseSent = false;
  /** A Close frame from `side` has been seen. */
  closeSeen = false;
  private resumesOnDrain = false;

  constructor(
    readonly side: Side,
    readonly source: Duplex,
    readonly destination: Duplex,
  ) {}

  /** Writes to the destination; while it is full, the source is paused (one `drain` listener per direction). */
  write(chunk: Buffer): void {
    if (this.destination.write(chunk)) return;
    this.source.pause();
    if (!this.resumesOnDrain) {
      this.resumesOnDrain = true;
      this.destination.on('drain', () => this.source.resume());
    }
  }

  /** True once `side` can send nothing more: it sent its Close, or its connection ended. */
  get finished(): boolean {
    return this.closeSeen || this.source.readableEnded || this.source.destroyed;
  }
}

/**
 * An open tunnel (the upstream answered 101): relays the bytes both ways with backpressure,
 * following WebSocket frame boundaries in each direction, tears one side down when the other goes,
 * and reports why and how much. An idle tunnel costs little memory, a chunk little work: following
 * the frames allocates nothing.
 *
 * The proxy ends a tunnel itself (at `close()`, after `timeouts.read` without a byte either way,
 * at `timeouts.tunnel`) the way a WebSocket endpoint would (RFC 6455 §5.5.1): a Close frame, code
 * 1001, to each side that has not had one, at a frame boundary (a frame in flight is relayed to its
 * end first, nothing after it), then both connections are closed once each side has answered with
 * its own Close (those answers are the proxy's: each side had its closing handshake with it), or
 * cut after {@link CLOSE_REPLY_WAIT} (sooner at `close()`'s deadline).
 *
 * Its deadlines are kept by the proxy's sweep, which compares the count of relayed chunks with what
 * it saw last: a socket timer would be re-armed on every read and write, a large share of the work
 * per WebSocket message (docs/performance.md).
 */
export class Tunnel extends InFlight {
  private reason: TunnelCloseReason | undefined;
  private error: Error | undefined;
  private openSockets = 2;
  private readonly openedAt = Date.now();
  /** When the proxy began ending the tunnel itself; 0 before. */
  private closingAt = 0;
  private shutdownRequested = false;
  /** Cuts both sides when the Close replies take longer than {@link CLOSE_REPLY_WAIT}. */
  private replyTimer: NodeJS.Timeout | undefined;
  /** Chunks relayed either way: the idle timeout's measure of activity. */
  private relayed = 0;
  private upstreamReadAtOpen = 0;
  private upstreamWrittenAtOpen = 0;
  private readonly fromClient: Direction;
  private readonly fromUpstream: Direction;

  constructor(
    private readonly ctx: ProxyContext,
    private readonly route: Route,
    /** The pool's upstream the tunnel goes to: it counts it in flight until it ends. */
    private readonly upstreamServer: Upstream,
    private readonly req: IncomingMessage,
    private readonly client: Duplex,
    private readonly upstream: Socket,
  ) {
    super();
    this.fromClient = new Direction('client', client, upstream);
    this.fromUpstream = new Direction('upstream', upstream, client);
  }

  /** Writes the 101 `head`, then relays: first `upstreamHead`, the bytes that came with the upstream's 101. */
  open(head: string, upstreamHead: Buffer): void {
    const { ctx, route, client, upstream } = this;
    this.upstreamReadAtOpen = upstream.bytesRead - upstreamHead.length;
    this.upstreamWrittenAtOpen = upstream.bytesWritten;
    ctx.tunnels.add(this);
    ctx.sweep.watchTunnel();
    ctx.stats.tunnelOpened(route.stats);
    this.upstreamServer.stats.tunnels++;
    upstream.setNoDelay(true);
    client.on('error', readOnClose);
    upstream.on('error', readOnClose);
    client.on('close', () => this.onSocketClose('client'));
    upstream.on('close', () => this.onSocketClose('upstream'));
    this.relay(this.fromUpstream);
    this.relay(this.fromClient);
    client.write(head);
    if (upstreamHead.length > 0) this.forward(this.fromUpstream, upstreamHead);
    ctx.logger.debug(`viaduct: tunnel opened on route "${route.key}" (${this.upstreamServer.url})`);
    const event: TunnelOpenEvent = {
      route: route.key,
      upstream: this.upstreamServer.url,
      req: this.req,
      clientSocket: client,
      upstreamSocket: upstream,
    };
    ctx.emit('open', event);
    ctx.observers.tunnelOpened(event);
  }

  /** Relays what `direction`'s source sends, read through the shared tunnel buffer where it can be. */
  private relay(direction: Direction): void {
    const onChunk = (chunk: Buffer): void => this.forward(direction, chunk);
    direction.source.on('data', onChunk);
    readDirectly(direction.source, onChunk);
    direction.source.on('end', () => {
      this.reason ??= direction.side;
      direction.destination.end();
      if (this.closingAt !== 0) this.closeIfAnswered();
    });
  }

  /** Relays one chunk in `direction`, frame boundaries followed; once the proxy's Close went that way, it only watches for the reply. */
  private forward(direction: Direction, chunk: Buffer): void {
    this.relayed++;
    const { frames } = direction;
    if (direction.proxyClosed) {
      frames.advance(chunk, 0, false);
    } else if (direction.closePending) {
      const boundary = frames.advance(chunk, 0, true);
      if (boundary > 0)
        direction.write(boundary === chunk.length ? chunk : chunk.subarray(0, boundary));
      if (frames.atBoundary) {
        this.sendClose(direction);
        if (boundary < chunk.length) frames.advance(chunk, boundary, false);
      }
    } else {
      frames.advance(chunk, 0, false);
      direction.write(chunk);
    }
    if (frames.closeCode !== 0 && !direction.closeSeen) this.onCloseFrame(direction);
  }

  /** The first Close frame from `direction.side`: it ended the conversation, unless someone did before. */
  private onCloseFrame(direction: Direction): void {
    direction.closeSeen = true;
    this.reason ??= direction.side;
    if (this.closingAt !== 0) this.closeIfAnswered();
  }

  /** Sends the proxy's Close in `direction`: masked towards the upstream, as a client's are. */
  private sendClose(direction: Direction): void {
    direction.closePending = false;
    direction.proxyClosed = true;
    if (!direction.destination.writable) return;
    direction.proxyCloseSent = true;
    const reason = CLOSE_REASONS[this.reason ?? 'shutdown'] ?? 'going away';
    direction.destination.write(closeFrame(GOING_AWAY, reason, direction.side === 'client'));
  }

  /** Ends the tunnel as a WebSocket endpoint would: a Close frame to each side, then both connections. */
  private beginClose(reason: TunnelCloseReason): void {
    if (this.closingAt !== 0) return;
    this.closingAt = Date.now();
    this.reason ??= reason;
    // Timed on its own: the sweep visits a tunnel only every eighth of its idle timeout.
    this.replyTimer = setTimeout(() => this.cutUnanswered(), CLOSE_REPLY_WAIT);
    this.replyTimer.unref();
    for (const direction of [this.fromClient, this.fromUpstream]) {
      // A Close from its sender went that way already.
      if (direction.closeSeen) continue;
      if (direction.frames.atBoundary) this.sendClose(direction);
      else direction.closePending = true;
    }
    this.closeIfAnswered();
  }

  /** Both sides answered the proxy's Close (or can send nothing more): both connections are closed. */
  private closeIfAnswered(): void {
    if (!this.fromClient.finished || !this.fromUpstream.finished) return;
    closeAfterFlush(this.client);
    closeAfterFlush(this.upstream);
  }

  private onSocketClose(side: Side): void {
    const socket = side === 'client' ? this.client : this.upstream;
    if (socket.errored) this.fail(socket.errored);
    this.reason ??= side;
    // While the proxy ends the tunnel, the other side still has its Close reply to give (an
    // upstream typically closes at once after its own, well before the client's reply arrives).
    if (this.closingAt !== 0 && !socket.errored) this.closeIfAnswered();
    else (side === 'client' ? this.upstream : this.client).destroy();
    if (--this.openSockets === 0) this.finish();
  }

  /** A socket error on either side ends the tunnel. */
  private fail(error: Error): void {
    if (this.error === undefined && this.reason === undefined) {
      this.ctx.logger.warn(`viaduct: tunnel on route "${this.route.key}" failed: ${error.message}`);
      this.ctx.emit('error', error, this.req, this.client);
    }
    this.reason ??= 'error';
    this.error ??= error;
    this.destroyBoth();
  }

  /** The tunnel's longest life, and the idle timeout (no chunk either way for `timeouts.read`). */
  override checkDeadline(now: number): void {
    // Closing: its own timer keeps the wait for the replies.
    if (this.closingAt !== 0) return;
    const { read, tunnel } = this.route.settings.timeouts;
    if (tunnel !== undefined && now - this.openedAt >= tunnel) this.beginClose('expired');
    else if (this.stalledFor(this.relayed, now) >= read) this.beginClose('idle');
  }

  private cutUnanswered(): void {
    const silent = [this.fromClient, this.fromUpstream]
      .filter((direction) => !direction.finished)
      .map((direction) => direction.side);
    this.ctx.logger.info(
      `viaduct: tunnel on route "${this.route.key}": no Close reply from the ${silent.join(' and the ')} within ${CLOSE_REPLY_WAIT} ms: cut`,
    );
    this.destroyBoth();
  }

  /** The first call ends the tunnel with Close frames; a second (at `close()`'s deadline) cuts both sides. */
  shutdown(): void {
    if (this.shutdownRequested) return this.destroyBoth();
    this.shutdownRequested = true;
    this.beginClose('shutdown');
  }

  private destroyBoth(): void {
    this.client.destroy();
    this.upstream.destroy();
  }

  private closeCodes(): TunnelCloseCodes {
    const code: TunnelCloseCodes = {};
    if (this.fromClient.frames.closeCode !== 0) code.client = this.fromClient.frames.closeCode;
    if (this.fromUpstream.frames.closeCode !== 0)
      code.upstream = this.fromUpstream.frames.closeCode;
    if (this.fromClient.proxyCloseSent || this.fromUpstream.proxyCloseSent) code.proxy = GOING_AWAY;
    return code;
  }

  private finish(): void {
    const { ctx, route } = this;
    clearTimeout(this.replyTimer);
    ctx.tunnels.delete(this);
    route.tunnelSlots--;
    ctx.stats.tunnelClosed(route.stats);
    this.upstreamServer.stats.active--;
    const reason = this.reason ?? 'error';
    const duration = Date.now() - this.openedAt;
    const bytesFromClient = this.upstream.bytesWritten - this.upstreamWrittenAtOpen;
    const bytesFromUpstream = this.upstream.bytesRead - this.upstreamReadAtOpen;
    ctx.logger.debug(
      `viaduct: tunnel closed on route "${route.key}": ${reason} after ${duration} ms, ${bytesFromClient} B from client, ${bytesFromUpstream} B from upstream`,
    );
    const event: TunnelCloseEvent = {
      route: route.key,
      upstream: this.upstreamServer.url,
      req: this.req,
      reason,
      duration,
      bytesFromClient,
      bytesFromUpstream,
      code: this.closeCodes(),
      ...(this.error && { error: this.error }),
    };
    ctx.emit('close', event);
    ctx.observers.tunnelClosed(event, () => clientAddress(this.req, route.settings.trustProxy));
    ctx.released();
  }
}
