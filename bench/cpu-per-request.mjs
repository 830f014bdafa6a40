// `node bench/cpu-per-request.mjs [front …]`: CPU time (user + system, from /proc) that the front
// and the upstream spend per small request under wrk (32 connections, 3 s after a 3 s warm-up),
// two rounds, fronts interleaved. Less sensitive to a noisy machine than requests/s. Linux and wrk only.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const fronts = process.argv.slice(2).length
  ? process.argv.slice(2)
  : ['viaduct-node', 'http-proxy-node'];
const TICK_US = 10_000; // USER_HZ = 100

function cpuTicks(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(fields[11]) + Number(fields[12]); // utime + stime
}

/** The ports of a `READY <port> …` line (the upstream listens on three, a front on one). */
function readyPorts(child) {
  return new Promise((resolve) =>
    child.stdout.on('data', (data) => {
      const match = /READY ([\d ]+)/.exec(String(data));
      if (match) resolve(match[1].trim().split(' '));
    }),
  );
}

async function wrk(port) {
  const child = spawn('wrk', ['-t1', '-c32', '-d3s', `http://127.0.0.1:${port}/small`]);
  let output = '';
  child.stdout.on('data', (data) => (output += data));
  await new Promise((resolve) => child.on('exit', resolve));
  return Number(/(\d+) requests in/.exec(output)[1]);
}

const upstream = spawn(process.execPath, ['upstream.mjs'], {
  cwd: here,
  stdio: ['ignore', 'pipe', 'inherit'],
});
const upstreamPorts = await readyPorts(upstream);
for (let round = 1; round <= 2; round++) {
  for (const kind of fronts) {
    const front = spawn(process.execPath, ['front.mjs', kind, ...upstreamPorts], {
      cwd: here,
      stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
    });
    const [port] = await readyPorts(front);
    await wrk(port);
    const [front0, upstream0] = [cpuTicks(front.pid), cpuTicks(upstream.pid)];
    const requests = await wrk(port);
    const [front1, upstream1] = [cpuTicks(front.pid), cpuTicks(upstream.pid)];
    const perRequest = (ticks) => ((ticks * TICK_US) / requests).toFixed(1);
    console.log(
      `round ${round} ${kind.padEnd(20)} ${requests} requests; µs CPU per request: front ${perRequest(front1 - front0)}, upstream ${perRequest(upstream1 - upstream0)}`,
    );
    front.kill();
  }
}
upstream.kill();
