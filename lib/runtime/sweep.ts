const LONGEST_PERIOD = 250;
const SHORTEST_PERIOD = 5;
// Tunnels visited in one tick at most, while there are more of them than that per cadence. An idle
// tunnel's visit costs the cache misses of reaching it (about 0.75 µs here), less in long runs than
// in short ones, so an idle proxy visits its tunnels in as few ticks as it can without stalling:
// 8,192 visits take about 6 ms. Under traffic the short ticks take a share each instead.
const LARGEST_SLICE = 8192;

/** What the sweep watches, visited on each of its ticks. */
export interface SweepWatch {
  /** Checks the short deadlines (requests, handshakes); false when none is left in flight. */
  checkShort(now: number): boolean;
  /** Checks `share` of the tunnels, the next ones in turn; returns how many tunnels there are. */
  checkTunnels(now: number, share: number): number;
  /** Retires the pooled sockets past their idle limit; returns when the next one is due (∞: none). */
  retirePooled(now: number): number;
}

/**
 * One coarse clock per proxy for deadlines that every request would otherwise arm a socket timer
 * for (Node re-creates a socket's timer on each `setTimeout`, twice per pooled request, and re-arms
 * it on every read and write): the HTTP read timeout, an upgrade handshake's connect and read
 * timeouts, the idle limit of pooled upstream sockets, and the tunnels' idle timeout and longest
 * life.
 *
 * While requests or handshakes are in flight it ticks every eighth of the shortest of their
 * deadlines (at most every 250 ms), and meets them at most two ticks late, never early. Tunnels
 * live long and their deadlines are long: each is visited every eighth of the shortest tunnel
 * deadline (7.5 s with a 60 s idle timeout), and their deadlines are met at most a quarter of the
 * deadline late, never early. A pooled socket is retired when it is due. With nothing but tunnels
 * and pooled sockets to watch, the sweep wakes only for those: an idle process wakes once per
 * tunnel cadence with up to 8,192 tunnels, more often beyond.
 */
export class Sweep {
  private timer: NodeJS.Timeout | undefined;
  /** When the armed timer fires (∞: none). */
  private dueAt = Number.POSITIVE_INFINITY;
  /** The timer is armed at the short period, for requests and handshakes in flight. */
  private short = false;
  private period = LONGEST_PERIOD;
  /** How often each tunnel is visited, in ms. */
  private tunnelCadence = Number.POSITIVE_INFINITY;
  /** The last tick: the tunnels' share of a tick is the time since, over their cadence. */
  private lastTickAt = 0;
  private readonly tick = (): void => {
    this.timer = undefined;
    this.dueAt = Number.POSITIVE_INFINITY;
    const now = Date.now();
    const share = Math.min(1, (now - this.lastTickAt) / this.tunnelCadence);
    this.lastTickAt = now;
    this.short = this.watch.checkShort(now);
    let delay = this.short ? this.period : Number.POSITIVE_INFINITY;
    const tunnels = this.watch.checkTunnels(now, share);
    if (tunnels > 0) delay = Math.min(delay, this.sliceWait(tunnels));
    const nextRetire = this.watch.retirePooled(now);
    delay = Math.min(delay, Math.max(SHORTEST_PERIOD, nextRetire - now));
    if (delay !== Number.POSITIVE_INFINITY) this.arm(delay, now);
  };
  constructor(private readonly watch: SweepWatch) {}

  /** Deadlines of `ms` are met within an eighth of `ms` per period (at most {@link LONGEST_PERIOD}). */
  cover(ms: number): void {
    const period = Math.max(SHORTEST_PERIOD, Math.min(LONGEST_PERIOD, Math.floor(ms / 8)));
    if (period >= this.period) return;
    this.period = period;
    if (this.short) this.soonest(period);
  }

  /** Tunnel deadlines of `ms`: each tunnel is visited every eighth of `ms`. */
  coverTunnels(ms: number): void {
    const cadence = Math.max(SHORTEST_PERIOD, Math.floor(ms / 8));
    if (cadence >= this.tunnelCadence) return;
    this.tunnelCadence = cadence;
    if (this.timer !== undefined) this.soonest(cadence);
  }

  /** A request or a handshake is in flight: the short period. Called per request, so one test when already short. */
  watchShort(): void {
    if (this.short) return;
    this.short = true;
    this.soonest(this.period);
  }

  /** A tunnel opened: it is visited within one cadence. */
  watchTunnel(): void {
    this.soonest(this.tunnelCadence);
  }

  /** A socket went back to a pool, to be retired at `retireAt`. */
  watchPooled(retireAt: number): void {
    if (retireAt < this.dueAt) this.soonest(retireAt - Date.now());
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.dueAt = Number.POSITIVE_INFINITY;
    this.short = false;
  }

  /** How long to wait between slices of `tunnels`: a slice is at most {@link LARGEST_SLICE} tunnels. */
  private sliceWait(tunnels: number): number {
    const cadence = this.tunnelCadence;
    return Math.max(SHORTEST_PERIOD, Math.min(cadence, (cadence * LARGEST_SLICE) / tunnels));
  }

  /** Fires the timer within `delay` ms, sooner if it is armed sooner already. */
  private soonest(delay: number): void {
    const now = Date.now();
    if (now + delay >= this.dueAt) return;
    if (this.timer === undefined) this.lastTickAt = now;
    this.arm(Math.max(SHORTEST_PERIOD, delay), now);
  }

  private arm(delay: number, now: number): void {
    clearTimeout(this.timer);
    this.dueAt = now + delay;
    this.timer = setTimeout(this.tick, delay);
    this.timer.unref();
  }
}
