import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';

const claimed = new WeakSet<Duplex>();

// Until a handshake or tunnel owns the socket, a reset must not become an uncaught 'error'.
// The handshake and the tunnel see the same failure as 'close' and handle it there.
const ignoreUntilOwned = (): void => {};

/** Guards a socket that arrived with an `upgrade` event against crashing the process. */
export function guardSocket(socket: Duplex): void {
  if (!socket.listeners('error').includes(ignoreUntilOwned)) socket.on('error', ignoreUntilOwned);
}

/** Takes the socket for one route; false when a route (of this or another proxy) already took it. */
export function claimSocket(socket: Duplex): boolean {
  if (claimed.has(socket)) return false;
  claimed.add(socket);
  guardSocket(socket);
  return true;
}

export function isClaimed(socket: Duplex): boolean {
  return claimed.has(socket);
}

/** An upgrade that `attach()` is dispatching through an app: what a proxy in the chain tunnels. */
export interface DispatchedUpgrade {
  readonly socket: Duplex;
  readonly head: Buffer;
  /** Called once a proxy claimed the socket: the dispatch is over. */
  readonly claimed: () => void;
}

const dispatched = new WeakMap<IncomingMessage, DispatchedUpgrade>();

export function markDispatched(req: IncomingMessage, upgrade: DispatchedUpgrade): void {
  dispatched.set(req, upgrade);
}

/** The upgrade a request stands for when `attach()` dispatches it through an app, else `undefined`. */
export function dispatchedUpgrade(req: IncomingMessage): DispatchedUpgrade | undefined {
  return req.headers.upgrade === undefined ? undefined : dispatched.get(req);
}

/** Claims a dispatched upgrade's socket for one route; false when a route already took it. */
export function claimDispatched(req: IncomingMessage, upgrade: DispatchedUpgrade): boolean {
  if (!claimSocket(upgrade.socket)) return false;
  dispatched.delete(req);
  upgrade.claimed();
  return true;
}
