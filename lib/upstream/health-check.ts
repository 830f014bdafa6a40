import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { UpstreamPool } from './pool';
import type { Upstream } from './upstream';

/** How a pool's upstreams are checked: `GET path` every `interval`, answered within `timeout`. */
export interface HealthCheckSettings {
  readonly path: string;
  readonly interval: number;
  readonly timeout: number;
  /** Verify an `https` upstream's certificate (the route's `secure`). */
  readonly secure: boolean;
  readonly ca: string | Buffer | Array<string | Buffer> | undefined;
}

/**
 * Active health checks of one pool: a `GET` of the check's path to every upstream, at once and
 * then every `interval`, each on a connection of its own; a 2xx marks the upstream up, anything
 * else or no answer within `timeout` marks it down. Its timer does not keep the process alive.
 */
export class HealthChecker {
  private timer: NodeJS.Timeout | undefined;
  private readonly inFlight = new Set<() => void>();
  private running: Set<HealthChecker> | undefined;

  constructor(
    private readonly pool: UpstreamPool,
    private readonly settings: HealthCheckSettings,
  ) {}

  /** Starts the checks; `running` holds the checker until it is stopped. */
  start(running: Set<HealthChecker>): void {
    this.running = running;
    running.add(this);
    this.checkAll();
    this.timer = setInterval(() => this.checkAll(), this.settings.interval);
    this.timer.unref();
  }

  stop(): void {
    this.running?.delete(this);
    clearInterval(this.timer);
    this.timer = undefined;
    for (const abort of this.inFlight) abort();
  }

  private checkAll(): void {
    for (const upstream of this.pool.upstreams) this.check(upstream);
  }

  private check(upstream: Upstream): void {
    const { path, timeout, secure, ca } = this.settings;
    const url = upstream.target.url;
    const options = {
      method: 'GET',
      path: upstream.basePath + path,
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: url.port,
      socketPath: url.socketPath,
      headers: { host: url.host, 'user-agent': 'viaduct-health-check' },
      agent: false as const,
      ...(upstream.secure && { rejectUnauthorized: secure, ca, servername: url.hostname }),
    };
    let settled = false;
    const verdict = (up: boolean, why: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      this.inFlight.delete(abort);
      req.destroy();
      this.pool.checked(upstream, up, why);
    };
    const req = (upstream.secure ? httpsRequest : httpRequest)(options, (res) => {
      res.resume();
      const status = res.statusCode ?? 0;
      verdict(status >= 200 && status < 300, `health check: GET ${path} answered ${status}`);
    });
    const abort = (): void => {
      settled = true;
      clearTimeout(timer);
      req.destroy();
    };
    const timer = setTimeout(
      () => verdict(false, `health check: GET ${path} not answered in ${timeout} ms`),
      timeout,
    );
    timer.unref();
    req.on('error', (error) =>
      verdict(false, `health check: GET ${path} failed: ${error.message}`),
    );
    this.inFlight.add(abort);
    req.end();
  }
}
