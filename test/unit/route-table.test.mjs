// lib/routing/route-table.ts: how a route key is read, and how a path prefix matches.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { parseKey, prefixMatches } from '../../dist/routing/route-table.js';

const key = (hostname, port, prefix) => ({ hostname, port, prefix });

test("parseKey: '/path' is a path prefix on any host", () => {
  assert.deepEqual(parseKey('/api'), key(undefined, undefined, '/api'));
  assert.deepEqual(parseKey('/api/v1'), key(undefined, undefined, '/api/v1'));
  // Paths keep their case; only host names are case-insensitive.
  assert.deepEqual(parseKey('/API'), key(undefined, undefined, '/API'));
});

test("parseKey: '/' and a trailing slash are normalised away", () => {
  assert.deepEqual(parseKey('/'), key(undefined, undefined, ''));
  assert.deepEqual(parseKey('/api/'), key(undefined, undefined, '/api'));
  assert.deepEqual(parseKey('/api/v1/'), key(undefined, undefined, '/api/v1'));
  // Every trailing slash: '/api//' would otherwise never match '/api'.
  assert.deepEqual(parseKey('/api//'), key(undefined, undefined, '/api'));
});

test("parseKey: 'host', lower-cased, every path", () => {
  assert.deepEqual(parseKey('example.com'), key('example.com', undefined, ''));
  assert.deepEqual(parseKey('API.Example.COM'), key('api.example.com', undefined, ''));
  assert.deepEqual(parseKey('localhost'), key('localhost', undefined, ''));
  assert.deepEqual(parseKey('127.0.0.1'), key('127.0.0.1', undefined, ''));
});

test("parseKey: 'host:port'", () => {
  assert.deepEqual(parseKey('example.com:8080'), key('example.com', '8080', ''));
  assert.deepEqual(parseKey('Example.com:443'), key('example.com', '443', ''));
  assert.deepEqual(parseKey('127.0.0.1:3000'), key('127.0.0.1', '3000', ''));
});

test("parseKey: 'host/path' and 'host:port/path', trailing slash normalised", () => {
  assert.deepEqual(parseKey('example.com/api'), key('example.com', undefined, '/api'));
  assert.deepEqual(parseKey('example.com/api/'), key('example.com', undefined, '/api'));
  assert.deepEqual(parseKey('example.com/'), key('example.com', undefined, ''));
  assert.deepEqual(parseKey('Example.com:8080/Api/v1/'), key('example.com', '8080', '/Api/v1'));
  // A colon in the path is not a port.
  assert.deepEqual(parseKey('example.com/a:b'), key('example.com', undefined, '/a:b'));
});

test('parseKey: IPv6 literals in brackets, with or without a port', () => {
  assert.deepEqual(parseKey('[::1]:8080'), key('[::1]', '8080', ''));
  assert.deepEqual(parseKey('[::1]'), key('[::1]', undefined, ''));
  assert.deepEqual(parseKey('[2001:DB8::1]:443/ws/'), key('[2001:db8::1]', '443', '/ws'));
  assert.deepEqual(parseKey('[fe80::1]/api'), key('[fe80::1]', undefined, '/api'));
});

test('parseKey: invalid keys throw a TypeError that names the key and the accepted forms', () => {
  for (const bad of [
    '',
    ':8080',
    ':8080/api',
    'example.com:',
    'example.com:http',
    'example.com:80x',
    'example.com:-1',
    'example.com: 80',
    '[::1]:',
    '[::1]:abc/ws',
    // An IPv6 address without brackets, a port out of range, whitespace in a host name.
    '::1',
    '2001:db8::1',
    'example.com:99999',
    'a b',
  ]) {
    assert.throws(
      () => parseKey(bad),
      {
        name: 'TypeError',
        message: `viaduct: routes["${bad}"]: a key is '/path', 'host', 'host:port' or 'host/path' (an IPv6 address in brackets: '[::1]:8080')`,
      },
      JSON.stringify(bad),
    );
  }
});

test('prefixMatches: /api matches /api, /api/..., /api?..., never /apix', () => {
  for (const url of [
    '/api',
    '/api/',
    '/api/x',
    '/api/x/y',
    '/api?q',
    '/api?',
    '/api?q=/x',
    '/api//x',
  ]) {
    assert.equal(prefixMatches('/api', url), true, url);
  }
  for (const url of [
    '/apix',
    '/api-v2',
    '/api.json',
    '/api#x',
    '/ap',
    '/',
    '',
    '/API',
    '/x/api',
    '//api',
    'api',
  ]) {
    assert.equal(prefixMatches('/api', url), false, url);
  }
});

test('prefixMatches: nested prefixes match at their own boundary', () => {
  assert.equal(prefixMatches('/api/v1', '/api/v1'), true);
  assert.equal(prefixMatches('/api/v1', '/api/v1/users?x'), true);
  assert.equal(prefixMatches('/api/v1', '/api/v10'), false);
  assert.equal(prefixMatches('/api/v1', '/api'), false);
  assert.equal(prefixMatches('/api/v1', '/api/'), false);
});

test('prefixMatches: the empty prefix matches every url', () => {
  for (const url of ['', '/', '/x', '?q', '*', '/apix']) {
    assert.equal(prefixMatches('', url), true, url);
  }
});

test('prefixMatches, with parseKey: a key with a trailing slash matches like one without', () => {
  const { prefix } = parseKey('/api/');
  assert.equal(prefixMatches(prefix, '/api'), true);
  assert.equal(prefixMatches(prefix, '/api/x'), true);
  assert.equal(prefixMatches(prefix, '/apix'), false);
  assert.equal(prefixMatches(parseKey('/').prefix, '/anything'), true);
});

test('property: prefixMatches is "equal, or followed by / or ?"', () => {
  const segment = fc.stringMatching(/^[a-c]{1,3}$/);
  const path = fc.array(segment, { minLength: 1, maxLength: 3 }).map((s) => `/${s.join('/')}`);
  const url = fc
    .tuple(
      fc.array(segment, { maxLength: 4 }).map((s) => `/${s.join('/')}`),
      fc.constantFrom('', '/', '?', '?q=1', 'x', '/x'),
    )
    .map(([p, tail]) => p + tail);
  fc.assert(
    fc.property(path, url, (prefix, u) => {
      const expected = u === prefix || u.startsWith(`${prefix}/`) || u.startsWith(`${prefix}?`);
      assert.equal(prefixMatches(prefix, u), expected, `${prefix} ${u}`);
    }),
    { numRuns: 2000 },
  );
});
