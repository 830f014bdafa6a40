// `node soak/run.mjs [--seconds N] [--seed S]` (or `npm run soak -- --seconds N`): a soak of the
// built package on loopback. A viaduct front (Express 5, its own process, `--expose-gc`) routes
// `/api` to an HTTP upstream, `/ws` to a WebSocket echo upstream and `/pool` to a pool of three HTTP
// upstreams (each its own process, SIGKILLed and restarted on the same port at random moments; at
// most two of the pool's three down at once) while clients here send mixed traffic. Every response
// is checked, and every `/pool` request must succeed; at the end the front must be up, with
// sockets, listeners, in-flight counts and heap back where they were. Prints a summary table;
// exits 0 on pass, 1 with the reasons.
import http from 'node:http';
import { join, resolve } from 'node:path';
import { prng } from './bytes.mjs';
import { Front, Upstream, bounded, killAllChildren, pickPort, sleep } from './processes.mjs';
import {
  FAILURES,
  POOL_KINDS,
  POOL_OUTCOMES,
  heldTunnels,
  httpDownProbe,
  httpExchange,
  nextHttpSpec,
  nextWsSpec,
  poolProbeSpec,
  wsDownProbe,
  wsSession,
} from './traffic.mjs';

// ---------------------------------------------------------------------------------------------
// Settings.

function stringOption(name) {
  const args = process.argv.slice(2);
  const at = args.indexOf(`--${name}`);
  return at === -1 ? undefined : args[at + 1];
}

function option(name, fallback) {
  const args = process.argv.slice(2);
  const at = args.indexOf(`--${name}`);
  if (at === -1) return fallback;
  const value = Number(args[at + 1]);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name} takes a positive number`);
  return value;
}

const SECONDS = option('seconds', 60);
/** `--snapshots DIR`: heap snapshots of the front after warm-up and at the end, for diagnosing growth. */
const SNAPSHOTS = stringOption('snapshots') && resolve(stringOption('snapshots'));
const SEED = option('seed', Math.floor(Math.random() * 2 ** 31)) >>> 0;
const TOTAL_MS = SECONDS * 1_000;
/** Warm-up: the first 10 % of the run, at least 3 s (and at most half of it). */
const WARMUP_MS = Math.min(Math.max(3_000, TOTAL_MS * 0.1), TOTAL_MS / 2);
const HTTP_CLIENTS = 24;
const WS_CLIENTS = 8;
/** Tunnels held open for the graceful close at the end, which must end each with code 1001. */
const HELD_AT_CLOSE = 8;
/** Besides: two down-probes and two /pool probes at most, so at most 36 exchanges in flight. */
const MAX_OPS_PER_CLIENT = 200_000;
const MAX_KILLS_PER_PHASE = 1_000;
/** Between kills of one upstream; the first kill of the warm-up comes sooner. */
const KILL_EVERY = [2_000, 6_000];
const DOWNTIME = [300, 1_500];
/** The pool behind `/pool`: its upstreams are killed in turns, never more than two down at once. */
const POOL_SIZE = 3;
const POOL_MAX_DOWN = POOL_SIZE - 1;
/** The front's `failTimeout` on `/pool`. */
const POOL_FAIL_TIMEOUT = 500;
/** Between two kills in the pool (of any of its upstreams): each is killed every 1.5–4.5 s or so. */
const POOL_KILL_EVERY = [500, 1_500];
/**
 * Bound on waiting for the front to return to its baseline (polled over IPC every 100 ms). Well
 * under the front's read timeout (60 s, the default): a tunnel or request left open after its
 * client went is a failure, not something the idle timer cleans up before the check.
 */
const SETTLE_BOUND = 15_000;
const HEAP_TOLERANCE = 0.1;
/** The whole run is bounded too: a hang anywhere ends it as a failure. */
const HARD_BOUND = TOTAL_MS + 120_000;

const random = prng(SEED);
const between = (low, high) => low + Math.floor(random() * (high - low + 1));

// ---------------------------------------------------------------------------------------------
// Outcome tally.

const tally = new Map();
const failures = [];
const MAX_FAILURE_LINES = 30;

/** The first `/pool` exchanges cut after their head (allowed, reported): what they were. */
const poolCuts = [];

function record(kind, outcome, detail) {
  const row = tally.get(kind) ?? new Map();
  tally.set(kind, row);
  row.set(outcome, (row.get(outcome) ?? 0) + 1);
  const poolFailure = POOL_KINDS.includes(kind) && !POOL_OUTCOMES.has(outcome);
  if ((FAILURES.has(outcome) || poolFailure) && failures.length < MAX_FAILURE_LINES)
    failures.push(`${kind}: ${outcome}: ${detail ?? ''}`);
  if (POOL_KINDS.includes(kind) && outcome === 'cut' && poolCuts.length < 10) poolCuts.push(detail);
}

const count = (kind, outcome) => tally.get(kind)?.get(outcome) ?? 0;
const countAll = (outcome, kinds = [...tally.keys()]) =>
  kinds.reduce((sum, kind) => sum + count(kind, outcome), 0);
const HTTP_KINDS = [
  'get-small',
  'get-large-cl',
  'get-large-chunked',
  'upload-cl',
  'upload-chunked',
  'slow-reader',
  'abort-upload',
  'abort-download',
  'abort-waiting',
  ...POOL_KINDS,
];
const WS_KINDS = ['ws-tunnel', 'ws-vanish'];

/** What each probe while an upstream was down got: `s502` every time, or the run fails. */
const downProbes = { http: new Map(), ws: new Map() };
/** What each `/pool` probe while pool upstreams were down got, by how many were down: `ok` every time. */
const poolProbes = new Map();

/**
 * How many of the pool's upstreams are down (killed, or restarting: not yet listening again), and
 * for how long each count held. A killer takes its place here before it kills.
 */
const poolDown = { now: 0, most: 0, start: 0, since: 0, ms: Array(POOL_SIZE + 1).fill(0) };
function poolDownBy(delta) {
  const at = Date.now();
  if (poolDown.since) poolDown.ms[poolDown.now] += at - poolDown.since;
  poolDown.since = at;
  poolDown.now += delta;
  poolDown.most = Math.max(poolDown.most, poolDown.now);
}
/** The first of the pool killers' doings, with the wall clock, to line up with the front's events. */
const poolKillEvents = [];
function poolKillEvent(upstream, what) {
  if (poolKillEvents.length < 400)
    poolKillEvents.push({ at: Date.now(), what: `${upstream.name} (:${upstream.port}) ${what}` });
}
/** Which pool upstreams are up right now (for failure lines). */
const poolState = () =>
  poolUpstreams.map((u) => `${u.name} ${u.up ? 'up' : 'down'}`).join(', ') || 'no pool';

// ---------------------------------------------------------------------------------------------
// The run.

let front;
let upstreams;
let poolUpstreams = [];

async function httpClient(agent, until) {
  for (let i = 0; i < MAX_OPS_PER_CLIENT && Date.now() < until && front.alive; i++) {
    const spec = nextHttpSpec(random);
    const before = spec.pool ? poolState() : undefined;
    const result = await httpExchange(front.port, agent, spec);
    // A /pool exchange that did not end `ok`: which of the pool's upstreams were up, then and after.
    const detail =
      spec.pool && result.outcome !== 'ok'
        ? `${result.detail ?? ''} [pool at start: ${before}; at the end: ${poolState()}]`
        : result.detail;
    record(spec.kind, result.outcome, detail);
  }
}

async function wsClient(until) {
  for (let i = 0; i < MAX_OPS_PER_CLIENT && Date.now() < until && front.alive; i++) {
    const spec = nextWsSpec(random);
    const result = await wsSession(front.port, spec);
    record(spec.kind, result.outcome, result.detail);
  }
}

/** Kills `upstream` at random moments until the phase ends; it is up again when this resolves. */
async function killer(upstream, until, firstWithin) {
  for (let i = 0; i < MAX_KILLS_PER_PHASE && front.alive; i++) {
    const wait = i === 0 && firstWithin ? between(300, firstWithin) : between(...KILL_EVERY);
    // No kill whose outage would outlast the phase.
    if (Date.now() + wait + DOWNTIME[1] + 500 >= until) break;
    await sleep(wait);
    await upstream.kill();
    // Down now (the process is gone, its port closed): the front must answer 502.
    const probe = upstream.name === 'http' ? httpDownProbe : wsDownProbe;
    const { outcome, detail } = await probe(front.port);
    downProbes[upstream.name].set(outcome, (downProbes[upstream.name].get(outcome) ?? 0) + 1);
    if (outcome !== 's502' && failures.length < MAX_FAILURE_LINES)
      failures.push(
        `${upstream.name} upstream down: the front answered ${outcome} (${detail ?? ''}), not 502`,
      );
    await sleep(between(...DOWNTIME));
    await upstream.restart();
  }
}

/** Pool upstreams in an outage (killed, and not yet listening again and counted back). */
const poolOutages = new Set();

/** Whether `upstream` may be killed now: it is up, fewer than two are down, and one of the others is listening. */
function mayKillFromPool(upstream) {
  return (
    upstream.up &&
    !poolOutages.has(upstream) &&
    poolDown.now < POOL_MAX_DOWN &&
    poolUpstreams.some((other) => other !== upstream && other.up && !poolOutages.has(other))
  );
}

/** One outage of a pool upstream: SIGKILL, a probe of `/pool` while it is down, a restart. */
async function poolOutage(upstream) {
  poolOutages.add(upstream);
  poolDownBy(+1);
  try {
    await upstream.kill();
    poolKillEvent(upstream, `killed (${poolDown.now} down)`);
    // Down now, with at least one of the others up: the front must still answer, and right.
    const spec = poolProbeSpec(random);
    const down = poolDown.now;
    const { outcome, detail } = await httpExchange(front.port, false, spec);
    const key = `${down} down: ${outcome}`;
    poolProbes.set(key, (poolProbes.get(key) ?? 0) + 1);
    if (!POOL_OUTCOMES.has(outcome) && failures.length < MAX_FAILURE_LINES)
      failures.push(
        `pool upstream ${upstream.name} down (${down} of ${POOL_SIZE}): /pool answered ${outcome} (${detail ?? ''}) [pool: ${poolState()}]`,
      );
    await sleep(between(...DOWNTIME));
    await upstream.restart();
    poolKillEvent(upstream, 'listening again');
  } finally {
    poolDownBy(-1);
    poolOutages.delete(upstream);
  }
}

/**
 * Kills the pool's upstreams until the phase ends, one every {@link POOL_KILL_EVERY} if it may
 * (see {@link mayKillFromPool}): one of those killed the fewest times so far, so that each has its
 * turn (when none of them may be killed now, none is). Outages overlap (two down at once); all are
 * over when this resolves.
 */
async function poolKiller(until, firstWithin) {
  const outages = [];
  for (let i = 0; i < MAX_KILLS_PER_PHASE && front.alive; i++) {
    const wait = i === 0 && firstWithin ? between(300, firstWithin) : between(...POOL_KILL_EVERY);
    // No kill whose outage would outlast the phase.
    if (Date.now() + wait + DOWNTIME[1] + 500 >= until) break;
    await sleep(wait);
    const waiting = poolUpstreams.filter((u) => !poolOutages.has(u));
    const fewest = Math.min(...waiting.map((u) => u.kills));
    const turn = waiting.filter((u) => u.kills === fewest && mayKillFromPool(u));
    if (turn.length === 0 || !front.alive) continue;
    outages.push(poolOutage(turn[Math.floor(random() * turn.length)]));
  }
  await Promise.all(outages);
}

async function phase(name, until, firstKillWithin) {
  const started = Date.now();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  let killerError;
  const killers = [
    ...upstreams.map((upstream) => killer(upstream, until, firstKillWithin)),
    ...(poolUpstreams.length > 0 ? [poolKiller(until, firstKillWithin)] : []),
  ].map((killing) => killing.catch((error) => (killerError ??= error)));
  const clients = [
    ...Array.from({ length: HTTP_CLIENTS }, () => httpClient(agent, until)),
    ...Array.from({ length: WS_CLIENTS }, () => wsClient(until)),
  ];
  // Clients stop starting new work at `until` and finish what they had (each exchange is bounded).
  await Promise.all(clients);
  await Promise.all(killers);
  agent.destroy();
  if (killerError) throw killerError;
  return { name, ms: Date.now() - started };
}

function listenerDiff(base, now) {
  const diffs = [];
  for (const emitter of ['server', 'proxy']) {
    const names = new Set([...Object.keys(base[emitter]), ...Object.keys(now[emitter])]);
    for (const name of names) {
      const [was, is] = [base[emitter][name] ?? 0, now[emitter][name] ?? 0];
      if (was !== is) diffs.push(`${emitter} '${name}' ${was} → ${is}`);
    }
  }
  return diffs;
}

const tcpSockets = (probe) => probe.resources.TCPSocketWrap ?? 0;
const tcpServers = (probe) => probe.resources.TCPServerWrap ?? 0;
/**
 * V8's compiled code and bytecode (with their metadata): it keeps tiering functions up, and
 * flushing and re-creating bytecode, long after the warm-up; a heap snapshot diff of a passing run
 * shows that code is all that grows. The heap check is on the rest: the objects the front keeps.
 */
const codeBytes = (heap) => heap.code.code_and_metadata_size + heap.code.bytecode_and_metadata_size;
const objectBytes = (heap) => heap.heapUsed - codeBytes(heap);
const growth = (from, to) => `${to >= from ? '+' : ''}${(((to - from) / from) * 100).toFixed(1)} %`;

/** Why the front is not back to its baseline yet (nothing: it is). */
function notSettled(base, probe) {
  const problems = [];
  if (probe.connections !== 0)
    problems.push(`${probe.connections} client connections open on the server`);
  if (probe.stats.requests.active !== 0)
    problems.push(`stats: ${probe.stats.requests.active} requests active`);
  if (probe.stats.tunnels.active !== 0)
    problems.push(`stats: ${probe.stats.tunnels.active} tunnels active`);
  if (tcpSockets(probe) > tcpSockets(base))
    problems.push(`${tcpSockets(probe)} TCP sockets open (baseline ${tcpSockets(base)})`);
  if (tcpServers(probe) !== tcpServers(base))
    problems.push(`${tcpServers(probe)} TCP servers (baseline ${tcpServers(base)})`);
  problems.push(
    ...listenerDiff(base.listeners, probe.listeners).map((diff) => `listeners: ${diff}`),
  );
  return problems;
}

/** Polls the front (bounded) until it is back to the baseline; then measures the heap after GC. */
async function settle(base) {
  const started = Date.now();
  let probe;
  let problems = ['no answer from the front'];
  for (
    let poll = 0;
    poll < SETTLE_BOUND / 50 && Date.now() - started < SETTLE_BOUND && front.alive;
    poll++
  ) {
    probe = await front.probe();
    if (!probe) break;
    problems = notSettled(base, probe);
    if (problems.length === 0) break;
    await sleep(100);
  }
  const heap = problems.length === 0 ? await front.probe({ heap: true }) : undefined;
  return { ms: Date.now() - started, probe: heap ?? probe, problems, heap: heap?.heap };
}

// ---------------------------------------------------------------------------------------------
// The summary.

const MiB = (bytes) => `${(bytes / 1024 / 1024).toFixed(2)} MiB`;
const pad = (value, width) => String(value).padStart(width);
const OUTCOMES = [
  'ok',
  's502',
  's503',
  's504',
  'reset',
  'cut',
  'broken',
  'aborted',
  'vanished',
  'wrong',
  'hung',
];

function trafficTable() {
  const known = new Set(OUTCOMES);
  const extra = [...new Set([...tally.values()].flatMap((row) => [...row.keys()]))].filter(
    (outcome) => !known.has(outcome),
  );
  const columns = [...OUTCOMES, ...extra];
  const lines = [
    `  ${'kind'.padEnd(18)}${pad('total', 7)}${columns.map((c) => pad(c, 9)).join('')}`,
  ];
  const row = (label, kinds) => {
    const total = columns.reduce((sum, c) => sum + countAll(c, kinds), 0);
    lines.push(
      `  ${label.padEnd(18)}${pad(total, 7)}${columns.map((c) => pad(countAll(c, kinds) || '·', 9)).join('')}`,
    );
  };
  for (const kind of [...HTTP_KINDS, ...WS_KINDS]) if (tally.has(kind)) row(kind, [kind]);
  row('— http', HTTP_KINDS);
  row('  of which /pool', POOL_KINDS);
  row('— websocket', WS_KINDS);
  return lines.join('\n');
}

const formatMap = (map) => [...map].map(([key, value]) => `${value} × ${key}`).join(', ') || 'none';
const formatObject = (object) =>
  Object.entries(object ?? {})
    .map(([key, value]) => `${key} ${value}`)
    .join(', ') || 'none';

/** The pooled route: its outages as the driver made them, and what the front saw of them. */
function poolSummary(probe) {
  if (poolUpstreams.length === 0) return [];
  const out = [];
  const row = (label, value) => out.push(`    ${label.padEnd(36)}${value}`);
  if (poolDown.since) poolDownBy(0);
  out.push(
    `  /pool  round-robin over ${POOL_SIZE}, maxFails 1, failTimeout ${POOL_FAIL_TIMEOUT} ms, retries ${POOL_SIZE - 1} (the default)`,
  );
  out.push(`    kills: at most ${POOL_MAX_DOWN} down at once, one of the others up`);
  row(
    'time with N of them down',
    poolDown.ms.map((ms, n) => `${n}: ${(ms / 1000).toFixed(1)} s`).join(', ') +
      ` (at most ${poolDown.most} at once)`,
  );
  row('probes while some were down', formatMap(poolProbes));
  const cuts = countAll('cut', POOL_KINDS);
  row(
    'cut after the head (mid-body)',
    `${cuts}${poolCuts.length ? `: ${poolCuts.join('; ')}` : ''}`,
  );
  const seen = probe?.pool;
  if (!seen) return out;
  const tries = Object.entries(seen.tries)
    .map(([n, count]) => `${count} × ${n}`)
    .join(', ');
  row(
    'access log (front)',
    `${seen.requests} requests, ${seen.nextUpstream} needed a next upstream (tries: ${tries || 'none'}); statuses ${formatObject(seen.statuses)}`,
  );
  row(
    '"… failed; trying <upstream>" lines',
    `${seen.nextUpstreamLines} (${formatObject(seen.nextUpstreamWhy)})`,
  );
  row('upstreamDown / upstreamUp events', `${seen.upstreamDown} / ${seen.upstreamUp}`);
  row('proxy error events on /pool', formatObject(seen.errorCodes));
  for (const odd of seen.odd)
    out.push(
      `      ${odd.status} at ${(odd.at / 1000).toFixed(1)} s (front clock): ${odd.method} ${odd.path}, tries ${odd.tries}, last ${odd.upstream ?? '-'}, ${odd.ms} ms; pool then: ${odd.pool}`,
    );
  const stats = probe.stats.routes['/pool']?.upstreams ?? {};
  for (const [url, u] of Object.entries(stats))
    row(
      `  ${url}`,
      `requests ${u.requests}, active ${u.active}, fails ${u.fails}, down ${u.down}, tunnels ${u.tunnels}`,
    );
  return out;
}

/**
 * When a /pool request failed: the pool's story around the first failure the front saw, the
 * driver's kills and restarts and the front's `upstreamDown`/`upstreamUp` and non-200 answers,
 * on one clock (runs of the same line folded).
 */
function poolTimeline(probe) {
  const events = probe?.pool?.events ?? [];
  const first = events.find((event) => /^[45]\d\d /.test(event.what));
  if (!first) return [];
  const from = first.at - 2_500;
  const to = first.at + 1_500;
  const merged = [
    ...poolKillEvents.map((event) => ({ ...event, who: 'driver' })),
    ...events.map((event) => ({ ...event, who: 'front ' })),
  ]
    .filter((event) => event.at >= from && event.at <= to)
    .sort((a, b) => a.at - b.at);
  const lines = [];
  for (let i = 0; i < merged.length; i++) {
    const event = merged[i];
    let n = 1;
    while (merged[i + n]?.what === event.what && merged[i + n].who === event.who) n++;
    const last = merged[i + n - 1];
    const span = n > 1 ? `–${((last.at - poolDown.start) / 1000).toFixed(3)}` : '';
    lines.push(
      `  ${((event.at - poolDown.start) / 1000).toFixed(3)}${span} s  ${event.who}  ${n > 1 ? `${n} × ` : ''}${event.what}`,
    );
    i += n - 1;
  }
  return ['', 'the pool around the first failed /pool request (s since the start)', ...lines];
}

function printSummary({ phases, pre, warm, end, closed, checks, error }) {
  const out = [];
  out.push('');
  out.push(
    `viaduct soak — ${SECONDS} s (warm-up ${(WARMUP_MS / 1000).toFixed(1)} s), seed ${SEED}, front :${front?.port} → http :${upstreams?.[0].port}, ws :${upstreams?.[1].port}, pool ${poolUpstreams.map((u) => `:${u.port}`).join(' ')}`,
  );
  out.push(
    `phases: ${phases.map((p) => `${p.name} ${(p.ms / 1000).toFixed(1)} s`).join(', ') || 'none'}`,
  );
  out.push('');
  out.push('traffic (client-side outcomes; · = none)');
  out.push(trafficTable());
  out.push('');
  out.push('upstreams');
  for (const upstream of upstreams ?? []) {
    out.push(
      `  ${upstream.name.padEnd(6)} killed ${upstream.kills}, restarted ${upstream.restarts} (port still bound on ${upstream.bindRetries} attempts), down ${(upstream.downMs / 1000).toFixed(1)} s; while down the front answered: ${formatMap(downProbes[upstream.name])}`,
    );
  }
  for (const upstream of poolUpstreams) {
    out.push(
      `  ${upstream.name.padEnd(6)} killed ${upstream.kills}, restarted ${upstream.restarts} (port still bound on ${upstream.bindRetries} attempts), down ${(upstream.downMs / 1000).toFixed(1)} s`,
    );
  }
  out.push(...poolSummary(end?.probe ?? warm?.probe ?? pre));
  out.push('');
  out.push('front');
  const row = (label, value) => out.push(`  ${label.padEnd(34)}${value}`);
  const describe = (probe) =>
    probe
      ? `connections ${probe.connections}, TCP sockets ${tcpSockets(probe)}, servers ${tcpServers(probe)}, requests active ${probe.stats.requests.active}, tunnels active ${probe.stats.tunnels.active}`
      : 'no answer';
  row('before traffic', describe(pre));
  if (warm) row(`after warm-up (settled ${warm.ms} ms)`, describe(warm.probe));
  if (end) row(`at the end (settled ${end.ms} ms)`, describe(end.probe));
  if (pre)
    row(
      'listeners before traffic',
      `server ${formatObject(pre.listeners.server)}; proxy ${formatObject(pre.listeners.proxy)}`,
    );
  if (end?.probe)
    row(
      'listeners at the end',
      `server ${formatObject(end.probe.listeners.server)}; proxy ${formatObject(end.probe.listeners.proxy)}`,
    );
  if (pre?.heap) {
    const heaps = [
      ['before traffic', pre.heap],
      ['after warm-up', warm?.heap],
      ['at the end', end?.heap],
    ].filter(([, heap]) => heap);
    const growthNote = (pick) =>
      warm?.heap && end?.heap ? `   warm-up → end ${growth(pick(warm.heap), pick(end.heap))}` : '';
    row(
      'heap after GC: objects',
      heaps.map(([label, heap]) => `${label} ${MiB(objectBytes(heap))}`).join(', ') +
        growthNote(objectBytes),
    );
    row(
      '  code + bytecode (V8)',
      heaps.map(([label, heap]) => `${label} ${MiB(codeBytes(heap))}`).join(', ') +
        growthNote(codeBytes),
    );
    row(
      '  heapUsed (both)',
      heaps.map(([label, heap]) => `${label} ${MiB(heap.heapUsed)}`).join(', ') +
        growthNote((heap) => heap.heapUsed),
    );
  }
  const last = end?.probe ?? warm?.probe ?? pre;
  if (last) {
    const { requests, tunnels } = last.stats;
    row(
      'proxy.stats()',
      `requests total ${requests.total}, errors ${requests.errors}; tunnels total ${tunnels.total}, rejected ${tunnels.rejected}`,
    );
    row('proxy error events by code', formatObject(last.errorCodes));
    row('tunnels closed by reason', formatObject(last.tunnelReasons));
    for (const odd of last.oddCloses ?? []) {
      out.push(
        `    ${odd.reason} at ${(odd.at / 1000).toFixed(1)} s (front clock), open ${odd.duration} ms, ${odd.bytesFromClient} B from client, ${odd.bytesFromUpstream} B from upstream`,
      );
    }
    row('log lines by level', formatObject(last.logs));
    const kinds = Object.entries(last.logKinds ?? {})
      .sort((a, b) => b[1] - a[1])
      .slice(0, 8);
    for (const [kind, n] of kinds) out.push(`    ${pad(n, 6)} × ${kind}`);
  }
  if (closed)
    row(
      'graceful close',
      closed.reply
        ? `proxy.close() + server.close() in ${closed.reply.ms} ms, exit ${JSON.stringify(front.exit)}`
        : `no answer, exit ${JSON.stringify(front.exit)}`,
    );
  out.push('');
  out.push('checks');
  for (const check of checks)
    out.push(
      `  [${check.pass ? 'PASS' : 'FAIL'}] ${check.name}${check.pass ? '' : ` — ${check.why}`}`,
    );
  if (error) out.push(`  [FAIL] the run itself — ${error}`);
  if (failures.length > 0) {
    out.push('');
    out.push('failures (first ones)');
    for (const line of failures) out.push(`  ${line}`);
  }
  if (checks.some((c) => !c.pass && c.name.includes('/pool')))
    out.push(...poolTimeline(end?.probe ?? warm?.probe));
  if (front?.stderr.trim()) {
    out.push('');
    out.push('front stderr (tail)');
    out.push(
      front.stderr
        .trim()
        .split('\n')
        .slice(-20)
        .map((line) => `  ${line}`)
        .join('\n'),
    );
  }
  const pass = !error && checks.every((check) => check.pass);
  out.push('');
  out.push(`RESULT: ${pass ? 'PASS' : 'FAIL'}`);
  console.log(out.join('\n'));
  // One machine-readable line, for test/soak.test.mjs.
  const counts = Object.fromEntries(
    [...tally].map(([kind, row]) => [kind, Object.fromEntries(row)]),
  );
  const seenPool = (end?.probe ?? warm?.probe)?.pool;
  const result = {
    pass,
    seconds: SECONDS,
    seed: SEED,
    counts,
    totals: Object.fromEntries(OUTCOMES.map((o) => [o, countAll(o)])),
    upstreams: (upstreams ?? []).map((u) => ({
      name: u.name,
      kills: u.kills,
      restarts: u.restarts,
      downProbes: Object.fromEntries(downProbes[u.name]),
    })),
    pool: {
      upstreams: poolUpstreams.map((u) => ({ name: u.name, kills: u.kills, restarts: u.restarts })),
      mostDown: poolDown.most,
      probes: Object.fromEntries(poolProbes),
      cut: countAll('cut', POOL_KINDS),
      ...(seenPool && {
        requests: seenPool.requests,
        nextUpstream: seenPool.nextUpstream,
        nextUpstreamLines: seenPool.nextUpstreamLines,
        upstreamDown: seenPool.upstreamDown,
        upstreamUp: seenPool.upstreamUp,
      }),
    },
    heap:
      warm?.heap && end?.heap
        ? {
            warm: warm.heap.heapUsed,
            end: end.heap.heapUsed,
            warmObjects: objectBytes(warm.heap),
            endObjects: objectBytes(end.heap),
          }
        : undefined,
    failed: checks
      .filter((check) => !check.pass)
      .map((check) => `${check.name}: ${check.why}`)
      .concat(error ? [String(error)] : []),
  };
  console.log(`SOAK-RESULT ${JSON.stringify(result)}`);
  return pass;
}

// ---------------------------------------------------------------------------------------------

function check(name, pass, why) {
  return { name, pass: Boolean(pass), why };
}

/** What the run found so far: the summary prints it, also when the hard bound cuts the run short. */
const report = { phases: [], checks: [] };

async function main() {
  const { phases } = report;
  try {
    const ports = [];
    while (ports.length < 2 + POOL_SIZE) {
      const port = await pickPort(random);
      if (!ports.includes(port)) ports.push(port);
    }
    const [httpPort, wsPort, ...poolPorts] = ports;
    upstreams = [new Upstream('http', httpPort), new Upstream('ws', wsPort)];
    poolUpstreams = poolPorts.map((port, i) => new Upstream(`pool-${i + 1}`, port));
    await Promise.all([...upstreams, ...poolUpstreams].map((upstream) => upstream.start()));
    front = new Front(httpPort, wsPort, poolPorts, POOL_FAIL_TIMEOUT);
    await front.start();
    report.pre = await front.probe({ heap: true });
    if (!report.pre) throw new Error('the front did not answer the first probe');

    // Warm-up: every kind of traffic, and each upstream killed once, before the heap baseline.
    const started = Date.now();
    poolDown.start = poolDown.since = started;
    phases.push(
      await phase('warm-up', started + WARMUP_MS, Math.max(300, WARMUP_MS - DOWNTIME[1] - 600)),
    );
    report.warm = await settle(report.pre);
    if (SNAPSHOTS) await front.snapshot(join(SNAPSHOTS, 'front-warm.heapsnapshot'));
    // The main phase ends `--seconds` after the start (the warm-up's tail and the settling included),
    // yet lasts at least half of its nominal length.
    phases.push(
      await phase('main', Math.max(started + TOTAL_MS, Date.now() + (TOTAL_MS - WARMUP_MS) / 2)),
    );
    report.end = await settle(report.pre);
    if (SNAPSHOTS) await front.snapshot(join(SNAPSHOTS, 'front-end.heapsnapshot'));

    const { warm, end } = report;
    const alive = front.alive;
    const checks = report.checks;
    checks.push(
      check(
        'front stayed up, no uncaught exception',
        alive,
        front.fatal ?? `the front exited ${JSON.stringify(front.exit)}`,
      ),
    );
    const wrong = countAll('wrong');
    const hung = countAll('hung');
    checks.push(
      check(
        'every response complete and correct, an error status, or a reset',
        wrong === 0 && hung === 0,
        `${wrong} wrong, ${hung} hung (see failures)`,
      ),
    );
    const badUploads = upstreams.flatMap((u) => u.badUploads);
    checks.push(
      check(
        'no upload reached an upstream truncated yet complete',
        badUploads.length === 0,
        badUploads.slice(0, 5).join('; '),
      ),
    );
    const notDown502 = upstreams.flatMap((u) =>
      [...downProbes[u.name]]
        .filter(([o]) => o !== 's502')
        .map(([o, n]) => `${u.name}: ${n} × ${o}`),
    );
    const probes = upstreams.reduce(
      (sum, u) => sum + [...downProbes[u.name].values()].reduce((a, b) => a + b, 0),
      0,
    );
    checks.push(
      check(
        '502 while an upstream is down',
        probes > 0 && notDown502.length === 0,
        probes === 0 ? 'no upstream was ever down' : notDown502.join(', '),
      ),
    );
    const everyUpstream = [...upstreams, ...poolUpstreams];
    checks.push(
      check(
        `every upstream (${everyUpstream.map((u) => u.name).join(', ')}) killed and restarted`,
        everyUpstream.every((u) => u.kills > 0 && u.restarts === u.kills),
        everyUpstream.map((u) => `${u.name} ${u.kills}/${u.restarts}`).join(', '),
      ),
    );
    // The pool always had one upstream up: every idempotent /pool request must have succeeded,
    // save one cut mid-body by its upstream's death (nothing may be retried once a byte went out).
    const poolTotal = POOL_KINDS.reduce(
      (sum, kind) => sum + [...(tally.get(kind)?.values() ?? [])].reduce((a, b) => a + b, 0),
      0,
    );
    const poolFailed = POOL_KINDS.flatMap((kind) =>
      [...(tally.get(kind) ?? [])]
        .filter(([outcome]) => !POOL_OUTCOMES.has(outcome))
        .map(([outcome, n]) => `${kind}: ${n} × ${outcome}`),
    ).concat(
      [...poolProbes]
        .filter(([key]) => !POOL_OUTCOMES.has(key.split(': ')[1]))
        .map(([key, n]) => `probe with ${key}: ${n}`),
    );
    const poolOk = countAll('ok', POOL_KINDS);
    checks.push(
      check(
        `every idempotent /pool request ok while one of its upstreams was up (at most ${POOL_MAX_DOWN} of ${POOL_SIZE} down; ${countAll('cut', POOL_KINDS)} cut mid-body, allowed)`,
        poolOk > 0 && poolFailed.length === 0 && poolDown.most <= POOL_MAX_DOWN,
        poolOk === 0
          ? `no /pool request completed (${poolTotal} made)`
          : poolFailed.join(', ') || `${poolDown.most} down at once`,
      ),
    );
    checks.push(
      check(
        'back to baseline after warm-up (sockets, in-flight, listeners)',
        warm.problems.length === 0,
        warm.problems.join('; '),
      ),
    );
    checks.push(
      check(
        'back to baseline at the end (sockets, in-flight, listeners)',
        end.problems.length === 0,
        end.problems.join('; '),
      ),
    );
    const [warmHeap, endHeap] = [warm.heap, end.heap];
    const heapOk =
      warmHeap !== undefined &&
      endHeap !== undefined &&
      objectBytes(endHeap) <= objectBytes(warmHeap) * (1 + HEAP_TOLERANCE);
    const heapChange =
      warmHeap && endHeap ? growth(objectBytes(warmHeap), objectBytes(endHeap)) : 'not measured';
    checks.push(
      check(
        `heap after GC (objects, i.e. heapUsed less V8 code) within ${HEAP_TOLERANCE * 100} % of the warm-up baseline (${heapChange})`,
        heapOk,
        warmHeap && endHeap
          ? `${MiB(objectBytes(warmHeap))} → ${MiB(objectBytes(endHeap))}`
          : 'not measured (the front did not settle)',
      ),
    );
    // Last: the graceful close, which also ends the front, with tunnels open that it must end
    // with Close frames (1001), not by dropping connections (1006).
    if (front.alive) {
      const held = await heldTunnels(front.port, HELD_AT_CLOSE);
      const reply = await front.close();
      const codes = await bounded(held.closed, 5_000);
      report.closed = { reply, codes };
      const byCode = {};
      for (const code of codes ?? []) byCode[code] = (byCode[code] ?? 0) + 1;
      checks.push(
        check(
          `the ${HELD_AT_CLOSE} tunnels open at the graceful close all see close code 1001`,
          codes?.every((code) => code === 1001) === true,
          codes ? formatObject(byCode) : 'not all closed within 5 s',
        ),
      );
      checks.push(
        check(
          'graceful close resolves and the front exits 0',
          reply && front.exit?.code === 0,
          `reply ${JSON.stringify(reply)}, exit ${JSON.stringify(front.exit)}`,
        ),
      );
    }
  } catch (error) {
    report.error = error instanceof Error ? error.stack : String(error);
  }
  return printSummary(report);
}

const hardBound = setTimeout(() => {
  report.error = `the soak did not finish within ${HARD_BOUND / 1000} s`;
  printSummary(report);
  killAllChildren();
  process.exit(1);
}, HARD_BOUND);

const pass = await main();
clearTimeout(hardBound);
killAllChildren();
process.exit(pass ? 0 : 1);
