import type { UpstreamStats } from '../types';
import type { Engine } from './engine';
import type { ResolvedTarget } from './target';

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
  /** When it was left out until, after failures; 0 while it is in. */
  downUntil = 0;
  /** A request is probing it after `downUntil` passed: others keep away until it is answered. */
  probing = false;
  /** The health check found it down. */
  healthDown = false;
  /** Failures within the window that started at {@link windowStart}. */
  private fails = 0;
  private windowStart = 0;

  constructor(
    readonly target: ResolvedTarget,
    readonly weight: number,
    readonly engine: Engine,
    readonly stats: UpstreamStats,
  ) {
    this.url = target.label + target.basePath;
    this.basePath = target.basePath;
    this.secure = target.secure;
  }

  /** Whether it may take a request now; `now` is read only when it was left out. */
  available(): boolean {
    if (this.healthDown) return false;
    if (this.downUntil === 0) return true;
    return !this.probing && Date.now() >= this.downUntil;
  }

  /** It was chosen: while left out, that request is its probe. */
  taken(): void {
    if (this.downUntil !== 0) this.probing = true;
  }

  /** Counts a failure; true when it is left out now (it was not before). */
  failed(maxFails: number, failTimeout: number): boolean {
    this.stats.fails++;
    if (maxFails === 0) return false;
    const now = Date.now();
    if (this.probing) {
      this.probing = false;
      this.downUntil = now + failTimeout;
      return false;
    }
    if (now - this.windowStart > failTimeout) {
      this.windowStart = now;
      this.fails = 0;
    }
    if (++this.fails < maxFails || this.downUntil !== 0) return false;
    this.downUntil = now + failTimeout;
    this.stats.down = true;
    return true;
  }

  /** It answered: true when that brings it back from being left out. */
  answered(): boolean {
    if (this.downUntil === 0) return false;
    this.downUntil = 0;
    this.probing = false;
    this.fails = 0;
    this.stats.down = this.healthDown;
    return !this.healthDown;
  }

  /** A probe ended with no verdict (the client left): another request may probe. */
  probeAbandoned(): void {
    this.probing = false;
  }

  /**
   * The health check's verdict; true when it changes whether the upstream is down. The two
   * kinds of health are kept apart: a check's 2xx does not clear failures of real traffic (only
   * their probe does), or an upstream whose `/health` works while its traffic fails would flap.
   */
  checked(up: boolean): boolean {
    const wasDown = this.stats.down;
    this.healthDown = !up;
    this.stats.down = this.healthDown || this.downUntil !== 0;
    return wasDown !== this.stats.down;
  }
}
