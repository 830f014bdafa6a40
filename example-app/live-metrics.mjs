// The example page's live chart data: per proxy, one sample a second of requests/s, p50 and p99
// latency (ms) and open tunnels, the last minute of them. Fed by each proxy's `accessLog` function.
const SAMPLES = 60;

function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

export class LiveMetrics {
  /** `proxies`: name → proxy (filled in once they exist), whose `stats()` gives the open tunnels. */
  constructor(proxies) {
    this.proxies = proxies;
    this.pending = {};
    this.history = [];
    this.timer = setInterval(() => this.sample(), 1000);
    this.timer.unref();
  }

  /** The `accessLog` function for the proxy called `name`: keeps each request's duration. */
  recorder(name) {
    return (entry) => {
      if (entry.type === 'request') (this.pending[name] ??= []).push(entry.ms);
    };
  }

  sample() {
    const sample = { time: Date.now(), proxies: {} };
    for (const [name, proxy] of Object.entries(this.proxies)) {
      const durations = (this.pending[name] ?? []).sort((a, b) => a - b);
      this.pending[name] = [];
      sample.proxies[name] = {
        requests: durations.length,
        p50: percentile(durations, 50),
        p99: percentile(durations, 99),
        tunnels: proxy.stats().tunnels.active,
      };
    }
    this.history.push(sample);
    if (this.history.length > SAMPLES) this.history.shift();
  }

  stop() {
    clearInterval(this.timer);
  }
}
