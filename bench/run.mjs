// `npm run bench [-- --quick] [-- --rounds N]`: the upstream, every front and the load
// generators run as separate processes; for each metric the fronts are measured round by round
// (A B C, C B A, …) and the table shows medians, plus ratios taken pair by pair within each round,
// then their median. Many short rounds rather than a few long ones: on a shared machine the noise
// comes in bursts of a second or two, and a median of many pairs shrugs off the pairs it hit.
import { fork, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { cpus, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';

const here = (file) => fileURLToPath(new URL(file, import.meta.url));
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const roundsArg = args.indexOf('--rounds');
const ROUNDS_OVERRIDE = roundsArg === -1 ? undefined : Number(args[roundsArg + 1]);
// Whole seconds: wrk takes no fractions.
const SECONDS = 1;
// The small-response runs are longer: each wrk run opens 32 fresh connections, and in a 1 s run
// their first requests would be a good part of the slowest 1 % the p99 is made of.
const HTTP_SMALL_SECONDS = quick ? 1 : 2;
// A front keeps a core for 20–40 ms after its load stops (closing 32 connections, a last GC): the
// first requests of the next front's run would pay for it, and its p99 with them.
const SETTLE_MS = 250;
// Each front runs every kind of load before it is measured, so that no round pays for V8 compiling
// a front's code for it: an upgrade runs through more code in some fronts than others, and a 1 MiB
// response through the backpressure paths that small ones never take.
const WARM_UP = quick
  ? { http: 1, large: 1, upgrades: 1, echo: 1 }
  : { http: 2, large: 1, upgrades: 2, echo: 1 };
const HELD_TUNNELS = quick ? 500 : 2_000;
// Each front sits next to the fronts it is compared with, so that the two runs of a pair are close in time.
const FRONTS = [
  'hpm-express',
  'viaduct-express',
  'http-proxy-express',
  'viaduct-node',
  'http-proxy-node',
];
const hasWrk = spawnSync('wrk', ['--version']).error === undefined;
// Taking turns, the fronts and the WebSocket load generator sit idle for seconds at a time, and
// V8's memory reducer then collects garbage in them. After such a collection, Node's
// `process.nextTick` can fall into a slow path of V8's for the rest of the process's life (0.3–0.7 µs
// more per call, 4–5 % of a front's CPU per echo message); which fronts fell in followed their
// place in the order, not their code (BENCHMARKS.md, the tenth session's findings). The upstream
// runs the same way.
const NODE_FLAGS = ['--no-memory-reducer'];

const children = new Set();
function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}
process.once('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

async function readyPort(child) {
  let output = '';
  for await (const chunk of child.stdout) {
    output += chunk;
    const match = /READY (\d+)/.exec(output);
    if (match) return Number(match[1]);
  }
  throw new Error(`process exited before READY: ${output}`);
}

async function ask(child, message) {
  child.send(message);
  const [reply] = await once(child, 'message');
  if (reply.ok === false) throw new Error(reply.error);
  return reply;
}

const UNITS = { us: 1e-3, ms: 1, s: 1e3 };
const SIZES = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 };

async function wrk(url, connections, seconds = SECONDS) {
  const child = track(spawn('wrk', ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency', url]));
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  await once(child, 'exit');
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(output)?.[1]);
  const [, p99, p99Unit] = /99%\s+([\d.]+)(us|ms|s)/.exec(output) ?? [];
  const [, transfer, transferUnit] = /Transfer\/sec:\s+([\d.]+)(B|KB|MB|GB)/.exec(output) ?? [];
  if (!rps) throw new Error(`wrk printed no result:\n${output}`);
  return {
    rps,
    p99: Number(p99) * UNITS[p99Unit],
    mbps: (Number(transfer) * SIZES[transferUnit]) / 1024 ** 2,
  };
}

async function autocannon(url, connections, seconds = SECONDS) {
  const cli = here('../node_modules/autocannon/autocannon.js');
  const child = track(
    spawn(process.execPath, [cli, '-j', '-c', String(connections), '-d', String(seconds), url]),
  );
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  await once(child, 'exit');
  const result = JSON.parse(output);
  return {
    rps: result.requests.average,
    p99: result.latency.p99,
    mbps: result.throughput.average / 1024 ** 2,
  };
}

const httpLoad = hasWrk ? wrk : autocannon;

// `rounds`: in a full run (the p99 row comes from the requests/s runs). The time goes where the
// targets are closest to the line: upgrades/s has the most rounds. The heap per tunnel barely moves
// between rounds and holding 2,000 tunnels takes a while; MB/s has no target.
const METRICS = [
  { key: 'rps', label: 'HTTP small: requests/s', rounds: 9 },
  { key: 'p99', label: 'HTTP small: p99 latency (ms)', rounds: 9 },
  {
    key: 'mbps',
    label: 'HTTP 1 MiB: MB/s',
    rounds: 3,
    run: (front) => httpLoad(`${front.url}/large`, 8).then((r) => r.mbps),
  },
  {
    key: 'echo',
    label: 'WS echo over 32 tunnels: messages/s',
    rounds: 7,
    run: async (front, load) =>
      (await ask(load, { type: 'echo', url: front.wsUrl, sockets: 32, seconds: SECONDS }))
        .messages / SECONDS,
  },
  {
    key: 'upgrades',
    label: 'WS upgrades/s (open + close)',
    rounds: 15,
    run: async (front, load) =>
      (await ask(load, { type: 'upgrades', url: front.wsUrl, concurrency: 8, seconds: SECONDS }))
        .upgrades / SECONDS,
  },
  {
    key: 'heap',
    label: `heap KiB per idle tunnel (${HELD_TUNNELS} open, after GC)`,
    rounds: 1,
    run: async (front, load) => {
      const before = (await ask(front.process, { type: 'heap' })).bytes;
      await ask(load, { type: 'hold', url: front.wsUrl, count: HELD_TUNNELS });
      const after = (await ask(front.process, { type: 'heap' })).bytes;
      await ask(load, { type: 'release' });
      return (after - before) / HELD_TUNNELS / 1024;
    },
  },
];

/** Rounds of `metric` in this run: `--rounds N` gives every metric N, `--quick` one. */
function roundsOf(metric) {
  return ROUNDS_OVERRIDE ?? (quick ? 1 : metric.rounds);
}

// The p99 row reuses the requests/s run rather than loading the front twice.
const MEASURED = METRICS.filter((metric) => metric.key !== 'p99');

const RATIOS = [
  ['viaduct-express', 'hpm-express'],
  ['viaduct-express', 'http-proxy-express'],
  ['viaduct-node', 'http-proxy-node'],
];

const TARGETS = [
  { pair: ['viaduct-express', 'hpm-express'], key: 'rps', holds: (r) => r >= 1.5, text: '≥ 1.5×' },
  {
    pair: ['viaduct-express', 'http-proxy-express'],
    key: 'rps',
    holds: (r) => r >= 0.95,
    text: '≥ 0.95×',
  },
  {
    pair: ['viaduct-node', 'http-proxy-node'],
    key: 'rps',
    holds: (r) => r >= 0.95,
    text: '≥ 0.95×',
  },
  {
    pair: ['viaduct-express', 'http-proxy-express'],
    key: 'p99',
    holds: (r) => r <= 1.1,
    text: '≤ 1.1×',
  },
  { pair: ['viaduct-node', 'http-proxy-node'], key: 'p99', holds: (r) => r <= 1.1, text: '≤ 1.1×' },
  {
    pair: ['viaduct-express', 'http-proxy-express'],
    key: 'echo',
    holds: (r) => r >= 0.95,
    text: '≥ 0.95×',
  },
  {
    pair: ['viaduct-node', 'http-proxy-node'],
    key: 'echo',
    holds: (r) => r >= 0.95,
    text: '≥ 0.95×',
  },
  { pair: ['viaduct-express', 'hpm-express'], key: 'upgrades', holds: (r) => r >= 1, text: '≥ 1×' },
  {
    pair: ['viaduct-express', 'http-proxy-express'],
    key: 'heap',
    holds: (r) => r <= 1.1,
    text: '≤ 1.1×',
  },
  {
    pair: ['viaduct-node', 'http-proxy-node'],
    key: 'heap',
    holds: (r) => r <= 1.1,
    text: '≤ 1.1×',
  },
];

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};
const format = (value) => (Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(2));

async function main() {
  const started = Date.now();
  const upstream = track(
    spawn(process.execPath, [...NODE_FLAGS, here('upstream.mjs')], {
      stdio: ['ignore', 'pipe', 'inherit'],
    }),
  );
  const upstreamPort = await readyPort(upstream);
  const fronts = [];
  for (const name of FRONTS) {
    const child = track(
      fork(here('front.mjs'), [name, String(upstreamPort)], {
        execArgv: ['--expose-gc', ...NODE_FLAGS],
        stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
      }),
    );
    const port = await readyPort(child);
    fronts.push({
      name,
      process: child,
      url: `http://127.0.0.1:${port}`,
      wsUrl: `ws://127.0.0.1:${port}`,
    });
  }
  const load = track(
    fork(here('ws-load.mjs'), [], {
      execArgv: NODE_FLAGS,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    }),
  );

  console.error(`load: ${hasWrk ? 'wrk' : 'autocannon'}; warming up…`);
  for (const front of fronts) {
    await httpLoad(`${front.url}/small`, 32, WARM_UP.http);
    await httpLoad(`${front.url}/large`, 8, WARM_UP.large);
    await ask(load, {
      type: 'upgrades',
      url: front.wsUrl,
      concurrency: 8,
      seconds: WARM_UP.upgrades,
    });
    await ask(load, { type: 'echo', url: front.wsUrl, sockets: 32, seconds: WARM_UP.echo });
  }

  // results[metric][front] = one value per round; the p99 comes with the requests/s run.
  const results = Object.fromEntries(
    METRICS.map((metric) => [metric.key, Object.fromEntries(FRONTS.map((name) => [name, []]))]),
  );
  for (const metric of MEASURED) {
    const rounds = roundsOf(metric);
    for (let round = 1; round <= rounds; round++) {
      // Every other round backwards (A B C, C B A, …): each front of a pair runs first as often as second.
      for (const front of round % 2 === 1 ? fronts : fronts.toReversed()) {
        if (metric.key === 'rps') {
          await sleep(SETTLE_MS);
          const run = await httpLoad(`${front.url}/small`, 32, HTTP_SMALL_SECONDS);
          results.rps[front.name].push(run.rps);
          results.p99[front.name].push(run.p99);
        } else {
          results[metric.key][front.name].push(await metric.run(front, load));
        }
      }
    }
    console.error(
      `${metric.label}: ${rounds} round(s) done (${((Date.now() - started) / 1000).toFixed(0)} s)`,
    );
  }

  const perRound = (key, [a, b]) =>
    results[key][a].map((value, round) => value / results[key][b][round]);
  const ratio = (key, pair) => median(perRound(key, pair));
  const lines = [];
  lines.push(
    `| metric | ${FRONTS.join(' | ')} | ${RATIOS.map(([a, b]) => `${a} ÷ ${b}`).join(' | ')} |`,
  );
  lines.push(`|---|${FRONTS.map(() => '---:').join('|')}|${RATIOS.map(() => '---:').join('|')}|`);
  for (const metric of METRICS) {
    const medians = FRONTS.map((name) => format(median(results[metric.key][name])));
    const ratios = RATIOS.map((pair) => `${ratio(metric.key, pair).toFixed(2)}×`);
    lines.push(`| ${metric.label} | ${medians.join(' | ')} | ${ratios.join(' | ')} |`);
  }
  lines.push('');
  // How many rounds' own ratio meets the target: how far a median that meets it could be luck.
  lines.push('| target | ratio | rounds meeting it | met |');
  lines.push('|---|---:|---:|:---:|');
  for (const target of TARGETS) {
    const rounds = perRound(target.key, target.pair);
    const value = median(rounds);
    const label = METRICS.find((metric) => metric.key === target.key).label;
    const meeting = `${rounds.filter(target.holds).length} of ${rounds.length}`;
    lines.push(
      `| ${label}: ${target.pair[0]} ÷ ${target.pair[1]} ${target.text} | ${value.toFixed(2)}× | ${meeting} | ${target.holds(value) ? 'yes' : '**no**'} |`,
    );
  }
  const cpu = cpus();
  console.log(lines.join('\n'));
  console.log(
    `\nNode ${process.version}, ${cpu.length} × ${cpu[0]?.model.trim()}, ${(totalmem() / 1024 ** 3).toFixed(0)} GiB; ` +
      `${hasWrk ? 'wrk' : 'autocannon'}; Node processes with ${NODE_FLAGS.join(' ')}; ${HTTP_SMALL_SECONDS} s per small-response run, ${SECONDS} s per other measurement; rounds: ${MEASURED.map((metric) => `${metric.key} ${roundsOf(metric)}`).join(', ')}; ` +
      `${((Date.now() - started) / 1000).toFixed(0)} s in all.`,
  );
  for (const child of children) child.kill();
}

await main();
