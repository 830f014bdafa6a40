// The soak's clients: one HTTP exchange or one WebSocket session each, classified into exactly one
// outcome. Outcomes:
//   ok        complete and verified (hashes, sizes, every echo)
//   s502 s503 s504   the proxy's error answer (an upgrade refused with that status, on /ws)
//   reset     the connection was reset / closed under the client before a complete response
//             (on /pool: before the response head)
//   cut       on /pool only: the connection was reset / closed after the response head arrived
//             (an upstream SIGKILLed mid-body: once a byte reached the client, nothing is retried)
//   broken    a tunnel ended abnormally after it opened (code 1006, reset)
//   aborted   the client gave up on purpose (destroy while uploading, while waiting for the
//             response head, or while downloading)
//   vanished  the client dropped its tunnel on purpose (socket destroyed, no close frame), or its
//             connection during the handshake
//   wrong     a complete-looking response that is not right, an unexpected status, a bad echo
//   hung      no outcome within the bound
import http from 'node:http';
import net from 'node:net';
import { createHash } from 'node:crypto';
import WebSocket from 'ws';
import { MAX_BODY, bodySlice, sha256 } from './bytes.mjs';

export const FAILURES = new Set(['wrong', 'hung']);
/** The pooled route's kinds: idempotent requests only, each of which must end `ok` (or `cut`). */
export const POOL_KINDS = ['pool-get-small', 'pool-get-medium', 'pool-put'];
/** What a `/pool` exchange may end in: anything else fails the pool check. */
export const POOL_OUTCOMES = new Set(['ok', 'cut']);
const ERROR_STATUSES = new Set([502, 503, 504]);
/** No single exchange takes this long on loopback, even on a loaded machine (slow readers pause ≤ 2 × 1 s). */
const BOUND = 30_000;
const KiB = 1024;

/** Runs `body(finish)` until it calls `finish` once; `body` returns how to tear it down if it hangs. */
function operation(body) {
  return new Promise((resolve) => {
    let done = false;
    let teardown = () => {};
    const finish = (outcome, detail) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ outcome, detail });
    };
    const timer = setTimeout(() => {
      finish('hung', `no outcome in ${BOUND} ms`);
      teardown();
    }, BOUND);
    teardown = body(finish) ?? teardown;
  });
}

const between = (random, low, high) => low + Math.floor(random() * (high - low + 1));
const smallSize = (random) => between(random, 0, 8 * KiB);
const largeSize = (random) => between(random, 256 * KiB, MAX_BODY);
/** The pool's medium bodies: written in one go, and small enough for the socket buffers to take. */
const mediumSize = (random) => between(random, 16 * KiB, 192 * KiB);
const seedOf = (random) => Math.floor(random() * 2 ** 31);

/** Weighted HTTP kinds: what a worker sends next. */
const HTTP_KINDS = [
  ['get-small', 20],
  ['get-large-cl', 10],
  ['get-large-chunked', 10],
  ['upload-cl', 12],
  ['upload-chunked', 12],
  ['slow-reader', 8],
  ['abort-upload', 7],
  ['abort-download', 7],
  ['abort-waiting', 4],
  ['pool-get-small', 12],
  ['pool-get-medium', 9],
  ['pool-put', 4],
];
const HTTP_WEIGHT = HTTP_KINDS.reduce((sum, [, weight]) => sum + weight, 0);

/** The next HTTP exchange to make: a description only, nothing is sent. */
export function nextHttpSpec(random) {
  let roll = random() * HTTP_WEIGHT;
  const [kind] = HTTP_KINDS.find(([, weight]) => (roll -= weight) < 0) ?? HTTP_KINDS[0];
  const seed = seedOf(random);
  const chunkedResponse = random() < 0.5;
  // A third of the responses come slowly, so that upstream kills land mid-body (see upstream.mjs).
  const trickle = random() < 0.33 ? between(random, 1, 6) : 0;
  const download = (size, chunked) => ({
    kind,
    method: 'GET',
    path: `/api/bytes?size=${size}&chunked=${chunked ? 1 : 0}&seed=${seed}&trickle=${trickle}`,
    size,
    seed,
  });
  const upload = (size, respond, chunked) => ({
    kind,
    method: 'POST',
    path: `/api/upload?respond=${respond}&chunked=${chunkedResponse ? 1 : 0}&seed=${seed}&trickle=${trickle}`,
    size: respond,
    seed,
    upload: bodySlice(seedOf(random), size),
    chunkedUpload: chunked,
  });
  // The pooled route: idempotent, every body written in one go (`once=1`), nothing slow.
  const poolGet = (size) => ({
    kind,
    pool: true,
    method: 'GET',
    path: `/pool/bytes?size=${size}&chunked=${chunkedResponse ? 1 : 0}&seed=${seed}&once=1`,
    size,
    seed,
  });
  switch (kind) {
    case 'pool-get-small':
      return poolGet(smallSize(random));
    case 'pool-get-medium':
      return poolGet(mediumSize(random));
    case 'pool-put': {
      // A small JSON body, read by `express.json()` on the front and re-sent by the proxy from
      // `req.body` (compact `JSON.stringify` of strings and integers: the same bytes).
      const json = JSON.stringify({
        seed,
        data: bodySlice(seedOf(random), between(random, 0, 6 * KiB)).toString('base64'),
      });
      const size = smallSize(random);
      return {
        kind,
        pool: true,
        method: 'PUT',
        path: `/pool/upload?respond=${size}&chunked=${chunkedResponse ? 1 : 0}&seed=${seed}&once=1`,
        size,
        seed,
        upload: Buffer.from(json),
        contentType: 'application/json',
      };
    }
    case 'get-small':
      return download(smallSize(random), chunkedResponse);
    case 'get-large-cl':
      return download(largeSize(random), false);
    case 'get-large-chunked':
      return download(largeSize(random), true);
    case 'upload-cl':
    case 'upload-chunked': {
      const size = random() < 0.5 ? smallSize(random) : largeSize(random);
      const respond = random() < 0.3 ? largeSize(random) : smallSize(random);
      return upload(size, respond, kind === 'upload-chunked');
    }
    case 'slow-reader': {
      const spec = download(largeSize(random), chunkedResponse);
      spec.pauses = Array.from({ length: between(random, 1, 2) }, () => ({
        at: Math.floor(random() * spec.size),
        ms: between(random, 200, 1_000),
      }));
      spec.pauses.sort((a, b) => a.at - b.at);
      return spec;
    }
    case 'abort-upload': {
      const spec = upload(largeSize(random), smallSize(random), random() < 0.5);
      spec.abortUploadAt = Math.floor(random() * spec.upload.length * 0.9);
      return spec;
    }
    case 'abort-waiting': {
      // Gone before the response head: the upstream answers 40 ms late, the client leaves within 30 ms.
      const spec = download(smallSize(random), chunkedResponse);
      spec.path += '&wait=40';
      spec.abortWaitingAfter = between(random, 0, 30);
      return spec;
    }
    case 'abort-download': {
      const spec = download(largeSize(random), chunkedResponse);
      spec.abortDownloadAt = Math.floor(random() * spec.size * 0.9);
      return spec;
    }
  }
  throw new Error(`unknown kind ${kind}`);
}

/** One HTTP exchange through the front, checked end to end. */
export function httpExchange(port, agent, spec) {
  const expectedHash = sha256(bodySlice(spec.seed, spec.size));
  const uploadHash = spec.upload ? sha256(spec.upload) : undefined;
  return operation((finish) => {
    let aborting = false;
    let complete = false;
    let headArrived = false;
    const abort = () => {
      // A response that completed before the client's timer fired (a loaded machine) stands.
      if (complete) return;
      aborting = true;
      finish('aborted');
      req.destroy();
    };
    const headers = {};
    if (spec.upload) {
      headers['content-type'] = spec.contentType ?? 'application/octet-stream';
      // The upstream checks this on its own: an upload that reaches it truncated but "complete" is reported.
      headers['x-expect-sha256'] = uploadHash;
      if (!spec.chunkedUpload) headers['content-length'] = spec.upload.length;
    }
    const req = http.request({
      agent,
      host: '127.0.0.1',
      port,
      method: spec.method,
      path: spec.path,
      headers,
    });
    req.on('error', (error) =>
      finish(
        aborting ? 'aborted' : headArrived && spec.pool ? 'cut' : 'reset',
        `${spec.method} ${spec.path}: request: ${error.code ?? error.message}${req.reusedSocket ? ' (on a reused connection)' : ''}`,
      ),
    );
    req.on('response', (res) => onResponse(res));

    if (spec.abortWaitingAfter !== undefined) setTimeout(abort, spec.abortWaitingAfter);
    if (!spec.upload) {
      req.end();
    } else {
      let offset = 0;
      const body = spec.upload;
      const writeSome = () => {
        while (offset < body.length) {
          if (req.destroyed) return;
          if (spec.abortUploadAt !== undefined && offset >= spec.abortUploadAt) return abort();
          // Chunked uploads go in ragged pieces; each write is one chunk on the wire.
          const piece = spec.chunkedUpload ? 1 + ((offset * 7919) % (48 * KiB)) : 64 * KiB;
          const ok = req.write(body.subarray(offset, offset + piece));
          offset += piece;
          if (!ok) {
            req.once('drain', writeSome);
            return;
          }
        }
        if (spec.abortUploadAt !== undefined) return abort();
        req.end();
      };
      writeSome();
    }

    function onResponse(res) {
      headArrived = true;
      const status = res.statusCode;
      res.on('error', () => {});
      if (ERROR_STATUSES.has(status)) {
        // What the proxy said (kept for the pool's failure lines; a /pool request must not get one).
        let text = '';
        res.on('data', (chunk) => (text = (text + chunk).slice(0, 200)));
        res.once('close', () =>
          finish(`s${status}`, `${spec.method} ${spec.path}: ${text.trim()}`),
        );
        return;
      }
      if (status !== 200) {
        let text = '';
        res.on('data', (chunk) => (text = (text + chunk).slice(0, 300)));
        res.once('close', () => finish('wrong', `unexpected status ${status}: ${text}`));
        return;
      }
      const hash = createHash('sha256');
      let bytes = 0;
      let ended = false;
      const pauses = [...(spec.pauses ?? [])];
      res.on('data', (chunk) => {
        hash.update(chunk);
        bytes += chunk.length;
        if (spec.abortDownloadAt !== undefined && bytes >= spec.abortDownloadAt) return abort();
        if (pauses.length > 0 && bytes >= pauses[0].at) {
          const { ms } = pauses.shift();
          res.pause();
          setTimeout(() => res.resume(), ms);
        }
      });
      res.on('end', () => {
        ended = true;
        complete = true;
        const problems = [];
        const got = hash.digest('hex');
        if (res.headers['x-body-sha256'] !== expectedHash)
          problems.push(`x-body-sha256 is not the body asked for (${spec.path})`);
        if (bytes !== spec.size || got !== expectedHash) {
          problems.push(
            `body ${bytes}/${spec.size} B, sha256 ${got === expectedHash ? 'matches' : 'differs'} (${res.headers['transfer-encoding'] ?? `content-length ${res.headers['content-length']}`})`,
          );
        }
        if (spec.upload && res.headers['x-received-sha256'] !== uploadHash) {
          problems.push(
            `upstream received ${res.headers['x-received-bytes']}/${spec.upload.length} B of the upload, sha256 differs`,
          );
        }
        if (spec.abortUploadAt !== undefined)
          problems.push('a complete 200 to an upload the client abandoned');
        finish(problems.length === 0 ? 'ok' : 'wrong', `${spec.kind}: ${problems.join('; ')}`);
      });
      res.once('close', () => {
        if (ended) return;
        // On /pool a reset after the head is told apart: it cannot go to the next upstream.
        const outcome = aborting ? 'aborted' : spec.pool ? 'cut' : 'reset';
        finish(outcome, `${spec.path}: response closed after ${bytes}/${spec.size} B`);
      });
    }
    return () => req.destroy();
  });
}

/**
 * While upstreams of the pool are down (at most two of its three): a GET on `/pool` over a fresh
 * connection (`agent: false`), which must end `ok` like any other `/pool` exchange.
 */
export function poolProbeSpec(random) {
  const seed = seedOf(random);
  const size = smallSize(random);
  return {
    kind: 'pool-probe',
    pool: true,
    method: 'GET',
    path: `/pool/bytes?size=${size}&chunked=0&seed=${seed}&once=1`,
    size,
    seed,
  };
}

/** The next WebSocket session: messages to echo, and maybe when to vanish. */
export function nextWsSpec(random) {
  const count = between(random, 2, 24);
  const messages = Array.from({ length: count }, () => {
    const size =
      random() < 0.85 ? between(random, 0, 4 * KiB) : between(random, 16 * KiB, 512 * KiB);
    const bytes = bodySlice(seedOf(random), size);
    const binary = random() < 0.6;
    // Text frames must be UTF-8: base64 of the bytes.
    const data = binary ? bytes : bytes.toString('base64');
    return { data, binary, expect: binary ? bytes : Buffer.from(data) };
  });
  const vanish = random() < 0.3;
  return {
    kind: vanish ? 'ws-vanish' : 'ws-tunnel',
    messages,
    burst: between(random, 1, 4),
    // After that many echoes; -1: during the handshake, before the 101 arrives.
    vanishAfter: vanish ? (random() < 0.2 ? -1 : between(random, 0, count - 1)) : undefined,
    // Half the vanishing clients leave with messages still in flight.
    vanishWithData: vanish && random() < 0.5,
    // Gone during the handshake: the upstream's 101 comes 40 ms late, the client leaves within 30 ms.
    vanishDelay: between(random, 0, 30),
  };
}

/** A client that sends an upgrade request and destroys its socket before or as the answer comes. */
function vanishInHandshake(port, spec) {
  return operation((finish) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', (error) => finish('reset', error.code ?? error.message));
    socket.on('connect', () => {
      socket.write(
        'GET /ws/echo?delay=40 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
          'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      );
      setTimeout(() => {
        finish('vanished');
        socket.destroy();
      }, spec.vanishDelay);
    });
    return () => socket.destroy();
  });
}

/** One WebSocket session through the front: every echo compared with what was sent. */
export function wsSession(port, spec) {
  if (spec.vanishAfter === -1) return vanishInHandshake(port, spec);
  return operation((finish) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/echo`, {
      perMessageDeflate: false,
      handshakeTimeout: 20_000,
      maxPayload: 4 * 1024 * 1024,
    });
    let opened = false;
    let closing = false;
    let sent = 0;
    let received = 0;
    const { messages } = spec;
    const sendBurst = () => {
      const end = Math.min(messages.length, sent + spec.burst);
      for (; sent < end; sent++) ws.send(messages[sent].data, { binary: messages[sent].binary });
    };
    const vanish = () => {
      finish('vanished');
      ws.terminate();
    };
    ws.on('error', (error) => {
      const refused = /Unexpected server response: (\d+)/.exec(error.message);
      if (refused)
        finish(
          ERROR_STATUSES.has(Number(refused[1])) ? `s${refused[1]}` : 'wrong',
          `upgrade answered ${refused[1]}`,
        );
      // ws's own protocol errors: the byte stream through the tunnel was corrupted.
      else if (String(error.code).startsWith('WS_ERR'))
        finish('wrong', `${spec.kind}: ${error.code}: ${error.message}`);
      else finish(opened ? 'broken' : 'reset', error.code ?? error.message);
    });
    ws.on('open', () => {
      opened = true;
      if (spec.vanishAfter === 0) {
        if (spec.vanishWithData) sendBurst();
        return vanish();
      }
      sendBurst();
    });
    ws.on('message', (data, isBinary) => {
      const expected = messages[received];
      if (!expected || isBinary !== expected.binary || !expected.expect.equals(data)) {
        finish(
          'wrong',
          `${spec.kind}: echo ${received} differs (${data.length} B, binary ${isBinary}; sent ${expected?.expect.length} B, binary ${expected?.binary})`,
        );
        ws.terminate();
        return;
      }
      received++;
      if (spec.vanishAfter !== undefined && received >= spec.vanishAfter) {
        if (spec.vanishWithData) sendBurst();
        return vanish();
      }
      if (received === messages.length) {
        closing = true;
        ws.close(1000, 'done');
      } else if (received === sent) {
        sendBurst();
      }
    });
    ws.on('close', (code) => {
      if (closing && code === 1000) finish('ok');
      else
        finish(
          opened ? 'broken' : 'reset',
          `closed ${code} after ${received}/${messages.length} echoes`,
        );
    });
    return () => ws.terminate();
  });
}

/**
 * Opens `count` WebSocket sessions and holds them: resolves, once all are open, with `closed`, a
 * promise of the close code each one saw, for the shutdown that ends them.
 */
export async function heldTunnels(port, count) {
  const sockets = await Promise.all(
    Array.from({ length: count }, () => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/echo`, { perMessageDeflate: false });
      return new Promise((resolve, reject) => {
        ws.once('open', () => resolve(ws));
        ws.once('error', reject);
      });
    }),
  );
  const closed = Promise.all(
    sockets.map(
      (ws) =>
        new Promise((resolve) => {
          ws.on('error', () => {});
          ws.once('close', (code) => resolve(code));
        }),
    ),
  );
  return { closed };
}

/** While an upstream is down: what the front answers on HTTP (`agent: false`, a fresh connection). */
export function httpDownProbe(port) {
  return operation((finish) => {
    const req = http.get(
      { agent: false, host: '127.0.0.1', port, path: '/api/bytes?size=16&seed=1' },
      (res) => {
        res.resume();
        res.once('close', () => finish(`s${res.statusCode}`));
      },
    );
    req.on('error', (error) => finish('reset', error.code ?? error.message));
    return () => req.destroy();
  });
}

/** While the WebSocket upstream is down: what the front answers to an upgrade. */
export function wsDownProbe(port) {
  return operation((finish) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/echo`, {
      perMessageDeflate: false,
      handshakeTimeout: 20_000,
    });
    ws.on('error', (error) => {
      const refused = /Unexpected server response: (\d+)/.exec(error.message);
      finish(refused ? `s${refused[1]}` : 'reset', error.message);
    });
    ws.on('open', () => {
      finish('opened', 'a tunnel opened while the upstream was down');
      ws.terminate();
    });
    return () => ws.terminate();
  });
}
