// `node bench/cpu-per-request.mjs [--rounds N] [--path /large] [front[@checkout] …]`: CPU time (user +
// system, from /proc) that the front and the upstream spend per request under wrk (32 connections,
// 3 s after a 3 s warm-up; `/small` unless `--path` names another of `upstream.mjs`'s paths), a
// fresh front process per round, fronts interleaved (A B C, C B A, …), then each front's median.
// Less sensitive to a noisy machine than requests/s. `front@checkout` runs that front from another
// checkout's `bench/front.mjs` (built), to compare code A/B in one run. Linux and wrk only.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { median } from './median.mjs';
import { readyPorts } from './ready-ports.mjs';

const here = fileURLToPath(new URL('.', import.meta.url));
const args = process.argv.slice(2);
const roundsAt = args.indexOf('--rounds');
const ROUNDS = roundsAt === -1 ? 2 : Number(args.splice(roundsAt, 2)[1]);
const pathAt = args.indexOf('--path');
const PATH = pathAt === -1 ? '/small' : args.splice(pathAt, 2)[1];
const fronts = args.length ? args : ['viaduct-node', 'http-proxy-node'];
const TICK_US = 10_000; // USER_HZ = 100

function cpuTicks(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(fields[11]) + Number(fields[12]); // utime + stime
}

async function wrk(port) {
  const child = spawn('wrk', ['-t1', '-c32', '-d3s', `http://127.0.0.1:${port}${PATH}`]);
  let output = '';
  child.stdout.on('data', (data) => (output += data));
  await new Promise((resolve) => child.on('exit', resolve));
  return Number(/(\d+) requests in/.exec(output)[1]);
}

const upstream = spawn(process.execPath, ['upstream.mjs'], {
  cwd: here,
  stdio: ['ignore', 'pipe', 'inherit'],
});
const upstreamPorts = (await readyPorts(upstream)).map(String);
const perFront = new Map(fronts.map((spec) => [spec, { front: [], upstream: [] }]));
for (let round = 1; round <= ROUNDS; round++) {
  for (const spec of round % 2 === 1 ? fronts : fronts.toReversed()) {
    const [kind, checkout] = spec.split('@');
    const front = spawn(process.execPath, ['front.mjs', kind, ...upstreamPorts], {
      cwd: checkout ? join(checkout, 'bench') : here,
      stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
    });
    const [port] = await readyPorts(front);
    await wrk(port);
    const [front0, upstream0] = [cpuTicks(front.pid), cpuTicks(upstream.pid)];
    const requests = await wrk(port);
    const [front1, upstream1] = [cpuTicks(front.pid), cpuTicks(upstream.pid)];
    const perRequest = (ticks) => (ticks * TICK_US) / requests;
    const figures = perFront.get(spec);
    figures.front.push(perRequest(front1 - front0));
    figures.upstream.push(perRequest(upstream1 - upstream0));
    console.log(
      `round ${round} ${spec.padEnd(20)} ${requests} requests; µs CPU per request: front ${figures.front.at(-1).toFixed(1)}, upstream ${figures.upstream.at(-1).toFixed(1)}`,
    );
    front.kill();
  }
}
upstream.kill();
if (ROUNDS > 1) {
  for (const [spec, figures] of perFront)
    console.log(
      `median ${spec.padEnd(20)} µs CPU per request: front ${median(figures.front).toFixed(1)}, upstream ${median(figures.upstream).toFixed(1)}`,
    );
}
