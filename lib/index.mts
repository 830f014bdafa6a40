// The ES module entry: the same single instance as `require('viaduct')`.
import viaduct from './index.js';

export const { createProxy, attach, ProxyError } = viaduct;
export type * from './index.js';
