export { createProxy } from './proxy/create-proxy';
export { attach, type UpgradeApp, type UpgradeEmitter } from './proxy/attach';
export { ProxyError, type ProxyErrorCode } from './runtime/proxy-error';
export type * from './types';
