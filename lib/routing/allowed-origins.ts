import type { IncomingMessage } from 'node:http';
import type { AllowedOrigins, OriginRule } from '../types';

/** Decides whether an upgrade's `Origin` may open a tunnel. */
export type OriginCheck = (origin: string | undefined, req: IncomingMessage) => boolean;

function ruleMatcher(rule: OriginRule, where: string): (origin: string) => boolean {
  if (rule instanceof RegExp) return (origin) => rule.test(origin);
  if (typeof rule === 'string') {
    const expected = rule.toLowerCase();
    return (origin) => origin.toLowerCase() === expected;
  }
  throw new TypeError(`viaduct: ${where}.allowedOrigins holds strings, RegExps, or is a function`);
}

/** Lists refuse an upgrade without `Origin`; a function sees `undefined` and decides itself. */
export function compileAllowedOrigins(
  allowed: AllowedOrigins | undefined,
  where: string,
): OriginCheck | undefined {
  if (allowed === undefined) return undefined;
  if (typeof allowed === 'function') return allowed;
  const rules = (Array.isArray(allowed) ? allowed : [allowed]) as readonly OriginRule[];
  const matchers = rules.map((rule) => ruleMatcher(rule, where));
  return (origin) => origin !== undefined && matchers.some((matches) => matches(origin));
}
