// The upload load generator, in its own process (started by bench/run.mjs, driven over IPC):
//   { url, connections, seconds, counterUrl } → { bytes, seconds, uploads }
// keeps `connections` keep-alive connections each POSTing 8 MiB bodies to `url`, one after the
// other, for `seconds`. `bytes` is what the upstream itself counted as received between the run's
// start and its end, and `seconds` the time between the two counts on the upstream's clock (`GET
// counterUrl` on the upstream, not through the front): request body delivered, not merely
// written. Uploads still in flight at the end are cut. Fresh connections for every run, as wrk's.
import http from 'node:http';

const UPLOAD_BYTES = 8 * 1024 * 1024;
const BODY = Buffer.alloc(UPLOAD_BYTES, 'u');
const counterAgent = new http.Agent({ keepAlive: true });

function counter(counterUrl) {
  return new Promise((resolve, reject) => {
    http
      .get(counterUrl, { agent: counterAgent }, (res) => {
        let body = '';
        res.setEncoding('latin1');
        res.on('data', (chunk) => (body += chunk));
        res.on('end', () => {
          const [bytes, ns] = body.split(' ');
          resolve({ bytes: Number(bytes), ns: BigInt(ns) });
        });
      })
      .on('error', reject);
  });
}

async function run({ url, connections, seconds, counterUrl }) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  const inFlight = new Set();
  let running = true;
  let uploads = 0;
  const upload = () =>
    new Promise((resolve, reject) => {
      const req = http.request(url, {
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/octet-stream', 'content-length': UPLOAD_BYTES },
      });
      inFlight.add(req);
      req.on('response', (res) => {
        res.resume();
        res.on('end', () => {
          inFlight.delete(req);
          if (res.statusCode !== 200) reject(new Error(`upload answered ${res.statusCode}`));
          else resolve();
        });
      });
      req.on('error', (error) => {
        inFlight.delete(req);
        if (running) reject(error);
        else resolve();
      });
      req.end(BODY);
    });
  const loop = async () => {
    while (running) {
      await upload();
      if (running) uploads++;
    }
  };

  const before = await counter(counterUrl);
  const loops = Array.from({ length: connections }, loop);
  try {
    await Promise.race([
      new Promise((resolve) => setTimeout(resolve, seconds * 1000)),
      // A failed upload ends the run at once.
      ...loops,
    ]);
    const after = await counter(counterUrl);
    return {
      bytes: after.bytes - before.bytes,
      seconds: Number(after.ns - before.ns) / 1e9,
      uploads,
    };
  } finally {
    running = false;
    for (const req of inFlight) req.destroy();
    await Promise.allSettled(loops);
    agent.destroy();
  }
}

process.on('message', async (message) => {
  try {
    process.send({ ok: true, ...(await run(message)) });
  } catch (error) {
    process.send({ ok: false, error: String(error?.stack ?? error) });
  }
});
