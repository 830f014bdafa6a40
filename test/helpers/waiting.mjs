// Waiting in the tests: bounds on waits, promises settled from outside, the next emission of an event.
import { once } from 'node:events';
import assert from 'node:assert/strict';

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
  return Promise.all(
    sockets.map((s) => (s.readyState === s.CLOSED ? undefined : once(s, 'close'))),
  );
}

/**
 * After an upgrade to `/held` was abandoned mid-dispatch: whatever of it reached the upstream
 * (`upstreamSockets`, entries `{ url, ws }`) is closed, the live tunnel `ws` is the only one
 * counted, and closing it brings the count back to 0.
 */
export async function assertOnlyLiveTunnel(proxy, upstreamSockets, ws) {
  const held = upstreamSockets.filter((entry) => entry.url === '/held').map((entry) => entry.ws);
  await within(
    allClosed(held),
    1_000,
    `the upstream side of the abandoned upgrade (${held.length} reached the upstream) is closed`,
  );
  assert.equal(proxy.stats().tunnels.active, 1, 'only the live tunnel is counted');
  const closed = nextEvent(proxy, 'close');
  ws.close();
  await closed;
  assert.equal(proxy.stats().tunnels.active, 0);
}

/**
 * Resolves with the first truthy value `test()` returns, checked now and on every 'change' that
 * `emitter` emits; rejects with what `test()` throws. Bound it with `within`.
 */
export function until(emitter, test) {
  return new Promise((resolve, reject) => {
    const check = () => {
      let value;
      try {
        value = test();
      } catch (error) {
        emitter.off('change', check);
        reject(error);
        return;
      }
      if (value) {
        emitter.off('change', check);
        resolve(value);
      }
    };
    emitter.on('change', check);
    check();
  });
}
