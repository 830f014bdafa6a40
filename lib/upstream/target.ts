import type { Target, Targets, WeightedTarget } from '../types';

/**
 * Where the engine connects, in the fields it reads: `host` with the port, `hostname` without, and
 * `href`, which it parses to tell redirects to the target (`autoRewrite`).
 */
export interface EngineUrl {
  readonly protocol: 'http:' | 'https:';
  readonly host: string;
  readonly hostname: string;
  readonly port?: string;
  readonly href: string;
  readonly socketPath?: string;
}

/** `hostname` bracketed when it is an IPv6 address; `port` may be empty. */
function engineUrl(protocol: 'http:' | 'https:', hostname: string, port: string): EngineUrl {
  const host = port ? `${hostname}:${port}` : hostname;
  return { protocol, host, hostname, ...(port && { port }), href: `${protocol}//${host}/` };
}

/** A target resolved once at `createProxy` time. */
export interface ResolvedTarget {
  /** What the engine connects to. */
  readonly url: EngineUrl;
  /** The target's own path, without a trailing slash: prepended to every forwarded path. */
  readonly basePath: string;
  readonly secure: boolean;
  /** For log lines only: never written to a client. */
  readonly label: string;
}

const PROTOCOLS: Record<string, 'http:' | 'https:'> = {
  'http:': 'http:',
  'https:': 'https:',
  'ws:': 'http:',
  'wss:': 'https:',
};

function protocolOf(value: string | undefined, where: string): 'http:' | 'https:' {
  const key = (value ?? 'http:').toLowerCase();
  const protocol = PROTOCOLS[key.endsWith(':') ? key : `${key}:`];
  if (!protocol)
    throw new TypeError(
      `viaduct: ${where}: unsupported protocol "${value}" (use http, https, ws or wss)`,
    );
  return protocol;
}

function basePathOf(path: string | undefined): string {
  if (!path || path === '/') return '';
  const withSlash = path.startsWith('/') ? path : `/${path}`;
  return withSlash.endsWith('/') ? withSlash.slice(0, -1) : withSlash;
}

function bracketIPv6(host: string): string {
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

export function resolveTarget(target: Target, where: string): ResolvedTarget {
  if (typeof target === 'string' || target instanceof URL) {
    let url: URL;
    try {
      url = new URL(String(target));
    } catch {
      throw new TypeError(`viaduct: ${where}: "${String(target)}" is not an absolute URL`);
    }
    if (url.search || url.hash)
      throw new TypeError(`viaduct: ${where}: a target cannot have a query or a fragment`);
    if (url.username || url.password)
      throw new TypeError(
        `viaduct: ${where}: put credentials in headers.request, not in the target`,
      );
    const protocol = protocolOf(url.protocol, where);
    const engine = engineUrl(protocol, url.hostname, url.port);
    return {
      url: engine,
      basePath: basePathOf(url.pathname),
      secure: protocol === 'https:',
      label: `${protocol}//${engine.host}`,
    };
  }
  if (target && typeof target === 'object') {
    const protocol = protocolOf(target.protocol, where);
    if ('socketPath' in target && typeof target.socketPath === 'string') {
      const url: EngineUrl = {
        ...engineUrl(protocol, 'localhost', ''),
        socketPath: target.socketPath,
      };
      return {
        url,
        basePath: basePathOf(target.path),
        secure: protocol === 'https:',
        label: `unix:${target.socketPath}`,
      };
    }
    if ('host' in target && typeof target.host === 'string' && target.host) {
      const port =
        target.port === undefined || target.port === '' ? '' : String(Number(target.port));
      if (port === 'NaN')
        throw new TypeError(`viaduct: ${where}: port "${String(target.port)}" is not a number`);
      const engine = engineUrl(protocol, bracketIPv6(target.host), port);
      return {
        url: engine,
        basePath: basePathOf(target.path),
        secure: protocol === 'https:',
        label: `${protocol}//${engine.host}`,
      };
    }
  }
  throw new TypeError(
    `viaduct: ${where}: a target is a URL string, a URL, { host, port, protocol } or { socketPath }`,
  );
}

/** Tells a target (or a list of them) from route options: route options carry a `target` key. */
export function isTarget(value: unknown): value is Targets {
  return (
    typeof value === 'string' ||
    value instanceof URL ||
    Array.isArray(value) ||
    (typeof value === 'object' && value !== null && !('target' in value))
  );
}

/** One upstream of a pool, resolved once. */
export interface PoolMember {
  readonly target: ResolvedTarget;
  readonly weight: number;
}

const MEMBER_KEYS: ReadonlySet<string> = new Set(['target', 'weight']);

function weightOf(value: unknown, where: string): number {
  if (value === undefined) return 1;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 1_000) {
    throw new TypeError(`viaduct: ${where}.weight must be a whole number from 1 to 1000`);
  }
  return value;
}

/** A target or a list of them, resolved as a pool: a single target is a pool of one. */
export function resolvePool(targets: Targets, where: string): PoolMember[] {
  if (!Array.isArray(targets))
    return [{ target: resolveTarget(targets as Target, where), weight: 1 }];
  if (targets.length === 0)
    throw new TypeError(`viaduct: ${where}: a list of targets is not empty`);
  const members = targets.map((entry, index): PoolMember => {
    const at = `${where}[${index}]`;
    if (
      typeof entry === 'object' &&
      entry !== null &&
      'target' in entry &&
      !(entry instanceof URL)
    ) {
      for (const key of Object.keys(entry)) {
        if (!MEMBER_KEYS.has(key))
          throw new TypeError(
            `viaduct: ${at}: unknown option "${key}" (an upstream is { target, weight })`,
          );
      }
      const { target, weight } = entry as WeightedTarget;
      return { target: resolveTarget(target, `${at}.target`), weight: weightOf(weight, at) };
    }
    return { target: resolveTarget(entry as Target, at), weight: 1 };
  });
  const labels = new Set<string>();
  for (const { target } of members) {
    const name = target.label + target.basePath;
    if (labels.has(name)) throw new TypeError(`viaduct: ${where}: ${target.label} is listed twice`);
    labels.add(name);
  }
  return members;
}
