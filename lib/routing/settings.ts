import type { Agent } from 'node:http';
import type { ForwardedMode } from '../headers/forwarding';
import { compilePathRewrite, type PathRewriter } from './forwarded-path';
import { compileHeaderPolicy, type HeaderPolicy } from '../headers/header-policy';
import { compileAllowedOrigins, type OriginCheck } from './allowed-origins';
import type { CookieRewrite, RouteSettings } from '../types';

/** The shared settings of one route, validated and compiled, with the top level's filled in. */
export interface ResolvedSettings {
  readonly ws: boolean;
  readonly changeOrigin: boolean;
  readonly stripPrefix: boolean;
  readonly rewrite: PathRewriter | undefined;
  readonly requestHeaders: HeaderPolicy;
  readonly responseHeaders: HeaderPolicy;
  readonly forwarded: ForwardedMode;
  readonly trustProxy: boolean | undefined;
  readonly connectTimeout: number;
  readonly readTimeout: number;
  readonly originAllowed: OriginCheck | undefined;
  readonly maxTunnels: number;
  readonly secure: boolean | undefined;
  readonly ca: string | Buffer | Array<string | Buffer> | undefined;
  readonly agent: Agent | false | undefined;
  readonly cookieDomainRewrite: CookieRewrite | undefined;
  readonly cookiePathRewrite: CookieRewrite | undefined;
  readonly autoRewrite: boolean | undefined;
}

export const DEFAULT_SETTINGS: ResolvedSettings = {
  ws: true,
  changeOrigin: false,
  stripPrefix: false,
  rewrite: undefined,
  requestHeaders: [],
  responseHeaders: [],
  forwarded: 'x-forwarded',
  trustProxy: undefined,
  connectTimeout: 10_000,
  readTimeout: 60_000,
  originAllowed: undefined,
  maxTunnels: Infinity,
  secure: undefined,
  ca: undefined,
  agent: undefined,
  cookieDomainRewrite: undefined,
  cookiePathRewrite: undefined,
  autoRewrite: undefined,
};

/** The keys every route and the top level accept. */
export const SETTING_KEYS: readonly string[] = [
  'ws', 'changeOrigin', 'stripPrefix', 'pathRewrite', 'headers', 'forwarded', 'trustProxy', 'timeouts',
  'allowedOrigins', 'maxTunnels', 'secure', 'ca', 'agent', 'cookieDomainRewrite', 'cookiePathRewrite', 'autoRewrite',
];

/** Refuses unknown keys, so that a misspelt option fails at `createProxy` instead of being ignored. */
export function checkKeys(options: object, allowed: ReadonlySet<string>, where: string): void {
  for (const key of Object.keys(options)) {
    if (!allowed.has(key)) throw new TypeError(`viaduct: ${where}: unknown option "${key}"`);
  }
}

function flag(value: unknown, fallback: boolean, name: string, where: string): boolean;
function flag(value: unknown, fallback: boolean | undefined, name: string, where: string): boolean | undefined;
function flag(value: unknown, fallback: boolean | undefined, name: string, where: string): boolean | undefined {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new TypeError(`viaduct: ${where}.${name} must be true or false`);
  return value;
}

function milliseconds(value: unknown, fallback: number, name: string, where: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value)) {
    throw new TypeError(`viaduct: ${where}.timeouts.${name} must be a positive number of milliseconds`);
  }
  return value;
}

function forwardedMode(value: unknown, fallback: ForwardedMode, where: string): ForwardedMode {
  if (value === undefined) return fallback;
  if (value !== 'x-forwarded' && value !== 'forwarded' && value !== false) {
    throw new TypeError(`viaduct: ${where}.forwarded is 'x-forwarded', 'forwarded' or false`);
  }
  return value;
}

function tunnelLimit(value: unknown, fallback: number, where: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
    throw new TypeError(`viaduct: ${where}.maxTunnels must be a whole number ≥ 0`);
  }
  return value;
}

function cookieRewrite(value: unknown, fallback: CookieRewrite | undefined, name: string, where: string): CookieRewrite | undefined {
  if (value === undefined) return fallback;
  if (value === false || typeof value === 'string' || (typeof value === 'object' && value !== null)) return value as CookieRewrite;
  throw new TypeError(`viaduct: ${where}.${name} is a string, an object or false`);
}

/** Resolves `options` over `inherited`: a route over the top level, the top level over the defaults. */
export function resolveSettings(options: RouteSettings, inherited: ResolvedSettings, where: string): ResolvedSettings {
  const timeouts = options.timeouts ?? {};
  if (typeof timeouts !== 'object' || timeouts === null) throw new TypeError(`viaduct: ${where}.timeouts must be an object`);
  checkKeys(timeouts, new Set(['connect', 'read']), `${where}.timeouts`);
  const headers = options.headers ?? {};
  if (typeof headers !== 'object' || headers === null) throw new TypeError(`viaduct: ${where}.headers must be an object`);
  checkKeys(headers, new Set(['request', 'response']), `${where}.headers`);
  if (options.agent !== undefined && options.agent !== false && typeof options.agent !== 'object') {
    throw new TypeError(`viaduct: ${where}.agent must be an http.Agent or false`);
  }
  return {
    ws: flag(options.ws, inherited.ws, 'ws', where),
    changeOrigin: flag(options.changeOrigin, inherited.changeOrigin, 'changeOrigin', where),
    stripPrefix: flag(options.stripPrefix, inherited.stripPrefix, 'stripPrefix', where),
    rewrite: options.pathRewrite === undefined ? inherited.rewrite : compilePathRewrite(options.pathRewrite, where),
    requestHeaders: compileHeaderPolicy(inherited.requestHeaders, headers.request, `${where}.headers.request`),
    responseHeaders: compileHeaderPolicy(inherited.responseHeaders, headers.response, `${where}.headers.response`),
    forwarded: forwardedMode(options.forwarded, inherited.forwarded, where),
    trustProxy: flag(options.trustProxy, inherited.trustProxy, 'trustProxy', where),
    connectTimeout: milliseconds(timeouts.connect, inherited.connectTimeout, 'connect', where),
    readTimeout: milliseconds(timeouts.read, inherited.readTimeout, 'read', where),
    originAllowed: options.allowedOrigins === undefined ? inherited.originAllowed : compileAllowedOrigins(options.allowedOrigins, where),
    maxTunnels: tunnelLimit(options.maxTunnels, inherited.maxTunnels, where),
    secure: flag(options.secure, inherited.secure, 'secure', where),
    ca: options.ca ?? inherited.ca,
    agent: options.agent ?? inherited.agent,
    cookieDomainRewrite: cookieRewrite(options.cookieDomainRewrite, inherited.cookieDomainRewrite, 'cookieDomainRewrite', where),
    cookiePathRewrite: cookieRewrite(options.cookiePathRewrite, inherited.cookiePathRewrite, 'cookiePathRewrite', where),
    autoRewrite: flag(options.autoRewrite, inherited.autoRewrite, 'autoRewrite', where),
  };
}
