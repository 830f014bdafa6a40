import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { CloseFrameWatcher } from './close-frame';
import type { ProxyContext } from './context';
import { InFlight } from './in-flight';
import { closeAfterFlush } from './raw-response';
import type { Route } from './route';
import type { TunnelCloseReason } from './types';

type Side = 'client' | 'upstream';

/**
 * An open tunnel (the upstream answered 101). The engine pipes the bytes; this adds what it lacks:
 * the idle timeout, teardown of one side when the other goes, the reason, and the byte counts.
 */
export class Tunnel extends InFlight {
  private reason: TunnelCloseReason | undefined;
  private error: Error | undefined;
  private openSockets = 2;
  private readonly openedAt = Date.now();
  private readonly upstreamReadAtOpen: number;
  private readonly upstreamWrittenAtOpen: number;
  private readonly watchers: Array<[Duplex, (chunk: Buffer) => void]> = [];

  constructor(
    private readonly ctx: ProxyContext,
    private readonly route: Route,
    private readonly req: IncomingMessage,
    private readonly client: Duplex,
    private readonly upstream: Socket,
    /** Tunnel bytes the upstream sent along with its 101, already read. */
    upstreamHeadLength: number,
  ) {
    super();
    this.upstreamReadAtOpen = upstream.bytesRead - upstreamHeadLength;
    this.upstreamWrittenAtOpen = upstream.bytesWritten;
  }

  open(): void {
    const { ctx, route, client, upstream } = this;
    ctx.tunnels.add(this);
    ctx.stats.tunnelOpened(route.stats);
    // Activity in either direction touches the client socket (a read or a write), so one timer covers both.
    (client as Socket).setTimeout(route.readTimeout);
    client.on('timeout', () => this.end('idle'));
    this.watch('client', client);
    this.watch('upstream', upstream);
    client.on('end', () => this.noteCause('client'));
    upstream.on('end', () => this.noteCause('upstream'));
    client.on('error', (error: Error) => this.fail(error));
    upstream.on('error', (error: Error) => this.fail(error));
    client.on('close', () => this.onSocketClose('client'));
    upstream.on('close', () => this.onSocketClose('upstream'));
    ctx.logger.debug(`viaduct: tunnel opened on route "${route.key}" (${route.targetLabel})`);
    ctx.emit('open', { route: route.key, req: this.req, clientSocket: client, upstreamSocket: upstream });
  }

  private watch(side: Side, socket: Duplex): void {
    const watcher = new CloseFrameWatcher();
    const onData = (chunk: Buffer): void => {
      if (watcher.feed(chunk)) {
        this.noteCause(side);
        this.unwatch();
      }
    };
    socket.on('data', onData);
    this.watchers.push([socket, onData]);
  }

  private unwatch(): void {
    for (const [socket, onData] of this.watchers) socket.removeListener('data', onData);
    this.watchers.length = 0;
  }

  /** The first side to close the conversation (close frame, FIN or close) is why the tunnel ended. */
  private noteCause(side: Side): void {
    this.reason ??= side;
  }

  private onSocketClose(side: Side): void {
    this.noteCause(side);
    (side === 'client' ? this.upstream : this.client).destroy();
    if (--this.openSockets === 0) this.finish();
  }

  /** A socket error on either side ends the tunnel. */
  fail(error: Error): void {
    if (this.error === undefined && this.reason === undefined) {
      this.ctx.logger.warn(`viaduct: tunnel on route "${this.route.key}" failed: ${error.message}`);
      this.ctx.emit('error', error, this.req, this.client);
    }
    this.reason ??= 'error';
    this.error ??= error;
    this.client.destroy();
    this.upstream.destroy();
  }

  private end(reason: 'idle' | 'shutdown'): void {
    this.reason ??= reason;
    if (reason === 'idle') {
      this.client.destroy();
      this.upstream.destroy();
    } else {
      closeAfterFlush(this.client);
      closeAfterFlush(this.upstream);
    }
  }

  shutdown(): void {
    this.end('shutdown');
  }

  private finish(): void {
    const { ctx, route } = this;
    this.unwatch();
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
    ctx.emit('close', { route: route.key, req: this.req, reason, duration, bytesFromClient, bytesFromUpstream, ...(this.error && { error: this.error }) });
    ctx.released();
  }
}
