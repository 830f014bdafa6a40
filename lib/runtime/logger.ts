import type { Logger } from '../types';

const ignore = (): void => {};

/** Errors and warnings reach the console; routine diagnostics stay quiet unless a logger is given. */
export const defaultLogger: Logger = {
  debug: ignore,
  info: ignore,
  warn: (message) => console.warn(message),
  error: (message) => console.error(message),
};

export function resolveLogger(logger: Logger | undefined): Logger {
  if (logger === undefined) return defaultLogger;
  if (typeof logger !== 'object' || logger === null) {
    throw new TypeError(
      'viaduct: logger must be an object with debug, info, warn and error methods',
    );
  }
  for (const level of ['debug', 'info', 'warn', 'error'] as const) {
    if (typeof logger[level] !== 'function')
      throw new TypeError(`viaduct: logger.${level} must be a function`);
  }
  return logger;
}
