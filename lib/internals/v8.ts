// Added and deleted again at once: on a hidden class outside V8's transition tree, deleting the
// property cannot step back to the hidden class before it, so V8 moves the object to dictionary mode.
const SCRATCH = Symbol('viaduct.sharedShape');

/**
 * Moves a request or response whose prototype was swapped to V8's dictionary mode, where all such
 * objects share one hidden class.
 *
 * Express (4 and 5) gives `req` and `res` its own prototypes with `Object.setPrototypeOf`. On Node
 * 20's V8 the hidden class that makes is left out of V8's transition tree, so every property added
 * afterwards (by the router, by viaduct, by Node's HTTP code) makes a new hidden class, in every
 * request, and the first read of each property of `req` and `res` in a request misses V8's caches:
 * about 30 % of an Express front's CPU. With one hidden class for all of them the reads hit the
 * caches again: about a fifth less CPU per proxied request in Express (BENCHMARKS.md).
 *
 * Nothing a program can observe changes: no property is left added or removed, and a dictionary
 * keeps the order of properties. Objects with their constructor's prototype (`node:http`, Connect)
 * are left alone: their hidden classes are shared already, and fast properties read faster.
 * Upgrades do not use it: a tunnel keeps its `req`, a dictionary is larger, and `attach` adds
 * Express's properties before the swap instead (`ExpressProperties` in attach.ts).
 */
export function shareShape(object: object): void {
  if (Object.getPrototypeOf(object) === object.constructor.prototype) return;
  const scratch = object as Record<symbol, unknown>;
  scratch[SCRATCH] = undefined;
  delete scratch[SCRATCH];
}
