import { ServerResponse, STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { defaultLogger, resolveLogger } from '../runtime/logger';
import { isProxy, proxyMayRoute } from './create-proxy';
import { closeAfterFlush, writeRawResponse } from '../runtime/raw-response';
import { forgetDispatch, isExpressApp, reachesProxy } from '../internals/express';
import { expressPropertiesFor, type ExpressProperties } from '../internals/v8';
import type { AttachOptions, Logger, Proxy, UnmatchedUpgrade } from '../types';
import { guardSocket, isClaimed, markDispatched } from '../upgrade/upgrade-claims';

/** An Express or Connect app (or any `(req, res, next)` handler) that upgrades are dispatched through. */
export type UpgradeApp = (
  req: IncomingMessage,
  res: ServerResponse,
  next: (err?: unknown) => void,
) => unknown;

/** Anything that emits Node's `upgrade` event: `http.Server`, `https.Server`. */
export interface UpgradeEmitter {
  on(
    event: 'upgrade',
    listener: (req: IncomingMessage, socket: Duplex, head: Buffer) => void,
  ): unknown;
  removeListener(
    event: 'upgrade',
    listener: (req: IncomingMessage, socket: Duplex, head: Buffer) => void,
  ): unknown;
  listenerCount(event: 'upgrade'): number;
}

const MODES: readonly UnmatchedUpgrade[] = ['auto', 'reject', 'ignore'];

/** Another listener answered on the socket, or it is gone: ours must not write to it. */
function takenElsewhere(socket: Duplex): boolean {
  return (
    isClaimed(socket) ||
    socket.destroyed ||
    (socket as Duplex & { bytesWritten?: number }).bytesWritten! > 0
  );
}

/**
 * How an answer the app wrote to an upgrade (or an error it passed on) reaches the socket. Alone
 * on the server, it is written. Next to other `upgrade` listeners, it is written only for an
 * upgrade that a viaduct route in the app takes (a 401 in front of a proxied path), after the
 * other listeners have run for this event and unless one of them answered; any other upgrade is
 * theirs (socket.io's, a dev server's HMR), however late they answer.
 */
class AppAnswer {
  constructor(
    private readonly app: UpgradeApp,
    private readonly req: IncomingMessage,
    /** The URL as the app received it: `req.url` is mount-relative while a mounted middleware runs. */
    private readonly url: string,
    private readonly socket: Duplex,
    private readonly othersMayAnswer: boolean,
    private readonly logger: Logger,
  ) {}

  deliver(write: () => void): void {
    if (!this.othersMayAnswer) return write();
    if (!reachesProxy(this.app, this.req, this.url, proxyMayRoute)) {
      this.logger.debug(
        `viaduct: attach: upgrade ${this.req.method} ${this.url} answered by the app, but no viaduct route takes it: left to the other upgrade listeners`,
      );
      return;
    }
    setImmediate(() => takenElsewhere(this.socket) || write());
  }
}

function rejectWith(socket: Duplex, status: number): void {
  writeRawResponse(
    socket,
    status,
    { 'content-type': 'text/plain; charset=utf-8' },
    `${status} ${STATUS_CODES[status] ?? 'Error'}\n`,
  );
}

function statusOf(error: unknown): number {
  const status =
    (error as { status?: unknown; statusCode?: unknown } | undefined)?.status ??
    (error as { statusCode?: unknown } | undefined)?.statusCode;
  return typeof status === 'number' && status >= 400 && status <= 599 ? status : 500;
}

/**
 * Sends an upgrade through the app as if it were a request. A proxy in the chain claims the
 * socket; a response a middleware writes goes to the socket, which is then closed; an upgrade
 * that runs off the end of the chain is unmatched.
 */
function dispatchThroughApp(
  app: UpgradeApp,
  express: ExpressProperties | undefined,
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  othersMayAnswer: boolean,
  logger: Logger,
): void {
  const answer = new AppAnswer(app, req, req.url ?? '/', socket, othersMayAnswer, logger);
  const res = new ServerResponse(req);
  res.shouldKeepAlive = false;
  express?.addTo(req, res);
  let concluded = false;
  // The outcome is the first of: a proxy claims the socket, a middleware ends the response, the chain ends.
  const conclude = (): boolean => !isClaimed(socket) && !concluded && (concluded = true);

  const end = res.end;
  res.end = function (this: ServerResponse, ...args: Parameters<ServerResponse['end']>) {
    const result = end.apply(this, args);
    if (conclude()) {
      answer.deliver(() => {
        res.once('finish', () => {
          res.detachSocket(socket as never);
          closeAfterFlush(socket);
        });
        res.assignSocket(socket as never);
      });
    }
    return result;
  } as ServerResponse['end'];

  const done = (error?: unknown): void => {
    if (!conclude()) return;
    if (error !== undefined && error !== null) {
      logger.error(
        `viaduct: attach: the app failed on upgrade ${req.method} ${req.url}: ${error instanceof Error ? error.stack : String(error)}`,
      );
      answer.deliver(() => rejectWith(socket, statusOf(error)));
    } else if (!othersMayAnswer) {
      rejectWith(socket, 404);
    }
  };

  const claimed = (): void => {
    express?.learnFrom(req);
    forgetDispatch(req);
  };
  markDispatched(res, { socket, head, claimed });
  try {
    const result = app(req, res, done);
    if (result instanceof Promise) result.catch(done);
  } catch (error) {
    done(error);
  }
}

/**
 * Dispatches every `upgrade` event of `server` through `handler` (a proxy, an Express app or a
 * Connect app), so that mounts, the route table and middleware apply to upgrades as to HTTP.
 * Returns a function that detaches it.
 */
export function attach(
  server: UpgradeEmitter,
  handler: Proxy | UpgradeApp,
  options: AttachOptions = {},
): () => void {
  if (typeof handler !== 'function')
    throw new TypeError(
      'viaduct: attach(server, handler): handler is a proxy, an Express app or a Connect app',
    );
  const mode = options.unmatched ?? 'auto';
  if (!MODES.includes(mode))
    throw new TypeError(
      `viaduct: attach: unmatched is 'auto', 'reject' or 'ignore', not "${String(mode)}"`,
    );
  const logger = options.logger === undefined ? defaultLogger : resolveLogger(options.logger);
  const express = expressPropertiesFor(!isProxy(handler) && isExpressApp(handler));

  const listener = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    guardSocket(socket);
    const othersMayAnswer =
      mode === 'ignore' || (mode === 'auto' && server.listenerCount('upgrade') > 1);
    if (isProxy(handler)) {
      if (!handler.upgrade(req, socket, head) && !othersMayAnswer && !isClaimed(socket))
        rejectWith(socket, 404);
    } else {
      dispatchThroughApp(handler, express, req, socket, head, othersMayAnswer, logger);
    }
  };
  server.on('upgrade', listener);
  return () => {
    server.removeListener('upgrade', listener);
  };
}
