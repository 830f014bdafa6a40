import type { UpstreamStats } from '../types';
import type { Engine } from './engine';
import type { ResolvedTarget } from './target';

/** What an upstream's health is made of (see {@link Upstream}). */
class Health {
  /** When it was left out until, after failures; 0 while it is in. */
  downUntil = 0;
  /** A request is probing it after `downUntil` passed: others keep away until it is answered. */
  probing = false;
  /** The health check found it down. */
  checkedDown = false;
  /** Failures within the window that started at `windowStart`. */
  fails = 0;
  windowStart = 0;
}

/**
 * One health per stats entry, so that what the stats say is what the pools act on: the pools of
 * router results that differ in their options but send to one URL (under the route key `router`)
 * count its failures together, leave it out together, and report it down and up once.
 */
const healthOfStats = new WeakMap<UpstreamStats, Health>();

function healthOf(stats: UpstreamStats): Health {
  let health = healthOfStats.get(stats);
  if (!health) healthOfStats.set(stats, (health = new Health()));
  return health;
}

/**
 * One upstream of a route's pool: where it is, the engine that proxies to it, its counters, and
 * its health. Health follows nginx: `maxFails` failures within `failTimeout` leave it out for
 * `failTimeout`, after which one request at a time probes it; a health check can also hold it out.
 */
export class Upstream {
  /** Names it in stats, logs and events: the target's origin and path. */
  readonly url: string;
  /** The target's own path, without a trailing slash: prepended to every forwarded path. */
  readonly basePath: string;
  readonly secure: boolean;
  /** Smooth weighted round-robin's running weight (nginx's `current_weight`). */
  current = 0;
  private readonly health: Health;

  constructor(
    readonly target: ResolvedTarget,
    readonly weight: number,
    readonly engine: Engine,
    readonly stats: UpstreamStats,
  ) {
    this.url = target.label + target.basePath;
    this.basePath = target.basePath;
    this.secure = target.secure;
    this.health = healthOf(stats);
  }

  /** When it was left out until, after failures; 0 while it is in. */
  get downUntil(): number {
    return this.health.downUntil;
  }

  /** A request is probing it: others keep away until it is answered. */
  get probing(): boolean {
    return this.health.probing;
  }

  /** The health check found it down. */
  get healthDown(): boolean {
    return this.health.checkedDown;
  }

  /** Whether it may take a request now; `now` is read only when it was left out. */
  available(): boolean {
    const health = this.health;
    if (health.checkedDown) return false;
    if (health.downUntil === 0) return true;
    return !health.probing && Date.now() >= health.downUntil;
  }

  /** It was chosen: while left out, that request is its probe. */
  taken(): void {
    if (this.health.downUntil !== 0) this.health.probing = true;
  }

  /** Counts a failure; true when it is left out now (it was not before). */
  failed(maxFails: number, failTimeout: number): boolean {
    const health = this.health;
    this.stats.fails++;
    if (maxFails === 0) return false;
    const now = Date.now();
    if (health.probing) {
      health.probing = false;
      health.downUntil = now + failTimeout;
      return false;
    }
    if (now - health.windowStart > failTimeout) {
      health.windowStart = now;
      health.fails = 0;
    }
    if (++health.fails < maxFails || health.downUntil !== 0) return false;
    health.downUntil = now + failTimeout;
    this.stats.down = true;
    return true;
  }

  /** It answered: true when that brings it back from being left out. */
  answered(): boolean {
    const health = this.health;
    if (health.downUntil === 0) return false;
    health.downUntil = 0;
    health.probing = false;
    health.fails = 0;
    this.stats.down = health.checkedDown;
    return !health.checkedDown;
  }

  /** A probe ended with no verdict (the client left): another request may probe. */
  probeAbandoned(): void {
    this.health.probing = false;
  }

  /**
   * The health check's verdict; true when it changes whether the upstream is down. The two
   * kinds of health are kept apart: a check's 2xx does not clear failures of real traffic (only
   * their probe does), or an upstream whose `/health` works while its traffic fails would flap.
   */
  checked(up: boolean): boolean {
    const health = this.health;
    const wasDown = this.stats.down;
    health.checkedDown = !up;
    this.stats.down = health.checkedDown || health.downUntil !== 0;
    return wasDown !== this.stats.down;
  }
}
