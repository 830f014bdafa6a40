import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import { ProxyError } from '../runtime/proxy-error';
import { isToken } from './token';
import type { HeaderRule, HeaderRules, HeaderValue } from '../types';

/** A header rule compiled at `createProxy` time: the name lower-cased and static values validated. */
export type CompiledHeaderRule =
  | { readonly name: string; readonly kind: 'set'; readonly value: string | readonly string[] }
  | { readonly name: string; readonly kind: 'remove' }
  | {
      readonly name: string;
      readonly kind: 'dynamic';
      readonly compute: (req: IncomingMessage) => HeaderValue | null | undefined;
    };

export type HeaderPolicy = readonly CompiledHeaderRule[];

// What Node accepts in a header value: HTAB, visible ASCII, space and obs-text.
const INVALID_VALUE_CHAR = /[^\t\x20-\x7e\x80-\xff]/;

function normaliseValue(value: HeaderValue): string | readonly string[] | undefined {
  if (Array.isArray(value)) {
    const values = value.map(String);
    return values.some((v) => INVALID_VALUE_CHAR.test(v)) ? undefined : values;
  }
  const text = String(value);
  return INVALID_VALUE_CHAR.test(text) ? undefined : text;
}

function compileRule(name: string, rule: HeaderRule, where: string): CompiledHeaderRule {
  if (!isToken(name))
    throw new TypeError(`viaduct: ${where}: "${name}" is not a valid header name`);
  const lower = name.toLowerCase();
  if (rule === null) return { name: lower, kind: 'remove' };
  if (typeof rule === 'function') return { name: lower, kind: 'dynamic', compute: rule };
  if (typeof rule !== 'string' && typeof rule !== 'number' && !Array.isArray(rule)) {
    throw new TypeError(
      `viaduct: ${where}["${name}"]: a header rule is a string, number, array, null or function`,
    );
  }
  const value = normaliseValue(rule);
  if (value === undefined) {
    throw new TypeError(
      `viaduct: ${where}["${name}"]: the value contains CR, LF, NUL or another control character`,
    );
  }
  return { name: lower, kind: 'set', value };
}

/** Compiles rules, letting `overrides` replace `base` rules of the same header name. */
export function compileHeaderPolicy(
  base: HeaderPolicy,
  overrides: HeaderRules | undefined,
  where: string,
): HeaderPolicy {
  if (overrides === undefined) return base;
  if (typeof overrides !== 'object' || overrides === null)
    throw new TypeError(`viaduct: ${where} must be an object`);
  const compiled = Object.entries(overrides).map(([name, rule]) => compileRule(name, rule, where));
  const replaced = new Set(compiled.map((rule) => rule.name));
  return [...base.filter((rule) => !replaced.has(rule.name)), ...compiled];
}

/**
 * The value a rule gives for this request: a value to set, `null` to remove, `undefined` to leave.
 * Throws `EBADHEADER` when a rule function returns an unwritable value (CR, LF, NUL or another control character).
 */
function valueFor(
  rule: CompiledHeaderRule,
  req: IncomingMessage,
): string | readonly string[] | null | undefined {
  if (rule.kind === 'set') return rule.value;
  if (rule.kind === 'remove') return null;
  const computed = rule.compute(req);
  if (computed === null || computed === undefined) return computed;
  const value = normaliseValue(computed);
  if (value === undefined)
    throw new ProxyError('EBADHEADER', `header "${rule.name}" would carry a control character`);
  return value;
}

/** Applies the policy to a plain header object with lower-case names (upstream requests, raw responses). */
export function applyToHeaders(
  policy: HeaderPolicy,
  headers: OutgoingHttpHeaders,
  req: IncomingMessage,
): void {
  for (const rule of policy) {
    const value = valueFor(rule, req);
    if (value === null) delete headers[rule.name];
    else if (value !== undefined) headers[rule.name] = value as string | string[];
  }
}

/** Where response rules write: a `ServerResponse`, or {@link headerObject} for a raw socket response. */
export interface HeaderSink {
  setHeader(name: string, value: string | readonly string[]): unknown;
  removeHeader(name: string): unknown;
}

/** A {@link HeaderSink} over a plain header object with lower-case names. */
export function headerObject(headers: OutgoingHttpHeaders): HeaderSink {
  return {
    setHeader: (name, value) => (headers[name] = value as string | string[]),
    removeHeader: (name) => delete headers[name],
  };
}

/**
 * Applies the policy to a response about to write its head. A rule function that fails or returns
 * an unwritable value leaves that header out and is reported; the response still goes out.
 */
export function applyToResponse(
  policy: HeaderPolicy,
  sink: HeaderSink,
  req: IncomingMessage,
  report: (error: unknown) => void,
): void {
  for (const rule of policy) {
    try {
      const value = valueFor(rule, req);
      if (value === null) sink.removeHeader(rule.name);
      else if (value !== undefined) sink.setHeader(rule.name, value);
    } catch (error) {
      sink.removeHeader(rule.name);
      report(error);
    }
  }
}
