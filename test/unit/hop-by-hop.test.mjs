// lib/headers/hop-by-hop.ts: which headers describe one connection and are never forwarded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  connectionListed,
  connectionOf,
  endToEnd,
  isHopByHop,
  responseEndToEnd,
} from '../../dist/headers/hop-by-hop.js';

const FIXED = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
];

const listed = (value) => {
  const set = connectionListed(value);
  return set === undefined ? undefined : [...set];
};

test('connectionListed: no Connection header lists nothing', () => {
  assert.equal(connectionListed(undefined), undefined);
});

test('connectionListed: the usual values list nothing, however they are cased or padded', () => {
  for (const value of [
    'close',
    'keep-alive',
    'upgrade',
    'Close',
    'Keep-Alive',
    'UPGRADE',
    ' close ',
    '\tkeep-alive',
  ]) {
    assert.equal(connectionListed(value), undefined, value);
  }
});

test('connectionListed: lists of options only list nothing', () => {
  assert.equal(connectionListed('Upgrade, Keep-Alive'), undefined);
  assert.equal(connectionListed('keep-alive,upgrade,close'), undefined);
  assert.equal(connectionListed(', ,'), undefined);
  assert.equal(connectionListed(''), undefined);
});

test('connectionListed: a lone header name is listed, lower-cased and trimmed', () => {
  assert.deepEqual(listed('X-Secret'), ['x-secret']);
  assert.deepEqual(listed('  X-Secret  '), ['x-secret']);
});

test('connectionListed: header names in a list, with spaces, case and empty tokens', () => {
  assert.deepEqual(listed('keep-alive, X-Foo'), ['x-foo']);
  assert.deepEqual(listed('Upgrade,  X-Foo ,,x-bar, ,Close'), ['x-foo', 'x-bar']);
  assert.deepEqual(listed('X-Foo, x-foo, X-FOO'), ['x-foo']);
  assert.deepEqual(listed(',x-a,'), ['x-a']);
});

test('connectionListed: an array (repeated Connection headers) is read as one list', () => {
  assert.deepEqual(listed(['close', 'X-A']), ['x-a']);
  assert.deepEqual(listed(['X-A', 'x-b, keep-alive']), ['x-a', 'x-b']);
  assert.equal(connectionListed(['close']), undefined);
  assert.equal(connectionListed(['upgrade', 'keep-alive']), undefined);
});

test('isHopByHop: each fixed hop-by-hop name, with or without a list', () => {
  for (const name of FIXED) {
    assert.equal(isHopByHop(name, undefined), true, name);
    assert.equal(isHopByHop(name, new Set(['x-other'])), true, name);
  }
});

test('isHopByHop: end-to-end names are not hop-by-hop', () => {
  for (const name of [
    'host',
    'content-type',
    'content-length',
    'authorization',
    'cookie',
    'set-cookie',
    'x-forwarded-for',
    'sec-websocket-key',
    'trailers',
    'tee',
    'proxy',
    '',
  ]) {
    assert.equal(isHopByHop(name, undefined), false, name);
  }
});

test('isHopByHop: names listed in Connection are hop-by-hop', () => {
  const set = connectionListed('X-Secret, x-debug');
  assert.equal(isHopByHop('x-secret', set), true);
  assert.equal(isHopByHop('x-debug', set), true);
  assert.equal(isHopByHop('x-other', set), false);
  assert.equal(isHopByHop('x-secret', undefined), false);
});

test('isHopByHop: names are expected lower-case, as Node parses them', () => {
  assert.equal(isHopByHop('Connection', undefined), false);
  assert.equal(isHopByHop('Transfer-Encoding', undefined), false);
  assert.equal(isHopByHop('X-Secret', connectionListed('x-secret')), false);
});

test('endToEnd: drops the fixed hop-by-hop headers and the listed ones, keeps the rest as they are', () => {
  const headers = {
    host: 'example.com',
    connection: 'keep-alive, X-Secret, x-trace',
    'keep-alive': 'timeout=5',
    'proxy-connection': 'keep-alive',
    te: 'trailers',
    trailer: 'x-checksum',
    'transfer-encoding': 'chunked',
    upgrade: 'websocket',
    'proxy-authorization': 'Basic Zm9vOmJhcg==',
    'proxy-authenticate': 'Basic',
    'x-secret': 'hidden',
    'x-trace': 'abc',
    'content-type': 'application/json',
    'set-cookie': ['a=1', 'b=2'],
    authorization: 'Bearer t',
  };
  assert.deepEqual(endToEnd(headers), {
    host: 'example.com',
    'content-type': 'application/json',
    'set-cookie': ['a=1', 'b=2'],
    authorization: 'Bearer t',
  });
  // A copy: the input is untouched.
  assert.equal(headers['x-secret'], 'hidden');
  assert.equal(headers.connection, 'keep-alive, X-Secret, x-trace');
});

test('endToEnd: without Connection only the fixed names go', () => {
  assert.deepEqual(endToEnd({ 'x-secret': '1', te: 'trailers', accept: '*/*' }), {
    'x-secret': '1',
    accept: '*/*',
  });
  assert.deepEqual(endToEnd({}), {});
});

test('endToEnd: a Connection listing only options drops no end-to-end header', () => {
  assert.deepEqual(endToEnd({ connection: 'Upgrade', upgrade: 'websocket', 'x-a': '1' }), {
    'x-a': '1',
  });
});

test('endToEnd: a Connection that lists an end-to-end name drops it too', () => {
  assert.deepEqual(
    endToEnd({ connection: 'Content-Type', 'content-type': 'text/plain', accept: '*/*' }),
    {
      accept: '*/*',
    },
  );
});

test('responseEndToEnd: a 426 keeps its Upgrade; other statuses drop it', () => {
  const headers = {
    connection: 'upgrade, x-hop',
    upgrade: 'websocket, h2c',
    'x-hop': '1',
    'content-type': 'text/plain',
  };
  assert.deepEqual(responseEndToEnd(headers, 426), {
    upgrade: 'websocket, h2c',
    'content-type': 'text/plain',
  });
  for (const status of [101, 200, 400, 425, 427, 500, undefined]) {
    assert.deepEqual(
      responseEndToEnd(headers, status),
      { 'content-type': 'text/plain' },
      String(status),
    );
  }
});

test('responseEndToEnd: a 426 without Upgrade gains none', () => {
  const copy = responseEndToEnd(
    { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' },
    426,
  );
  assert.deepEqual(copy, { 'content-type': 'text/plain' });
  assert.equal('upgrade' in copy, false);
});

test('connectionOf: persistence, and upgrade when the response carries Upgrade', () => {
  assert.equal(connectionOf({}, true), 'keep-alive');
  assert.equal(connectionOf({}, false), 'close');
  assert.equal(connectionOf({ upgrade: 'websocket' }, true), 'upgrade, keep-alive');
  assert.equal(connectionOf({ upgrade: 'websocket' }, false), 'upgrade, close');
  assert.equal(
    connectionOf({ connection: 'close', 'content-type': 'text/plain' }, true),
    'keep-alive',
  );
});
