export { createProxy } from './proxy';
export { attach, type UpgradeApp, type UpgradeEmitter } from './attach';
export { ProxyError, type ProxyErrorCode } from './errors';
export type * from './types';
