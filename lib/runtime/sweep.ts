const LONGEST_PERIOD = 250;
const SHORTEST_PERIOD = 5;

/**
 * One coarse clock per proxy for deadlines that every request would otherwise arm a socket timer
 * for (Node re-creates a socket's timer on each `setTimeout`, twice per pooled request, and re-arms
 * it on every read and write): the HTTP read timeout, an upgrade handshake's connect and read
 * timeouts, a tunnel's idle timeout, and the idle limit of pooled upstream sockets. A deadline is
 * met late by at most two periods, never early. The clock runs only while `visit` says something
 * is left to watch.
 */
export class Sweep {
  private timer: NodeJS.Timeout | undefined;
  private period = LONGEST_PERIOD;
  private readonly tick = (): void => {
    if (!this.visit(Date.now())) this.stop();
  };

  /** `visit` checks every deadline; it returns false when nothing is left to watch. */
  constructor(private readonly visit: (now: number) => boolean) {}

  /** Deadlines of `ms` are met within an eighth of `ms` per period (at most {@link LONGEST_PERIOD}). */
  cover(ms: number): void {
    const period = Math.max(SHORTEST_PERIOD, Math.min(LONGEST_PERIOD, Math.floor(ms / 8)));
    if (period >= this.period) return;
    this.period = period;
    if (this.timer !== undefined) {
      this.stop();
      this.start();
    }
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
