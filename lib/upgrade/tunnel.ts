import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { CloseFrameWatcher } from './close-frame';
import type { ProxyContext } from '../runtime/context';
import { InFlight } from '../runtime/in-flight';
import { closeAfterFlush } from '../runtime/raw-response';
import type { Route } from '../routing/route';
import type { TunnelCloseReason } from '../types';

type Side = 'client' | 'upstream';

// A socket error destroys the socket; 'close' follows and finds it in `socket.errored`. Until then
// the error must not be uncaught.
const readOnClose = (): void => {};

/**
 * An open tunnel (the upstream answered 101): relays the bytes both ways with backpressure, closes
 * after the idle timeout, tears one side down when the other goes, and reports why and how much.
 * One listener per event and socket: an idle tunnel costs little memory, a chunk little work.
 *
 * The idle timeout is kept by the proxy's sweep, which compares the count of relayed chunks with
 * what it saw last: a socket timer would be re-armed on every read and write, a large share of
 * the work per WebSocket message (docs/performance.md).
 */
export class Tunnel extends InFlight {
  private reason: TunnelCloseReason | undefined;
  private error: Error | undefined;
  private openSockets = 2;
  private shutdownStarted = false;
  private readonly openedAt = Date.now();
  /** Chunks relayed either way: the idle timeout's measure of activity. */
  private relayed = 0;
  private upstreamReadAtOpen = 0;
  private upstreamWrittenAtOpen = 0;

  constructor(
    private readonly ctx: ProxyContext,
    private readonly route: Route,
    private readonly req: IncomingMessage,
    private readonly client: Duplex,
    private readonly upstream: Socket,
  ) {
    super();
  }

  /** Writes the 101 `head`, then relays: first `upstreamHead`, the bytes that came with the upstream's 101. */
  open(head: string, upstreamHead: Buffer): void {
    const { ctx, route, client, upstream } = this;
    this.upstreamReadAtOpen = upstream.bytesRead - upstreamHead.length;
    this.upstreamWrittenAtOpen = upstream.bytesWritten;
    ctx.tunnels.add(this);
    ctx.sweep.start();
    ctx.stats.tunnelOpened(route.stats);
    upstream.setNoDelay(true);
    client.on('error', readOnClose);
    upstream.on('error', readOnClose);
    client.on('close', () => this.onSocketClose('client'));
    upstream.on('close', () => this.onSocketClose('upstream'));
    const fromUpstream = this.relay('upstream', upstream, client);
    this.relay('client', client, upstream);
    client.write(head);
    if (upstreamHead.length > 0) fromUpstream(upstreamHead);
    ctx.logger.debug(`viaduct: tunnel opened on route "${route.key}" (${route.targetLabel})`);
    ctx.emit('open', {
      route: route.key,
      req: this.req,
      clientSocket: client,
      upstreamSocket: upstream,
    });
  }

  /** Relays `source` to `destination`; returns the function that forwards one chunk. */
  private relay(side: Side, source: Duplex, destination: Duplex): (chunk: Buffer) => void {
    const frames = new CloseFrameWatcher();
    const forward = (chunk: Buffer): void => {
      this.relayed++;
      // The first close frame either way says who ended the conversation; later frames do not matter.
      if (this.reason === undefined && frames.feed(chunk)) this.reason = side;
      if (!destination.write(chunk)) {
        source.pause();
        destination.once('drain', () => source.resume());
      }
    };
    source.on('data', forward);
    source.on('end', () => {
      this.reason ??= side;
      destination.end();
    });
    return forward;
  }

  private onSocketClose(side: Side): void {
    const socket = side === 'client' ? this.client : this.upstream;
    if (socket.errored) this.fail(socket.errored);
    this.reason ??= side;
    (side === 'client' ? this.upstream : this.client).destroy();
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

  /** Idle: no chunk relayed either way for the read timeout. */
  override checkDeadline(now: number): void {
    if (this.stalledFor(this.relayed, now) >= this.route.settings.timeouts.read) {
      this.reason ??= 'idle';
      this.destroyBoth();
    }
  }

  /** The first call closes both sides once their data is flushed; a second (at `close()`'s deadline) destroys them. */
  shutdown(): void {
    if (this.shutdownStarted) return this.destroyBoth();
    this.shutdownStarted = true;
    this.reason ??= 'shutdown';
    closeAfterFlush(this.client);
    closeAfterFlush(this.upstream);
  }

  private destroyBoth(): void {
    this.client.destroy();
    this.upstream.destroy();
  }

  private finish(): void {
    const { ctx, route } = this;
    ctx.tunnels.delete(this);
    route.tunnelSlots--;
    ctx.stats.tunnelClosed(route.stats);
    const reason = this.reason ?? 'error';
    const duration = Date.now() - this.openedAt;
    const bytesFromClient = this.upstream.bytesWritten - this.upstreamWrittenAtOpen;
    const bytesFromUpstream = this.upstream.bytesRead - this.upstreamReadAtOpen;
    ctx.logger.debug(
      `viaduct: tunnel closed on route "${route.key}": ${reason} after ${duration} ms, ${bytesFromClient} B from client, ${bytesFromUpstream} B from upstream`,
    );
    ctx.emit('close', {
      route: route.key,
      req: this.req,
      reason,
      duration,
      bytesFromClient,
      bytesFromUpstream,
      ...(this.error && { error: this.error }),
    });
    ctx.released();
  }
}
