import type { IncomingMessage } from 'node:http';
import type { ProxyError } from './proxy-error';
import type { InFlightList } from './in-flight';
import type { Observers } from './observers';
import type { StatsBook } from './stats-book';
import type { Sweep } from './sweep';
import type { ClientSide, Logger, ProxyEvents } from '../types';

/** How a route is named in log lines. */
export interface RouteLabel {
  /** The table key (or `'default'`, `'router'`). */
  readonly key: string;
  /** The upstream it sends to, for log lines only. */
  readonly targetLabel: string;
}

/** What the HTTP and tunnel paths need from the proxy that owns them. */
export interface ProxyContext {
  readonly logger: Logger;
  readonly stats: StatsBook;
  /** The channels, the access log and the metrics. */
  readonly observers: Observers;
  /** True once `close()` was called: new work gets 503. */
  readonly closing: boolean;
  readonly requests: InFlightList;
  /** Upgrade handshakes under way. */
  readonly handshakes: InFlightList;
  /** Open tunnels. */
  readonly tunnels: InFlightList;
  /** Checks the deadlines of requests, handshakes and tunnels while it runs: started by one that went upstream. */
  readonly sweep: Sweep;
  /** Emits to the proxy's listeners; a throwing listener is logged, never propagated. */
  emit<E extends keyof ProxyEvents>(event: E, ...args: Parameters<ProxyEvents[E]>): void;
  /** Logs a proxy-made error and emits it on `error`. */
  report(error: ProxyError, req: IncomingMessage, client: ClientSide, route: RouteLabel): void;
  /** Called whenever a request or tunnel leaves its set, so that `close()` can resolve. */
  released(): void;
}
