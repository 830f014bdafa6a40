const LONGEST_PERIOD = 250;
const SHORTEST_PERIOD = 5;

/**
 * One coarse clock per proxy for deadlines that every request would otherwise arm a socket timer
 * for (Node re-creates a socket's timer on each `setTimeout`, twice per pooled request, and re-arms
 * it on every read and write): the HTTP read timeout, an upgrade handshake's connect and read
 * timeouts, the idle limit of pooled upstream sockets, and the tunnels' idle timeout and longest
 * life. It ticks every eighth of the shortest of the first kind (at most every 250 ms), and meets
 * those deadlines at most two ticks late, never early.
 *
 * Tunnels live long and their deadlines are long: each is visited only every eighth of the
 * shortest tunnel deadline (7.5 s with a 60 s idle timeout), a slice of them per tick, so that
 * thousands of idle tunnels cost next to nothing and no tick stalls the process. Their deadlines
 * are met at most a quarter of the deadline late, never early.
 *
 * The clock runs only while `visit` says something is left to watch.
 */
export class Sweep {
  private timer: NodeJS.Timeout | undefined;
  private period = LONGEST_PERIOD;
  /** How often each tunnel is visited, in ms; at least one period. */
  private tunnelCadence = Number.POSITIVE_INFINITY;
  private readonly tick = (): void => {
    if (!this.visit(Date.now(), Math.min(1, this.period / this.tunnelCadence))) this.stop();
  };

  /**
   * `visit(now, share)` checks every deadline of the first kind and `share` of the tunnels (the
   * next ones in turn); it returns false when nothing is left to watch.
   */
  constructor(private readonly visit: (now: number, share: number) => boolean) {}

  /** Deadlines of `ms` are met within an eighth of `ms` per period (at most {@link LONGEST_PERIOD}). */
  cover(ms: number): void {
    const period = Math.max(SHORTEST_PERIOD, Math.min(LONGEST_PERIOD, Math.floor(ms / 8)));
    if (period < this.period) {
      this.period = period;
      if (this.timer !== undefined) {
        this.stop();
        this.start();
      }
    }
  }

  /** Tunnel deadlines of `ms`: each tunnel is visited every eighth of `ms` (and at least every period). */
  coverTunnels(ms: number): void {
    this.cover(ms);
    this.tunnelCadence = Math.min(
      this.tunnelCadence,
      Math.max(SHORTEST_PERIOD, Math.floor(ms / 8)),
    );
  }

  start(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(this.tick, this.period);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
