import inspector from 'node:inspector';
import fs from 'node:fs';
const session = new inspector.Session(); session.connect();
const post = (m, p) => new Promise((res, rej) => session.post(m, p, (e, r) => e ? rej(e) : res(r)));
await post('HeapProfiler.enable');
await post('HeapProfiler.startSampling', { samplingInterval: 1024, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: false });
process.once('SIGUSR2', async () => { const { profile } = await post('HeapProfiler.stopSampling'); fs.writeFileSync(process.env.OUT, JSON.stringify(profile)); process.exit(0); });
await import('./front.mjs');
