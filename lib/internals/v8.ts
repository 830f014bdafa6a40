/**
 * Tricks that depend on how V8 shapes objects, each for Express's requests and responses, whose
 * prototypes Express swaps with `Object.setPrototypeOf`. On V8 before 13 (Node 20 and 22) the
 * hidden class that makes is left out of V8's transition tree: every property added afterwards
 * gives the object a hidden class of its own, so reads of it miss V8's caches. V8 13.6 (Node 24)
 * and later share those classes again, and both tricks are off there (measured: no gain).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

const SWAPPED_PROTOTYPES_SPLIT_SHAPES = Number(process.versions.v8.split('.')[0]) < 13;

// Added and deleted again at once: on a hidden class outside V8's transition tree, deleting the
// property cannot step back to the hidden class before it, so V8 moves the object to dictionary mode.
const SCRATCH = Symbol('viaduct.sharedShape');

/**
 * Moves a request or response whose prototype was swapped to V8's dictionary mode, where all such
 * objects share one hidden class.
 *
 * Every property added to an Express `req`/`res` (by the router, by viaduct, by Node's HTTP code)
 * makes a new hidden class, in every request; with one hidden class for all of them the reads hit
 * V8's caches again: about a fifth less CPU per proxied request in Express (docs/performance.md).
 *
 * Nothing a program can observe changes: no property is left added or removed, and a dictionary
 * keeps the order of properties. Objects with their constructor's prototype (`node:http`, Connect)
 * are left alone: their hidden classes are shared already, and fast properties read faster.
 * Upgrades do not use it: a tunnel keeps its `req`, a dictionary is larger, and `attach` adds
 * Express's properties before the swap instead (`ExpressProperties` in attach.ts).
 */
export function shareShape(object: object): void {
  if (
    !SWAPPED_PROTOTYPES_SPLIT_SHAPES ||
    Object.getPrototypeOf(object) === object.constructor.prototype
  )
    return;
  const scratch = object as Record<symbol, unknown>;
  scratch[SCRATCH] = undefined;
  delete scratch[SCRATCH];
}

/**
 * Once Express changed their prototypes, V8 gives the request and the response a hidden class of
 * their own, copied whole for every property added after; the copies are old-generation objects
 * that keep each upgrade's objects alive through young-generation GCs. The properties Express's
 * router adds (it reads them as absent or `undefined`) are added before the dispatch, while the
 * classes are still shared, so that Express only changes their values.
 */
export class ExpressProperties {
  /** The router's own symbols (router 2's `router.tracing.matchedRoute`), learnt from the first upgrade a proxy took. */
  private routerSymbols: symbol[] | undefined;

  addTo(req: IncomingMessage, res: ServerResponse): void {
    const request = req as IncomingMessage &
      Record<'next' | 'baseUrl' | 'originalUrl' | '_parsedUrl' | 'params' | symbol, unknown>;
    request.next = undefined;
    request.baseUrl = undefined;
    request.originalUrl = undefined;
    request._parsedUrl = undefined;
    request.params = undefined;
    for (const symbol of this.routerSymbols ?? []) request[symbol] = undefined;
    (res as ServerResponse & { locals?: unknown }).locals = undefined;
  }

  /** Notes the router's symbols on a request Express dispatched to a proxy. */
  learnFrom(req: IncomingMessage): void {
    this.routerSymbols ??= Object.getOwnPropertySymbols(req).filter(
      (symbol) => symbol.description?.startsWith('router.') === true,
    );
  }
}

/** The properties to pre-add for upgrades dispatched through `app`, when it is an Express app and V8 needs it. */
export function expressPropertiesFor(isExpress: boolean): ExpressProperties | undefined {
  return isExpress && SWAPPED_PROTOTYPES_SPLIT_SHAPES ? new ExpressProperties() : undefined;
}
