// Waiting in the tests: bounds on waits, promises settled from outside, the next emission of an event.
import { once } from 'node:events';

/** Rejects when `promise` has not settled within `ms`: a bound on a wait, never a sleep. */
export function within(promise, ms, what) {
  let timer;
  const bound = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
}

/** A promise the test settles itself, from outside. */
export function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * The next emission of `event`, resolved with its arguments. Not `events.once`: that also listens
 * for `error`, which would both reject on any proxy-made error and change what the proxy emits.
 */
export function nextEvent(emitter, event) {
  return new Promise((resolve) => emitter.once(event, (...args) => resolve(args)));
}

/** Resolves once every WebSocket in `sockets` is closed. */
export function allClosed(sockets) {
  return Promise.all(sockets.map((s) => (s.readyState === s.CLOSED ? undefined : once(s, 'close'))));
}
