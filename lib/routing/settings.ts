import type { Agent, IncomingMessage } from 'node:http';
import type { ForwardedMode } from '../headers/forwarding';
import { compileHeaderPolicy, type HeaderPolicy } from '../headers/header-policy';
import type { Balance, CookieRewrite, RouteSettings } from '../types';
import { compileAllowedOrigins, type OriginCheck } from './allowed-origins';
import { compilePathRewrite, type PathRewriter } from './forwarded-path';

/**
 * One shared setting: its default, and how a value given at a level (the top level, a route) is
 * checked and compiled over what the level above resolved to. `undefined` means "not given".
 */
interface Setting<T> {
  readonly default: T;
  resolve(value: unknown, inherited: T, where: string): T;
}

function setting<T>(
  defaultValue: T,
  resolve: (value: unknown, inherited: T, where: string) => T,
): Setting<T> {
  return {
    default: defaultValue,
    resolve: (value, inherited, where) =>
      value === undefined ? inherited : resolve(value, inherited, where),
  };
}

/** Refuses unknown keys, so that a misspelt option fails at `createProxy` instead of being ignored. */
export function checkKeys(options: object, allowed: ReadonlySet<string>, where: string): void {
  for (const key of Object.keys(options)) {
    if (!allowed.has(key)) throw new TypeError(`viaduct: ${where}: unknown option "${key}"`);
  }
}

function flag<T extends boolean | undefined>(name: string, defaultValue: T): Setting<boolean | T> {
  return setting<boolean | T>(defaultValue, (value, _inherited, where) => {
    if (typeof value !== 'boolean')
      throw new TypeError(`viaduct: ${where}.${name} must be true or false`);
    return value;
  });
}

function object(value: unknown, name: string, where: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null)
    throw new TypeError(`viaduct: ${where}.${name} must be an object`);
  return value as Record<string, unknown>;
}

function milliseconds(value: unknown, fallback: number, name: string, where: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value)) {
    throw new TypeError(
      `viaduct: ${where}.timeouts.${name} must be a positive number of milliseconds`,
    );
  }
  return value;
}

function cookieRewrite(name: string): Setting<CookieRewrite | undefined> {
  return setting<CookieRewrite | undefined>(undefined, (value, _inherited, where) => {
    if (
      value === false ||
      typeof value === 'string' ||
      (typeof value === 'object' && value !== null)
    )
      return value as CookieRewrite;
    throw new TypeError(`viaduct: ${where}.${name} is a string, an object or false`);
  });
}

/** The compiled header policy of a route, in both directions. */
export interface HeaderPolicies {
  readonly request: HeaderPolicy;
  readonly response: HeaderPolicy;
}

/** A route's timeouts, in milliseconds. */
export interface Timeouts {
  readonly connect: number;
  readonly read: number;
  /** The longest life of a tunnel; `undefined`: none. */
  readonly tunnel: number | undefined;
}

/** A route's active health check, resolved. */
export interface HealthCheck {
  readonly path: string;
  readonly interval: number;
  readonly timeout: number;
}

const HEADER_KEYS: ReadonlySet<string> = new Set(['request', 'response']);
const HEALTH_CHECK_KEYS: ReadonlySet<string> = new Set(['path', 'interval', 'timeout']);
const BALANCES: readonly Balance[] = ['round-robin', 'least-connections', 'hash'];

function count(name: string, defaultValue: number): Setting<number> {
  return setting(defaultValue, (value, _inherited, where) => {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
      throw new TypeError(`viaduct: ${where}.${name} must be a whole number ≥ 0`);
    }
    return value;
  });
}

function positiveMilliseconds(value: unknown, name: string, where: string): number {
  if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value)) {
    throw new TypeError(`viaduct: ${where}.${name} must be a positive number of milliseconds`);
  }
  return value;
}
const TIMEOUT_KEYS: ReadonlySet<string> = new Set(['connect', 'read', 'tunnel']);

/**
 * Every setting shared by the HTTP and the upgrade path, once: what it defaults to and how it is
 * resolved. The keys, the defaults and the resolved type are all derived from this table, and it
 * must name exactly the keys of {@link RouteSettings}.
 */
const SETTINGS = {
  ws: flag('ws', true),
  changeOrigin: flag('changeOrigin', false),
  stripPrefix: flag('stripPrefix', false),
  pathRewrite: setting<PathRewriter | undefined>(undefined, (value, _inherited, where) =>
    compilePathRewrite(value as never, where),
  ),
  // A route's rules replace top-level rules of the same header name and keep the others.
  headers: setting<HeaderPolicies>({ request: [], response: [] }, (value, inherited, where) => {
    const headers = object(value, 'headers', where);
    checkKeys(headers, HEADER_KEYS, `${where}.headers`);
    return {
      request: compileHeaderPolicy(
        inherited.request,
        headers.request as never,
        `${where}.headers.request`,
      ),
      response: compileHeaderPolicy(
        inherited.response,
        headers.response as never,
        `${where}.headers.response`,
      ),
    };
  }),
  forwarded: setting<ForwardedMode>('x-forwarded', (value, _inherited, where) => {
    if (value !== 'x-forwarded' && value !== 'forwarded' && value !== false)
      throw new TypeError(`viaduct: ${where}.forwarded is 'x-forwarded', 'forwarded' or false`);
    return value;
  }),
  // Unset: Express's `trust proxy` verdict on the connecting address decides per request.
  trustProxy: flag('trustProxy', undefined),
  // A route's timeouts override field by field.
  timeouts: setting<Timeouts>(
    { connect: 10_000, read: 60_000, tunnel: undefined },
    (value, inherited, where) => {
      const timeouts = object(value, 'timeouts', where);
      checkKeys(timeouts, TIMEOUT_KEYS, `${where}.timeouts`);
      return {
        connect: milliseconds(timeouts.connect, inherited.connect, 'connect', where),
        read: milliseconds(timeouts.read, inherited.read, 'read', where),
        // 0 undoes a longest life given at the top level: none.
        tunnel:
          timeouts.tunnel === undefined
            ? inherited.tunnel
            : timeouts.tunnel === 0
              ? undefined
              : milliseconds(timeouts.tunnel, 0, 'tunnel', where),
      };
    },
  ),
  allowedOrigins: setting<OriginCheck | undefined>(undefined, (value, _inherited, where) =>
    compileAllowedOrigins(value as never, where),
  ),
  maxTunnels: setting(Infinity, (value, _inherited, where) => {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 0)
      throw new TypeError(`viaduct: ${where}.maxTunnels must be a whole number ≥ 0`);
    return value;
  }),
  secure: flag('secure', undefined),
  ca: setting<string | Buffer | Array<string | Buffer> | undefined>(
    undefined,
    (value) => value as string | Buffer | Array<string | Buffer>,
  ),
  agent: setting<Agent | false | undefined>(undefined, (value, _inherited, where) => {
    if (value !== false && typeof value !== 'object')
      throw new TypeError(`viaduct: ${where}.agent must be an http.Agent or false`);
    return value as Agent | false;
  }),
  balance: setting<Balance>('round-robin', (value, _inherited, where) => {
    if (!BALANCES.includes(value as Balance)) {
      throw new TypeError(
        `viaduct: ${where}.balance is 'round-robin', 'least-connections' or 'hash'`,
      );
    }
    return value as Balance;
  }),
  hashKey: setting<((req: IncomingMessage) => string | undefined) | undefined>(
    undefined,
    (value, _inherited, where) => {
      if (typeof value !== 'function')
        throw new TypeError(`viaduct: ${where}.hashKey must be a function of the request`);
      return value as (req: IncomingMessage) => string | undefined;
    },
  ),
  maxFails: count('maxFails', 1),
  failTimeout: setting(10_000, (value, _inherited, where) =>
    positiveMilliseconds(value, 'failTimeout', where),
  ),
  // Unset: the pool's size − 1, known once the route's targets are.
  retries: count('retries', -1),
  healthCheck: setting<HealthCheck | undefined>(undefined, (value, _inherited, where) => {
    const check = object(value, 'healthCheck', where);
    checkKeys(check, HEALTH_CHECK_KEYS, `${where}.healthCheck`);
    if (typeof check.path !== 'string' || !check.path.startsWith('/')) {
      throw new TypeError(`viaduct: ${where}.healthCheck.path must be a path starting with /`);
    }
    return {
      path: check.path,
      interval:
        check.interval === undefined
          ? 5_000
          : positiveMilliseconds(check.interval, 'healthCheck.interval', where),
      timeout:
        check.timeout === undefined
          ? 2_000
          : positiveMilliseconds(check.timeout, 'healthCheck.timeout', where),
    };
  }),
  cookieDomainRewrite: cookieRewrite('cookieDomainRewrite'),
  cookiePathRewrite: cookieRewrite('cookiePathRewrite'),
  autoRewrite: flag('autoRewrite', undefined),
} satisfies { readonly [K in keyof Required<RouteSettings>]: Setting<unknown> };

type Table = typeof SETTINGS;

/** The shared settings of one route, validated and compiled, with the levels above filled in. */
export type ResolvedSettings = {
  readonly [K in keyof Table]: Table[K] extends Setting<infer T> ? T : never;
};

/** The keys every route and the top level accept. */
export const SETTING_KEYS: readonly string[] = Object.keys(SETTINGS);

export const DEFAULT_SETTINGS = Object.fromEntries(
  Object.entries(SETTINGS).map(([key, entry]) => [key, entry.default]),
) as ResolvedSettings;

/** Resolves `options` over `inherited`: a route over the top level, the top level over the defaults. */
export function resolveSettings(
  options: RouteSettings,
  inherited: ResolvedSettings,
  where: string,
): ResolvedSettings {
  const resolved: Record<string, unknown> = {};
  for (const key of SETTING_KEYS as (keyof Table)[]) {
    resolved[key] = (SETTINGS[key] as Setting<unknown>).resolve(
      options[key],
      inherited[key],
      where,
    );
  }
  return resolved as ResolvedSettings;
}
