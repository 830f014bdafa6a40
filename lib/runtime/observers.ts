import { channel } from 'node:diagnostics_channel';
import type {
  AccessLog,
  Logger,
  RequestEndMessage,
  RequestLogEntry,
  RequestStartMessage,
  TunnelCloseEvent,
  TunnelLogEntry,
  TunnelOpenEvent,
} from '../types';

/** `node:diagnostics_channel` channels, Node's convention for tracing (as its own `http` and `undici` use). */
const requestStart = channel('viaduct:request:start');
const requestEnd = channel('viaduct:request:end');
const tunnelOpen = channel('viaduct:tunnel:open');
const tunnelClose = channel('viaduct:tunnel:close');

/** Something that watches one proxy's requests and tunnels (the Prometheus metrics). */
export interface ProxyObserver {
  requestEnded?(message: RequestEndMessage): void;
  tunnelOpened?(event: TunnelOpenEvent): void;
  tunnelClosed?(event: TunnelCloseEvent): void;
}

/** What the access log needs besides a finished request's message. */
export interface RequestLogFields {
  readonly client: string;
  readonly bytes: number;
}

const ms = (value: number | undefined): string =>
  value === undefined ? '-' : `${value.toFixed(1)} ms`;

function requestLine(entry: RequestLogEntry): string {
  return `viaduct: ${entry.client} "${entry.method} ${entry.path}" ${entry.status} ${entry.bytes} B ${ms(entry.ms)} route=${entry.route} upstream=${entry.upstream ?? '-'} upstream_first_byte=${ms(entry.upstreamFirstByte)} tries=${entry.tries}`;
}

function tunnelLine(entry: TunnelLogEntry): string {
  const codes =
    Object.entries(entry.code)
      .map(([side, code]) => `${side}:${code}`)
      .join(',') || '-';
  return `viaduct: ${entry.client} "WS ${entry.path}" tunnel ${entry.reason} ${ms(entry.duration)} from_client=${entry.bytesFromClient} B from_upstream=${entry.bytesFromUpstream} B close=${codes} route=${entry.route} upstream=${entry.upstream}`;
}

/**
 * Where a proxy reports its requests and tunnels beyond its events: the diagnostics channels
 * (published only while subscribed), the access log and observers such as the metrics. A request
 * is timed only while someone watches: a process that does not listen pays a few reads.
 */
export class Observers {
  private readonly observers = new Set<ProxyObserver>();

  constructor(
    private readonly accessLog: AccessLog | undefined,
    private readonly logger: Logger,
  ) {}

  /** Adds an observer; returns what removes it. */
  add(observer: ProxyObserver): () => void {
    this.observers.add(observer);
    return () => this.observers.delete(observer);
  }

  /** Whether anyone wants to know how requests went: only then are they timed. */
  get watchingRequests(): boolean {
    return (
      this.loggingRequests ||
      this.observers.size > 0 ||
      requestStart.hasSubscribers ||
      requestEnd.hasSubscribers
    );
  }

  /** Whether there is an access log: only then are a request's client and bytes read. */
  get loggingRequests(): boolean {
    return this.accessLog !== undefined && this.accessLog !== false;
  }

  requestStarted(message: RequestStartMessage): void {
    if (requestStart.hasSubscribers) requestStart.publish(message);
  }

  /** `fields`: given when there is an access log ({@link loggingRequests}). */
  requestEnded(message: RequestEndMessage, fields: RequestLogFields | undefined): void {
    if (requestEnd.hasSubscribers) requestEnd.publish(message);
    for (const observer of this.observers) observer.requestEnded?.(message);
    if (fields === undefined) return;
    const { req } = message;
    this.log({
      type: 'request',
      client: fields.client,
      method: req.method ?? '',
      path: (req as { originalUrl?: string }).originalUrl ?? req.url ?? '',
      status: message.status,
      bytes: fields.bytes,
      ms: message.timings.total,
      route: message.route,
      ...(message.upstream !== undefined && { upstream: message.upstream }),
      ...(message.timings.firstByte !== undefined && {
        upstreamFirstByte: message.timings.firstByte,
      }),
      tries: message.tries,
    });
  }

  tunnelOpened(event: TunnelOpenEvent): void {
    if (tunnelOpen.hasSubscribers) tunnelOpen.publish(event);
    for (const observer of this.observers) observer.tunnelOpened?.(event);
  }

  /** `client` gives the client's address, asked only for the access log. */
  tunnelClosed(event: TunnelCloseEvent, client: () => string): void {
    if (tunnelClose.hasSubscribers) tunnelClose.publish(event);
    for (const observer of this.observers) observer.tunnelClosed?.(event);
    if (this.accessLog === undefined || this.accessLog === false) return;
    const { req } = event;
    this.log({
      type: 'tunnel',
      client: client(),
      path: (req as { originalUrl?: string }).originalUrl ?? req.url ?? '',
      route: event.route,
      upstream: event.upstream,
      duration: event.duration,
      bytesFromClient: event.bytesFromClient,
      bytesFromUpstream: event.bytesFromUpstream,
      reason: event.reason,
      code: event.code,
    });
  }

  private log(entry: RequestLogEntry | TunnelLogEntry): void {
    const accessLog = this.accessLog;
    try {
      if (typeof accessLog === 'function') accessLog(entry);
      else this.logger.info(entry.type === 'request' ? requestLine(entry) : tunnelLine(entry));
    } catch (error) {
      this.logger.error(
        `viaduct: the accessLog function threw: ${error instanceof Error ? error.stack : String(error)}`,
      );
    }
  }
}
