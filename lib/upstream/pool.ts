import type { IncomingMessage } from 'node:http';
import type { Balance } from '../types';
import type { Upstream } from './upstream';

/** Points each upstream gets on the hash ring, per unit of weight (as ketama and nginx do). */
const POINTS_PER_WEIGHT = 160;

/**
 * A 32-bit hash of a string: FNV-1a, then MurmurHash3's finaliser, which spreads it. (crc32 is
 * linear: the points of names of one length were translates of one another and bunched together.)
 */
export function hash32(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193);
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

/** What a pool is told by its route: how to balance and when an upstream is left out. */
export interface PoolSettings {
  readonly balance: Balance;
  /** For `'hash'`: the request's key, or `undefined` for round-robin. */
  readonly hashKey: (req: IncomingMessage) => string | undefined;
  readonly maxFails: number;
  readonly failTimeout: number;
  /** How often a request may go to the next upstream. */
  readonly retries: number;
}

/** Where a pool reports an upstream leaving or rejoining it. */
export interface PoolEvents {
  down(upstream: Upstream, why: string): void;
  up(upstream: Upstream, why: string): void;
}

/**
 * A consistent hash ring over the upstreams: adding or removing one of N moves about 1/N of the
 * keys, because every upstream's points depend on its own URL only.
 */
class HashRing {
  private readonly points: Uint32Array;
  private readonly owners: Upstream[];

  constructor(upstreams: readonly Upstream[]) {
    const entries: [number, Upstream][] = [];
    for (const upstream of upstreams) {
      for (let i = 0; i < POINTS_PER_WEIGHT * upstream.weight; i++)
        entries.push([hash32(`${upstream.url}#${i}`), upstream]);
    }
    entries.sort((a, b) => a[0] - b[0]);
    this.points = Uint32Array.from(entries, ([point]) => point);
    this.owners = entries.map(([, owner]) => owner);
  }

  /** The first upstream clockwise from the key's point that `accepts` takes: O(log n) to find the point. */
  lookup(key: string, accepts: (upstream: Upstream) => boolean): Upstream | undefined {
    const { points, owners } = this;
    const hash = hash32(key);
    let low = 0;
    let high = points.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (points[middle]! < hash) low = middle + 1;
      else high = middle;
    }
    for (let i = 0; i < points.length; i++) {
      const owner = owners[(low + i) % points.length]!;
      if (accepts(owner)) return owner;
    }
    return undefined;
  }
}

/**
 * The upstreams of one route and how requests are spread over them: smooth weighted round-robin
 * (nginx's), the fewest requests and tunnels in flight per weight, or a consistent hash of a key.
 * Choosing allocates nothing; with a handful of upstreams it is a pass over them, on the ring a
 * binary search. A pool of one is never left out for failures (as in nginx), only by a health check.
 */
export class UpstreamPool {
  private readonly ring: HashRing | undefined;
  /** The upstream of a pool of one. */
  private readonly only: Upstream | undefined;
  /** The upstreams the current `pick` leaves aside: a field, so that choosing makes no closure. */
  private tried: readonly Upstream[] | undefined;
  private readonly accepts = (upstream: Upstream): boolean =>
    upstream.available() && !this.tried?.includes(upstream);

  constructor(
    readonly upstreams: readonly Upstream[],
    private readonly settings: PoolSettings,
    private readonly events: PoolEvents,
  ) {
    this.only = upstreams.length === 1 ? upstreams[0] : undefined;
    this.ring =
      settings.balance === 'hash' && upstreams.length > 1 ? new HashRing(upstreams) : undefined;
  }

  get retries(): number {
    return this.settings.retries;
  }

  /** An upstream for `req` that is available and not in `tried`; `undefined` when none is left. */
  pick(req: IncomingMessage, tried?: readonly Upstream[]): Upstream | undefined {
    const only = this.only;
    if (only) return only.available() && !tried?.includes(only) ? only : undefined;
    const { accepts } = this;
    this.tried = tried;
    let chosen: Upstream | undefined;
    if (this.ring) {
      const key = this.settings.hashKey(req);
      chosen = key === undefined ? this.roundRobin(accepts) : this.ring.lookup(key, accepts);
    } else if (this.settings.balance === 'least-connections') {
      chosen = this.leastConnections(accepts);
    } else {
      chosen = this.roundRobin(accepts);
    }
    this.tried = undefined;
    if (!chosen && this.reviveAll(tried)) return this.pick(req, tried);
    chosen?.taken();
    return chosen;
  }

  /**
   * When every upstream not yet tried is left out for failures (none by a health check), they are
   * all taken back at once, as nginx does ("all peers failed, mark them as live"): an outage of
   * every upstream would otherwise answer 502 for `failTimeout` after the first one is back.
   * True when any was taken back.
   */
  private reviveAll(tried: readonly Upstream[] | undefined): boolean {
    const candidates = this.upstreams.filter(
      (upstream) => !upstream.healthDown && !tried?.includes(upstream),
    );
    if (candidates.length === 0 || candidates.some((upstream) => upstream.downUntil === 0))
      return false;
    for (const upstream of candidates) {
      if (upstream.answered())
        this.events.up(upstream, 'every upstream was left out: all are tried again');
    }
    return true;
  }

  /** nginx's smooth weighted round-robin over the upstreams `accepts` takes (`least` narrows them to the least loaded). */
  private roundRobin(
    accepts: (upstream: Upstream) => boolean,
    least?: number,
  ): Upstream | undefined {
    let best: Upstream | undefined;
    let total = 0;
    for (const upstream of this.upstreams) {
      if (!accepts(upstream) || (least !== undefined && load(upstream) !== least)) continue;
      upstream.current += upstream.weight;
      total += upstream.weight;
      if (best === undefined || upstream.current > best.current) best = upstream;
    }
    if (best) best.current -= total;
    return best;
  }

  /** The fewest requests and tunnels in flight per weight; ties by round-robin among them. */
  private leastConnections(accepts: (upstream: Upstream) => boolean): Upstream | undefined {
    let least = Infinity;
    for (const upstream of this.upstreams)
      if (accepts(upstream)) least = Math.min(least, load(upstream));
    return least === Infinity ? undefined : this.roundRobin(accepts, least);
  }

  /** A try failed on `upstream` (refused, reset, unreachable, a connect or read timeout before headers). */
  failed(upstream: Upstream, why: string): void {
    // A pool of one has nowhere else to send its requests.
    if (this.only) {
      upstream.stats.fails++;
      return;
    }
    if (upstream.failed(this.settings.maxFails, this.settings.failTimeout)) {
      this.events.down(upstream, `${why}; left out for ${this.settings.failTimeout} ms`);
    }
  }

  /** `upstream` answered. */
  answered(upstream: Upstream): void {
    if (upstream.answered()) this.events.up(upstream, 'it answered a probe');
  }

  /** A health check's verdict on `upstream`. */
  checked(upstream: Upstream, up: boolean, why: string): void {
    if (!upstream.checked(up)) return;
    if (up) this.events.up(upstream, why);
    else this.events.down(upstream, why);
  }
}

/** Load per weight, for least-connections. */
function load(upstream: Upstream): number {
  return upstream.stats.active / upstream.weight;
}
