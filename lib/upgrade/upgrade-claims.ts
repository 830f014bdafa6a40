import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';

// Marks on the upgrade's socket: plain property writes, where a WeakSet (and a copy of the 'error'
// listeners to look for ours) cost an upgrade a few microseconds. Registered symbols, so that two
// copies of viaduct in one process see each other's claims.
const CLAIMED = Symbol.for('viaduct.claimed');
const GUARDED = Symbol.for('viaduct.guarded');

type MarkedSocket = Duplex & { [CLAIMED]?: true; [GUARDED]?: true };

// Until a handshake or tunnel owns the socket, a reset must not become an uncaught 'error'.
// The handshake and the tunnel see the same failure as 'close' and handle it there.
const ignoreUntilOwned = (): void => {};

/** Guards a socket that arrived with an `upgrade` event against crashing the process. */
export function guardSocket(socket: Duplex): void {
  if ((socket as MarkedSocket)[GUARDED]) return;
  (socket as MarkedSocket)[GUARDED] = true;
  socket.on('error', ignoreUntilOwned);
}

/** Takes the socket for one route; false when a route (of this or another proxy) already took it. */
export function claimSocket(socket: Duplex): boolean {
  if ((socket as MarkedSocket)[CLAIMED]) return false;
  (socket as MarkedSocket)[CLAIMED] = true;
  guardSocket(socket);
  return true;
}

export function isClaimed(socket: Duplex): boolean {
  return (socket as MarkedSocket)[CLAIMED] === true;
}

/** An upgrade that `attach()` is dispatching through an app: what a proxy in the chain tunnels. */
export interface DispatchedUpgrade {
  readonly socket: Duplex;
  readonly head: Buffer;
  /** Called once a proxy claimed the socket: the dispatch is over. */
  readonly claimed: () => void;
}

// On the stand-in response rather than in a WeakMap keyed by the request: set before the app
// runs, it is a plain property write, where a WeakMap would grow and shrink with every upgrade.
const UPGRADE = Symbol('viaduct.dispatchedUpgrade');

type StandInResponse = ServerResponse & { [UPGRADE]?: DispatchedUpgrade | undefined };

/** Marks the stand-in response `attach()` passes through an app with the upgrade it stands for. */
export function markDispatched(res: ServerResponse, upgrade: DispatchedUpgrade): void {
  (res as StandInResponse)[UPGRADE] = upgrade;
}

/** The upgrade a request stands for when `attach()` dispatches it through an app, else `undefined`. */
export function dispatchedUpgrade(
  req: IncomingMessage,
  res: ServerResponse,
): DispatchedUpgrade | undefined {
  return req.headers.upgrade === undefined ? undefined : (res as StandInResponse)[UPGRADE];
}

/** Claims a dispatched upgrade's socket for one route; false when a route already took it. */
export function claimDispatched(res: ServerResponse, upgrade: DispatchedUpgrade): boolean {
  if (!claimSocket(upgrade.socket)) return false;
  (res as StandInResponse)[UPGRADE] = undefined;
  upgrade.claimed();
  return true;
}
