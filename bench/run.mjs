// `npm run bench [-- --quick] [-- --rounds N]`: the upstream, every front and the load
// generators run as separate processes, all plain `node` (no V8 flags); for each metric the fronts
// are measured round by round (A B C, C B A, …) and the table shows medians, plus ratios taken pair
// by pair within each round, then their median. Many short rounds rather than a few long ones: on a
// shared machine the noise comes in bursts of a second or two, and a median of many pairs shrugs
// off the pairs it hit. Last comes the held-tunnels phase: thousands of idle tunnels held open on
// the `node:http` fronts, one front at a time, for the heap per tunnel, the idle CPU and the p99
// with them open.
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { cpus, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';
import { median } from './median.mjs';
import { readyPorts } from './ready-ports.mjs';

const here = (file) => fileURLToPath(new URL(file, import.meta.url));
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const roundsArg = args.indexOf('--rounds');
const ROUNDS_OVERRIDE = roundsArg === -1 ? undefined : Number(args[roundsArg + 1]);
// Whole seconds for wrk, which takes no fractions (the 1 MiB responses); the Node load generators'
// runs (uploads, echo, upgrades) are half as long with `--quick`.
const SECONDS = 1;
const NODE_LOAD_SECONDS = quick ? 0.5 : 1;
// The small-response runs are longer: each wrk run opens 32 fresh connections, and in a 1 s run
// their first requests would be a good part of the slowest 1 % the p99 is made of.
const HTTP_SMALL_SECONDS = quick ? 1 : 2;
// A front keeps a core for 20–40 ms after its load stops (closing 32 connections, a last GC): the
// first requests of the next front's run would pay for it, and its p99 with them.
const SETTLE_MS = 250;
// Each front runs every kind of load it is measured on before it is measured, so that no round
// pays for V8 compiling a front's code for it: an upgrade runs through more code in some fronts
// than others. Small requests and large bodies run in fresh processes, warmed up by their
// metric's `warmUp` (1 MiB for a whole second even with `--quick`: wrk runs whole seconds).
const WARM_UP = quick
  ? { http: 1, large: 1, upload: 0.5, upgrades: 0.5, echo: 0.5 }
  : { http: 2, large: 1, upload: 0.5, upgrades: 1, echo: 0.5 };
const UPLOAD_CONNECTIONS = 8;
// The held-tunnels phase. Each tunnel is two sockets in the front (client and upstream), one in
// the load generator and one in the upstream.
const HELD_TUNNELS_WANTED = quick ? 1_000 : 8_000;
const HELD_SOURCES = 8; // 127.0.0.1 … 127.0.0.8
const IDLE_CPU_SECONDS = 3;
// Each side of the p99 comparison: a forced GC (the heap figure's), a pause, one small-response
// run not counted (after a pause a front's first run is slower, tunnels or not), then the runs.
// Four a side: single 2 s runs of one process ranged 1.9–4.1 ms with nothing changed, and the
// ratio is the median of the run-by-run ratios.
const HELD_P99 = quick
  ? { runs: 1, pauseMs: 250, warmUp: 0 }
  : { runs: 4, pauseMs: 1_000, warmUp: 1 };
// Each front sits next to the fronts it is compared with, so that the two runs of a pair are close
// in time: viaduct-node between the bare engine and the floor, the observed and the pooled fronts
// one further on either side.
const FRONTS = [
  'hpm-express',
  'viaduct-express',
  'http-proxy-express',
  'viaduct-observed-node',
  'http-proxy-node',
  'viaduct-node',
  'floor-node',
  'viaduct-pool-node',
];
// The pooled and the observed fronts only answer the question each is there for (small
// requests/s); the held-tunnels phase runs on the `node:http` fronts.
const UNPOOLED = FRONTS.filter(
  (name) => name !== 'viaduct-pool-node' && name !== 'viaduct-observed-node',
);
const HELD_FRONTS = ['http-proxy-node', 'viaduct-node', 'floor-node'];
const hasWrk = spawnSync('wrk', ['--version']).error === undefined;

const children = new Set();
function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}
process.once('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

// Every Node child starts through bash with the open-files limit raised as far as it goes (65,536,
// else the hard limit: raising it needs root's CAP_SYS_RESOURCE), as plain `node`. `exec` keeps
// the pid, the IPC channel and the environment.
const RAISE_NOFILE = 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"';
function node(script, scriptArgs = [], { ipc = false, stdout = 'pipe' } = {}) {
  return track(
    spawn('bash', ['-c', RAISE_NOFILE, 'bash', process.execPath, script, ...scriptArgs], {
      stdio: ['ignore', stdout, 'inherit', ...(ipc ? ['ipc'] : [])],
    }),
  );
}

/** The soft limit on open files of process `pid`. */
function openFilesLimit(pid) {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8')
    .split('\n')
    .find((text) => text.startsWith('Max open files'));
  return Number(line?.split(/\s+/)[3]);
}

/** Starts front `name` (`bench/front.mjs`) on the upstream's ports and waits until it listens. */
async function startFront(name, upstreamPorts) {
  const child = node(here('front.mjs'), [name, ...upstreamPorts.map(String)], { ipc: true });
  const [port] = await readyPorts(child);
  return { name, process: child, url: `http://127.0.0.1:${port}`, wsUrl: `ws://127.0.0.1:${port}` };
}

async function stopFront(front) {
  const exited = once(front.process, 'exit');
  front.process.kill();
  await exited;
}

async function ask(child, message) {
  child.send(message);
  const [reply] = await once(child, 'message');
  if (reply.ok === false) throw new Error(reply.error);
  return reply;
}

/**
 * CPU time (user + system) of process `pid` so far, in ns: the sum of its threads' run time in
 * /proc/<pid>/task/<tid>/schedstat. /proc/<pid>/stat counts in clock ticks (10 ms, a third of a
 * percent of a core over 3 s), too coarse for the idle CPU; it is the fallback.
 */
function cpuNs(pid) {
  try {
    let total = 0;
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      try {
        total += Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        // A thread that ended between the listing and the read.
      }
    }
    return total;
  } catch {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) * 1e7; // utime + stime, USER_HZ = 100
  }
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
  if (!rps || /Non-2xx/.test(output)) throw new Error(`wrk failed:\n${output}`);
  const errors = /Socket errors:.*/.exec(output);
  if (errors) console.error(`wrk ${url}: ${errors[0]}`);
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

let counterUrl;
/** MB/s of 8 MiB request bodies delivered to the upstream through `front`. */
async function upload(front, uploadLoad, seconds = NODE_LOAD_SECONDS) {
  const { bytes, seconds: elapsed } = await ask(uploadLoad, {
    url: `${front.url}/upload`,
    connections: UPLOAD_CONNECTIONS,
    seconds,
    counterUrl,
  });
  return bytes / elapsed / 1024 ** 2;
}

// `rounds`: in a full run (the p99 row comes from the requests/s runs). `warmUp`: each round
// measures each front in a fresh process, after this warm-up. The rate of large bodies follows the
// GC state a process settles in more than its code, and a process's small requests whether V8
// put its `process.nextTick` on the slow path (docs/performance.md): in the same processes, every
// round would draw the same state again; fresh ones draw it anew each round. `passes`: runs of
// each front per round, in alternating order, averaged into the round's value: the machine's
// speed drifts by a fifth within seconds, and the parity goals need the runs of a pair close in
// time and more of them. Eight fronts, two more metrics and the held-tunnels phase in about 12
// minutes; an even number of rounds where a pair's order matters most.
const METRICS = [
  {
    key: 'rps',
    label: 'HTTP small: requests/s',
    rounds: 6,
    passes: 2,
    fronts: FRONTS,
    warmUp: (front) => httpLoad(`${front.url}/small`, 32, WARM_UP.http),
    // With its p99, which makes the next row.
    run: async (front) => {
      await sleep(SETTLE_MS);
      return httpLoad(`${front.url}/small`, 32, HTTP_SMALL_SECONDS);
    },
  },
  { key: 'p99', label: 'HTTP small: p99 latency (ms)', fronts: FRONTS },
  {
    key: 'mbps',
    label: 'HTTP 1 MiB responses: MB/s',
    rounds: 5,
    fronts: UNPOOLED,
    warmUp: (front) => httpLoad(`${front.url}/large`, 8, WARM_UP.large),
    run: (front) => httpLoad(`${front.url}/large`, 8).then((r) => r.mbps),
  },
  {
    key: 'upload',
    label: 'HTTP 8 MiB uploads: MB/s delivered',
    rounds: 5,
    passes: 2,
    fronts: UNPOOLED,
    warmUp: (front, loads) => upload(front, loads.upload, WARM_UP.upload),
    run: (front, loads) => upload(front, loads.upload),
  },
  {
    key: 'echo',
    label: 'WS echo over 32 tunnels: messages/s',
    rounds: 6,
    passes: 2,
    fronts: UNPOOLED,
    run: async (front, loads) =>
      (
        await ask(loads.ws, {
          type: 'echo',
          url: front.wsUrl,
          sockets: 32,
          seconds: NODE_LOAD_SECONDS,
        })
      ).messages / NODE_LOAD_SECONDS,
  },
  {
    key: 'upgrades',
    label: 'WS upgrades/s (open + close)',
    rounds: 7,
    fronts: UNPOOLED,
    run: async (front, loads) =>
      (
        await ask(loads.ws, {
          type: 'upgrades',
          url: front.wsUrl,
          concurrency: 8,
          seconds: NODE_LOAD_SECONDS,
        })
      ).upgrades / NODE_LOAD_SECONDS,
  },
  // The held-tunnels phase's rows (labels completed once the number of tunnels is known). Their
  // runs are not interleaved between fronts, and an idle CPU near 0 makes no ratio: only the heap
  // has ratio columns.
  { key: 'heap', label: 'heap KiB per idle tunnel', fronts: HELD_FRONTS, held: true },
  {
    key: 'idleCpu',
    label: `idle CPU % of a core (${IDLE_CPU_SECONDS} s)`,
    fronts: HELD_FRONTS,
    held: true,
    noPairs: true,
  },
  {
    key: 'p99Without',
    label: 'HTTP small p99 (ms), no tunnels',
    fronts: HELD_FRONTS,
    held: true,
    noPairs: true,
  },
  {
    key: 'p99With',
    label: 'HTTP small p99 (ms), tunnels open',
    fronts: HELD_FRONTS,
    held: true,
    noPairs: true,
  },
  {
    key: 'p99Held',
    label: 'HTTP small p99, tunnels open ÷ none',
    fronts: HELD_FRONTS,
    held: true,
    noPairs: true,
    ratio: true,
  },
];
const metricOf = (key) => METRICS.find((metric) => metric.key === key);

/** Rounds of `metric` in this run: `--rounds N` gives every metric N, `--quick` one. */
function roundsOf(metric) {
  return ROUNDS_OVERRIDE ?? (quick ? 1 : metric.rounds);
}

/** Runs of each front per round of `metric`: one with `--quick`. */
function passesOf(metric) {
  return quick ? 1 : (metric.passes ?? 1);
}

const mean = (values) => values.reduce((sum, value) => sum + value, 0) / values.length;

// The rows measured round by round (the p99 comes with the requests/s runs).
const MEASURED = METRICS.filter((metric) => metric.rounds !== undefined);

const RATIOS = [
  ['viaduct-node', 'floor-node'],
  ['viaduct-node', 'http-proxy-node'],
  ['viaduct-pool-node', 'viaduct-node'],
  ['viaduct-observed-node', 'viaduct-node'],
  ['viaduct-express', 'http-proxy-express'],
  ['viaduct-express', 'hpm-express'],
];

// `pair`: the median of the pair's per-round ratios; `front`: the median of that front's values.
const atLeast = (goal) => ({ holds: (r) => r >= goal, text: `≥ ${goal}×` });
const atMost = (goal) => ({ holds: (r) => r <= goal, text: `≤ ${goal}×` });
const GOALS = [
  { key: 'rps', pair: ['viaduct-node', 'floor-node'], ...atLeast(0.95) },
  { key: 'rps', pair: ['viaduct-express', 'http-proxy-express'], ...atLeast(1.2) },
  { key: 'mbps', pair: ['viaduct-node', 'floor-node'], ...atLeast(0.95) },
  { key: 'mbps', pair: ['viaduct-node', 'http-proxy-node'], ...atLeast(1.0) },
  { key: 'upload', pair: ['viaduct-node', 'floor-node'], ...atLeast(0.95) },
  { key: 'echo', pair: ['viaduct-node', 'floor-node'], ...atLeast(1.0) },
  { key: 'heap', pair: ['viaduct-node', 'http-proxy-node'], ...atMost(0.6) },
  { key: 'idleCpu', front: 'viaduct-node', holds: (v) => v <= 0.1, text: '≤ 0.1 %' },
  { key: 'p99Held', front: 'viaduct-node', ...atMost(1.2) },
  { key: 'rps', pair: ['viaduct-pool-node', 'viaduct-node'], ...atLeast(0.95) },
  // Issue 23's: a subscriber that counts on each channel costs at most 5 % of requests/s.
  { key: 'rps', pair: ['viaduct-observed-node', 'viaduct-node'], ...atLeast(0.95) },
];
// The earlier targets that still stand beside the goals.
const KEPT = [
  { key: 'rps', pair: ['viaduct-express', 'hpm-express'], ...atLeast(1.5) },
  { key: 'rps', pair: ['viaduct-node', 'http-proxy-node'], ...atLeast(0.95) },
  { key: 'p99', pair: ['viaduct-express', 'http-proxy-express'], ...atMost(1.1) },
  { key: 'p99', pair: ['viaduct-node', 'http-proxy-node'], ...atMost(1.1) },
  { key: 'echo', pair: ['viaduct-express', 'http-proxy-express'], ...atLeast(0.95) },
  { key: 'echo', pair: ['viaduct-node', 'http-proxy-node'], ...atLeast(0.95) },
  { key: 'upgrades', pair: ['viaduct-express', 'hpm-express'], ...atLeast(1) },
];

const format = (value) => value.toFixed(Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 1 ? 2 : 3);
const elapsed = (started) => `${((Date.now() - started) / 1000).toFixed(0)} s`;

async function main() {
  const started = Date.now();
  const upstream = node(here('upstream.mjs'));
  const upstreamPorts = await readyPorts(upstream);
  counterUrl = `http://127.0.0.1:${upstreamPorts[0]}/uploaded`;
  // One long-lived process per front measured in place (echo, upgrades, held tunnels); the
  // metrics with a `warmUp` start a fresh process per run, so the pooled and the observed fronts,
  // measured on small requests only, need none.
  const fronts = [];
  for (const name of UNPOOLED) fronts.push(await startFront(name, upstreamPorts));
  const load = node(here('ws-load.mjs'), [], { ipc: true, stdout: 'inherit' });
  const uploadLoad = node(here('upload-load.mjs'), [], { ipc: true, stdout: 'inherit' });
  const loads = { ws: load, upload: uploadLoad };
  const frontOf = (name) => fronts.find((front) => front.name === name);

  // Each held tunnel is two sockets in the front; keep 512 descriptors in hand for the rest.
  const limit = Math.min(
    openFilesLimit(frontOf('viaduct-node').process.pid),
    openFilesLimit(load.pid),
    openFilesLimit(upstream.pid),
  );
  const HELD_TUNNELS = Math.min(HELD_TUNNELS_WANTED, Math.floor((limit - 512) / 2 / 100) * 100);
  if (HELD_TUNNELS < HELD_TUNNELS_WANTED)
    console.error(
      `open files limited to ${limit}: holding ${HELD_TUNNELS} tunnels, not ${HELD_TUNNELS_WANTED}`,
    );
  for (const metric of METRICS.filter((m) => m.held))
    metric.label = `held tunnels (${HELD_TUNNELS}): ${metric.label}`;

  console.error(`load: ${hasWrk ? 'wrk' : 'autocannon'}; warming up…`);
  for (const front of fronts) {
    await httpLoad(`${front.url}/small`, 32, WARM_UP.http);
    await ask(load, {
      type: 'upgrades',
      url: front.wsUrl,
      concurrency: 8,
      seconds: WARM_UP.upgrades,
    });
    await ask(load, { type: 'echo', url: front.wsUrl, sockets: 32, seconds: WARM_UP.echo });
  }
  console.error(`warm-up done (${elapsed(started)})`);

  // results[metric][front] = one value per round (per run for the held phase's p99s); the p99
  // comes with the requests/s run.
  const results = Object.fromEntries(
    METRICS.map((metric) => [metric.key, Object.fromEntries(metric.fronts.map((n) => [n, []]))]),
  );
  // A pair's ratio in each round so far, or `undefined` when either front has no value.
  const perRound = (key, [a, b]) =>
    results[key][a]?.length && results[key][b]?.length
      ? results[key][a].map((value, round) => value / results[key][b][round])
      : undefined;
  /**
   * One run of `metric` on front `name`: in the round's fresh process of it, started and warmed up
   * at its first run, where the metric has a `warmUp`; else in the long-lived one.
   */
  const measureOnce = async (metric, name, fresh) => {
    if (!metric.warmUp) return metric.run(frontOf(name), loads);
    if (!fresh.has(name)) {
      const front = await startFront(name, upstreamPorts);
      await metric.warmUp(front, loads);
      fresh.set(name, front);
    }
    return metric.run(fresh.get(name), loads);
  };
  for (const metric of MEASURED) {
    const rounds = roundsOf(metric);
    const passes = passesOf(metric);
    const measured = FRONTS.filter((name) => metric.fronts.includes(name));
    for (let round = 1; round <= rounds; round++) {
      const fresh = new Map();
      const runs = Object.fromEntries(measured.map((name) => [name, []]));
      for (let pass = 1; pass <= passes; pass++) {
        // Every other pass backwards (A B C, C B A, …), and each round starts the other way from
        // the last: each front of a pair runs first as often as second, and within a round the
        // runs of a pair sit around the same moment, so that a drift of the machine's speed
        // weighs on both alike.
        const forward = (round + pass) % 2 === 0;
        for (const name of forward ? measured : measured.toReversed())
          runs[name].push(await measureOnce(metric, name, fresh));
      }
      for (const front of fresh.values()) await stopFront(front);
      for (const name of measured) {
        if (metric.key === 'rps') {
          results.rps[name].push(mean(runs[name].map((run) => run.rps)));
          results.p99[name].push(mean(runs[name].map((run) => run.p99)));
        } else {
          results[metric.key][name].push(mean(runs[name]));
        }
      }
      // Each round's own ratios as it ends: the spread behind the medians, and when in a run a miss came.
      const ratios = [...GOALS, ...KEPT]
        .filter((target) => target.key === metric.key && target.pair)
        .map(({ pair }) => `${pair.join(' ÷ ')} ${perRound(metric.key, pair).at(-1).toFixed(2)}×`);
      console.error(`${metric.label}, round ${round}: ${ratios.join(', ')}`);
    }
    console.error(
      `${metric.label}: ${rounds} round(s) of ${passes} pass(es) done (${elapsed(started)})`,
    );
  }

  // The held-tunnels phase, one front at a time, in the same front processes. Without tunnels: a
  // forced GC, a pause, the p99 runs; the heap; the tunnels opened; the heap; a pause, 3 s of idle
  // CPU; the p99 runs with the tunnels open; the tunnels closed.
  const smallP99 = async (front) => {
    await sleep(HELD_P99.pauseMs);
    if (HELD_P99.warmUp) await httpLoad(`${front.url}/small`, 32, HELD_P99.warmUp);
    const p99s = [];
    for (let run = 0; run < HELD_P99.runs; run++) {
      await sleep(SETTLE_MS);
      p99s.push((await httpLoad(`${front.url}/small`, 32, HTTP_SMALL_SECONDS)).p99);
    }
    return p99s;
  };
  for (const name of HELD_FRONTS) {
    const front = frontOf(name);
    await ask(front.process, { type: 'heap' });
    results.p99Without[name] = await smallP99(front);
    const before = (await ask(front.process, { type: 'heap' })).bytes;
    const opening = Date.now();
    await ask(load, { type: 'hold', url: front.wsUrl, count: HELD_TUNNELS, sources: HELD_SOURCES });
    const opened = Date.now() - opening;
    const after = (await ask(front.process, { type: 'heap' })).bytes;
    results.heap[name].push((after - before) / HELD_TUNNELS / 1024);
    await sleep(HELD_P99.pauseMs);
    const [cpu0, time0] = [cpuNs(front.process.pid), process.hrtime.bigint()];
    await sleep(IDLE_CPU_SECONDS * 1_000);
    const [cpu1, time1] = [cpuNs(front.process.pid), process.hrtime.bigint()];
    results.idleCpu[name].push(((cpu1 - cpu0) / Number(time1 - time0)) * 100);
    results.p99With[name] = await smallP99(front);
    const releasing = Date.now();
    const { dropped } = await ask(load, { type: 'release' });
    if (dropped > 0)
      throw new Error(`${name}: ${dropped} held tunnels closed before their release`);
    results.p99Held[name] = results.p99With[name].map(
      (p99, run) => p99 / results.p99Without[name][run],
    );
    console.error(
      `held tunnels through ${name}: ${HELD_TUNNELS} opened in ${(opened / 1000).toFixed(1)} s, closed in ${((Date.now() - releasing) / 1000).toFixed(1)} s (${elapsed(started)})`,
    );
  }

  const lines = [];
  lines.push(
    `| metric | ${FRONTS.join(' | ')} | ${RATIOS.map(([a, b]) => `${a} ÷ ${b}`).join(' | ')} |`,
  );
  lines.push(`|---|${FRONTS.map(() => '---:').join('|')}|${RATIOS.map(() => '---:').join('|')}|`);
  for (const metric of METRICS) {
    const medians = FRONTS.map((name) =>
      results[metric.key][name]?.length
        ? `${format(median(results[metric.key][name]))}${metric.ratio ? '×' : ''}`
        : '—',
    );
    const ratios = RATIOS.map((pair) => {
      const rounds = metric.noPairs ? undefined : perRound(metric.key, pair);
      return rounds ? `${median(rounds).toFixed(2)}×` : '—';
    });
    lines.push(`| ${metric.label} | ${medians.join(' | ')} | ${ratios.join(' | ')} |`);
  }
  // How many rounds' own ratio meets the target: how far a median that meets it could be luck.
  const targetTable = (title, targets) => {
    lines.push('', `| ${title} | value | rounds meeting it | met |`, '|---|---:|---:|:---:|');
    for (const target of targets) {
      const rounds = target.pair
        ? perRound(target.key, target.pair)
        : results[target.key][target.front];
      const value = median(rounds);
      const who = target.pair ? `${target.pair[0]} ÷ ${target.pair[1]}` : target.front;
      const shown =
        target.pair || metricOf(target.key).ratio
          ? `${value.toFixed(2)}×`
          : `${value.toFixed(3)} %`;
      const meeting = `${rounds.filter(target.holds).length} of ${rounds.length}`;
      lines.push(
        `| ${metricOf(target.key).label}: ${who} ${target.text} | ${shown} | ${meeting} | ${target.holds(value) ? 'yes' : '**no**'} |`,
      );
    }
  };
  targetTable('goal', GOALS);
  targetTable('earlier target, kept', KEPT);
  const cpu = cpus();
  console.log(lines.join('\n'));
  console.log(
    `\nNode ${process.version}, ${cpu.length} × ${cpu[0]?.model.trim()}, ${(totalmem() / 1024 ** 3).toFixed(0)} GiB; ` +
      `${hasWrk ? 'wrk' : 'autocannon'}; plain node, no V8 flags; open files ${limit}; ${HTTP_SMALL_SECONDS} s per small-response run, ${SECONDS} s per 1 MiB run, ${NODE_LOAD_SECONDS} s per upload, echo and upgrades run; ` +
      `rounds × runs per front: ${MEASURED.map((metric) => `${metric.key} ${roundsOf(metric)} × ${passesOf(metric)}`).join(', ')}; held tunnels: ${HELD_TUNNELS} from ${HELD_SOURCES} source addresses, p99 ${HELD_P99.runs} run(s) each way, idle CPU over ${IDLE_CPU_SECONDS} s; ` +
      `${elapsed(started)} in all.`,
  );
  for (const child of children) child.kill();
}

await main();
