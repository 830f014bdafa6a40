/**
 * What viaduct relies on in http-proxy-3 (1.23) beyond its documented API. Each use says why, and
 * what would break it; `lib/upstream/engine.ts` is the only caller.
 */
import type {
  IncomingMessage,
  RequestOptions as HttpRequestOptions,
  OutgoingHttpHeaders,
  ServerResponse,
} from 'node:http';
import type { Duplex } from 'node:stream';
import { setupOutgoing } from 'http-proxy-3/dist/lib/http-proxy/common';
import { OUTGOING_PASSES } from 'http-proxy-3/dist/lib/http-proxy/passes/web-outgoing';

type Listener = (...args: unknown[]) => void;

/**
 * The `close` and `error` listeners http-proxy-3's `ws` adds to the client socket while it runs:
 * one reports socket errors on the engine, two end the upstream sockets it would have piped (it
 * has none: viaduct relays the tunnel), and one also takes the socket out of a module-wide set of
 * open sockets. All of them hold the call's whole scope for as long as the socket lives.
 * `detach()` removes those added since, after running the `close` ones once so that the set lets
 * go of the socket. Breaks if the engine starts doing more in those listeners (1.23.x does not).
 */
export function engineListeners(socket: Duplex): { detach(): void } {
  const closeBefore = socket.listenerCount('close');
  const errorBefore = socket.listenerCount('error');
  return {
    detach() {
      for (const listener of socket.listeners('close').slice(closeBefore) as Listener[]) {
        socket.removeListener('close', listener);
        listener.call(socket);
      }
      for (const listener of socket.listeners('error').slice(errorBefore) as Listener[])
        socket.removeListener('error', listener);
    },
  };
}

type OutgoingOptions = Parameters<typeof setupOutgoing>[0];
type EngineRequest = Parameters<typeof setupOutgoing>[2];
type ResponsePass = (
  req: IncomingMessage,
  res: ServerResponse,
  proxyRes: IncomingMessage,
  options: object,
) => void;

/**
 * The engine's `setupOutgoing`, the first step of its `web`: the options of the upstream request
 * (target, TLS, socket path, agent, `changeOrigin`, auth) from its own options and `req`, which it
 * reads only for `method`, `headers`, `url` and `httpVersionMajor`. Not in its documented API
 * (its `common` module); breaks if the engine moves or renames it.
 */
export function upstreamRequestOptions(
  outgoing: object,
  options: object,
  req: {
    method: string | undefined;
    headers: OutgoingHttpHeaders;
    url: string;
    httpVersionMajor: number;
  },
): HttpRequestOptions & { path: string } {
  return setupOutgoing(
    outgoing as OutgoingOptions,
    options as Parameters<typeof setupOutgoing>[1],
    req as unknown as EngineRequest,
  ) as unknown as HttpRequestOptions & { path: string };
}

/**
 * The engine's passes over an upstream response that copy it to the client response, in its order:
 * the redirect rewrite (`autoRewrite`), the headers with the cookie rewrites, and the status.
 * Exported by its `web-outgoing` module, which its documented API does not name; breaks if the
 * engine moves or renames them. Its two others are left out: `removeChunked` deletes a
 * `Transfer-Encoding` the caller has already dropped, and `setConnection` echoes an HTTP/1.0
 * client's own `Connection` in place of the one the caller decided.
 */
export const REWRITING_PASSES: readonly ResponsePass[] = [
  OUTGOING_PASSES.setRedirectHostRewrite,
  OUTGOING_PASSES.writeHeaders,
  OUTGOING_PASSES.writeStatusCode,
] as unknown as readonly ResponsePass[];

/**
 * The engine's options with every key a call will pass already present (as `null`, which it reads
 * as absent: it only ever reads them as `options.ssl || {}` and alike). It merges them per call as
 * `{ ...options, ...callOptions }`; on V8 before 12 (Node 20) each key the second spread adds gets
 * the copy a hidden class of its own on every call, so every later read of the merged options
 * (about thirty per call of `ws`) misses V8's caches. Keys that only overwrite keep one hidden class.
 */
export function withCallKeys<T extends object>(options: T, keys: readonly string[]): T {
  return { ...options, ...Object.fromEntries(keys.map((key) => [key, null])) };
}

/** Fields `setupOutgoing` copies from the target (and `localAddress` from the options) whether set or not. */
const USUALLY_UNSET = [
  'socketPath',
  'pfx',
  'key',
  'passphrase',
  'cert',
  'ca',
  'ciphers',
  'secureProtocol',
  'localAddress',
] as const;

/**
 * The object the engine's `setupOutgoing` fills in for `http.request` (in `ws`, its `ssl` option).
 * It assigns each of {@link USUALLY_UNSET}, `undefined` or not, and Node copies a
 * request's options three times (`ClientRequest`, then twice in the agent's `addRequest`) at a cost
 * per key: here those fields have setters on the prototype that make an own property only for a
 * value, so that an unset field is no key at all. Breaks nothing if the engine stops assigning
 * them; the saving goes if it defines them with `Object.defineProperty` instead.
 */
class RequestOptions {
  declare servername?: string;

  constructor(servername: string | undefined) {
    if (servername) this.servername = servername;
  }
}
for (const key of USUALLY_UNSET) {
  Object.defineProperty(RequestOptions.prototype, key, {
    get: () => undefined,
    set(this: RequestOptions, value: unknown) {
      if (value !== undefined)
        Object.defineProperty(this, key, {
          value,
          writable: true,
          enumerable: true,
          configurable: true,
        });
    },
  });
}

/** A fresh {@link RequestOptions} for one call of the engine. */
export function requestOptions(servername: string | undefined): { servername?: string } {
  return new RequestOptions(servername);
}
