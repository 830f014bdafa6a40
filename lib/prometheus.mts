// The ES module entry of `viaduct/prometheus`: the same single instance as `require('viaduct/prometheus')`.
import prometheus from './prometheus.js';

export const { collectMetrics } = prometheus;
export type * from './prometheus.js';
