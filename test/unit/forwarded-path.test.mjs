// lib/routing/forwarded-path.ts: unsafe paths, pathRewrite, and the path sent upstream.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  compilePathRewrite,
  forwardedPath,
  upstreamPath,
  isUnsafePath,
} from '../../dist/routing/forwarded-path.js';

const REQ = { method: 'GET', url: '/', headers: {} };

/** What reaches an upstream with the rule's `basePath`: the route's path, then the upstream's in front. */
function sent(url, r, req) {
  const path = forwardedPath(url, r, req);
  return path === undefined ? undefined : upstreamPath(r.basePath, path);
}

/** A `PathRule` as the route table gives it (its prefix and two settings), with an upstream's path. */
const rule = ({ prefix = '', basePath = '', stripPrefix = false, pathRewrite } = {}) => ({
  prefix,
  basePath,
  settings: { stripPrefix, pathRewrite },
});

test('isUnsafePath: plain paths are safe', () => {
  for (const url of ['/', '/a', '/a/b/c', '/a/b/', '//a//b', '/a;b', '/%41', '/a%20b', '']) {
    assert.equal(isUnsafePath(url), false, url);
  }
});

test('isUnsafePath: . and .. segments, plain', () => {
  for (const url of [
    '/.',
    '/..',
    '/./a',
    '/../a',
    '/a/.',
    '/a/..',
    '/a/./b',
    '/a/../b',
    '/a/..?q=1',
    '.',
    '..',
    '../a',
  ]) {
    assert.equal(isUnsafePath(url), true, url);
  }
});

test('isUnsafePath: dot segments percent-encoded, in either case', () => {
  for (const url of [
    '/%2e',
    '/%2E',
    '/%2e%2e',
    '/%2E%2E',
    '/%2e%2E/a',
    '/.%2e/a',
    '/%2e./a',
    '/a/%2e%2e/b',
    '/a/%2E/b',
  ]) {
    assert.equal(isUnsafePath(url), true, url);
  }
});

test('isUnsafePath: dot segments with a ;parameter', () => {
  for (const url of ['/..;/admin', '/.;/admin', '/a/..;x=1/b', '/%2e%2e;/admin', '/..;', '/.;x']) {
    assert.equal(isUnsafePath(url), true, url);
  }
});

test('isUnsafePath: backslashes, plain and %5c in either case', () => {
  for (const url of ['/a\\b', '\\', '/\\..', '/a%5cb', '/a%5Cb', '/%5c%2e%2e', '/..%5c..']) {
    assert.equal(isUnsafePath(url), true, url);
  }
});

test('isUnsafePath: encoded slashes that form dot segments', () => {
  for (const url of ['/a%2f..', '/a%2F..%2Fb', '/a%2f.%2fb', '/%2f%2e%2e', '/x%2f%2e%2e%2fadmin']) {
    assert.equal(isUnsafePath(url), true, url);
  }
});

test('isUnsafePath: safe look-alikes', () => {
  for (const url of [
    '/a..b',
    '/..a',
    '/a..',
    '/.well-known/acme-challenge/x',
    '/...',
    '/..../a',
    '/.a',
    '/a.',
    '/a.b.c',
    '/%2e%2e%2e',
    '/%2ea',
    '/a%2fb',
    '/%2e%2e%3b/x', // an encoded ';' is not a parameter
    '/%252e%252e/x', // double-encoded: one decoding gives '%2e%2e', not '..'
    '/a;..',
  ]) {
    assert.equal(isUnsafePath(url), false, url);
  }
});

test('isUnsafePath: the query is never examined', () => {
  for (const url of [
    '/a?../..',
    '/a?x=/../b',
    '/?%2e%2e',
    '/a?\\',
    '/a?%5c',
    '/a?x=/..;/admin',
    '?..',
  ]) {
    assert.equal(isUnsafePath(url), false, url);
  }
  assert.equal(isUnsafePath('/..?x=1'), true);
  assert.equal(isUnsafePath('/a\\?x=1'), true);
});

test('compilePathRewrite: undefined compiles to undefined, a function is used as it is', () => {
  assert.equal(compilePathRewrite(undefined, 'routes["/"]'), undefined);
  const fn = (path) => path.toUpperCase();
  assert.equal(compilePathRewrite(fn, 'routes["/"]'), fn);
});

test('compilePathRewrite: the first matching rule wins, in key order', () => {
  const rewrite = compilePathRewrite(
    { '^/api/v1': '/v1', '^/api': '/legacy', '^/api/v1/x': '/never' },
    'routes["/"]',
  );
  assert.equal(rewrite('/api/v1/x', REQ), '/v1/x');
  assert.equal(rewrite('/api/v2', REQ), '/legacy/v2');
  assert.equal(rewrite('/other', REQ), undefined);
});

test('compilePathRewrite: replacements use the RegExp groups, and replace the first match only', () => {
  const rewrite = compilePathRewrite({ '^/users/(\\d+)': '/u/$1', a: 'b' }, 'target');
  assert.equal(rewrite('/users/42/posts?x=1', REQ), '/u/42/posts?x=1');
  assert.equal(rewrite('/aaa', REQ), '/baa');
  assert.equal(rewrite('/zzz', REQ), undefined);
});

test('compilePathRewrite: an empty object never rewrites', () => {
  const rewrite = compilePathRewrite({}, 'target');
  assert.equal(rewrite('/a', REQ), undefined);
});

test('compilePathRewrite: an invalid RegExp throws a TypeError naming the key', () => {
  assert.throws(() => compilePathRewrite({ '(': '/x' }, 'routes["/api"]'), {
    name: 'TypeError',
    message: 'viaduct: routes["/api"].pathRewrite: "(" is not a valid RegExp',
  });
});

test('compilePathRewrite: a replacement that is not a string throws a TypeError', () => {
  for (const replacement of [1, null, undefined, () => '/x', ['/x']]) {
    assert.throws(() => compilePathRewrite({ '^/a': replacement }, 'target'), {
      name: 'TypeError',
      message: 'viaduct: target.pathRewrite["^/a"] must be a string',
    });
  }
});

test('compilePathRewrite: neither an object nor a function throws a TypeError', () => {
  for (const rewrite of [null, '/x', 42, true]) {
    assert.throws(() => compilePathRewrite(rewrite, 'target'), {
      name: 'TypeError',
      message: 'viaduct: target.pathRewrite is an object of RegExp sources, or a function',
    });
  }
});

test('forwardedPath: the url as it is without prefix, rewrite or base path', () => {
  assert.equal(sent('/a/b?x=1', rule(), REQ), '/a/b?x=1');
  assert.equal(sent('/', rule(), REQ), '/');
  assert.equal(sent('/api/x', rule({ prefix: '/api' }), REQ), '/api/x');
});

test('forwardedPath: stripPrefix removes the matched prefix and keeps a leading slash', () => {
  const strip = rule({ prefix: '/api', stripPrefix: true });
  assert.equal(sent('/api/users', strip, REQ), '/users');
  assert.equal(sent('/api', strip, REQ), '/');
  assert.equal(sent('/api/', strip, REQ), '/');
  assert.equal(sent('/api?q=1', strip, REQ), '/?q=1');
  assert.equal(sent('/api/a/b?q=/api', strip, REQ), '/a/b?q=/api');
  // No prefix: nothing to strip.
  assert.equal(sent('/x', rule({ stripPrefix: true }), REQ), '/x');
});

test('forwardedPath: basePath is joined in front', () => {
  assert.equal(sent('/x', rule({ basePath: '/base' }), REQ), '/base/x');
  assert.equal(sent('/', rule({ basePath: '/base' }), REQ), '/base/');
  assert.equal(sent('/?q=1', rule({ basePath: '/base' }), REQ), '/base/?q=1');
  assert.equal(
    sent('/api', rule({ prefix: '/api', stripPrefix: true, basePath: '/base' }), REQ),
    '/base/',
  );
  assert.equal(
    sent('/api/v?x', rule({ prefix: '/api', stripPrefix: true, basePath: '/b/c' }), REQ),
    '/b/c/v?x',
  );
});

test('forwardedPath: pathRewrite runs after stripPrefix, before the base path', () => {
  const seen = [];
  const pathRewrite = compilePathRewrite({ '^/v1': '/version-1' }, 'target');
  const r = rule({
    prefix: '/api',
    stripPrefix: true,
    basePath: '/base',
    pathRewrite: (path, req) => {
      seen.push([path, req]);
      return pathRewrite(path, req);
    },
  });
  assert.equal(sent('/api/v1/x?y=1', r, REQ), '/base/version-1/x?y=1');
  assert.deepEqual(seen, [['/v1/x?y=1', REQ]]);
  assert.equal(sent('/api/v2', r, REQ), '/base/v2');
});

test('forwardedPath: a rewrite without a leading slash gets one; undefined keeps the path', () => {
  assert.equal(sent('/a', rule({ pathRewrite: () => 'b/c' }), REQ), '/b/c');
  assert.equal(sent('/a', rule({ pathRewrite: () => '' }), REQ), '/');
  assert.equal(sent('/a', rule({ pathRewrite: () => '?x=1' }), REQ), '/?x=1');
  assert.equal(sent('/a', rule({ pathRewrite: () => undefined }), REQ), '/a');
});

test('forwardedPath: an unsafe rewrite result is refused', () => {
  for (const result of ['/../admin', '..', '/a/%2e%2e/b', '/..;/x', '/a\\b', 'a%2f..']) {
    assert.equal(sent('/a', rule({ pathRewrite: () => result }), REQ), undefined, result);
  }
  // Unless the dots are in the query.
  assert.equal(sent('/a', rule({ pathRewrite: () => '/b?../..' }), REQ), '/b?../..');
});

test('forwardedPath: an unsafe url is refused before any rewrite', () => {
  let called = false;
  const r = rule({
    pathRewrite: () => {
      called = true;
      return '/safe';
    },
  });
  for (const url of ['/..', '/a/%2E%2E/b', '/..;/admin', '/a%5cb', '/a%2f..']) {
    assert.equal(sent(url, r, REQ), undefined, url);
  }
  assert.equal(called, false);
});

test('forwardedPath: a url not starting with / is refused', () => {
  for (const url of ['', '*', 'a/b', 'http://example.com/x', '?x', '\\a']) {
    assert.equal(sent(url, rule(), REQ), undefined, url);
  }
});

test('forwardedPath: repeated slashes are merged in the path, not in the query', () => {
  assert.equal(sent('//a///b//', rule(), REQ), '/a/b/');
  assert.equal(sent('/a//b?x=//y', rule(), REQ), '/a/b?x=//y');
  assert.equal(sent('/a?x=//y', rule(), REQ), '/a?x=//y');
  assert.equal(sent('/a/b?x=//y//z', rule(), REQ), '/a/b?x=//y//z');
  assert.equal(sent('//', rule({ basePath: '/base' }), REQ), '/base/');
  // A rewrite to a protocol-relative look-alike stays a path.
  assert.equal(sent('/a', rule({ pathRewrite: () => '//evil.example/x' }), REQ), '/evil.example/x');
  // stripPrefix leaving a leading slash next to the base path's.
  assert.equal(
    sent('/api//x', rule({ prefix: '/api', stripPrefix: true, basePath: '/b' }), REQ),
    '/b/x',
  );
});

// The oracle: decode what isUnsafePath decodes, then look at each segment of the path.
function hasDotSegment(url) {
  const queryAt = url.indexOf('?');
  const path = (queryAt === -1 ? url : url.slice(0, queryAt))
    .replace(/%2e/gi, '.')
    .replace(/%2f/gi, '/')
    .replace(/%5c/gi, '\\');
  return (
    path.includes('\\') ||
    path.split('/').some((segment) => {
      const name = segment.split(';')[0];
      return name === '.' || name === '..';
    })
  );
}

test('property: forwardedPath never returns a path without a leading / or with a dot segment', () => {
  const piece = fc.constantFrom(
    'a',
    'api',
    '.',
    '..',
    '...',
    '.a',
    '%2e',
    '%2E',
    '%2e%2E',
    '%2f',
    '%2F',
    '%5c',
    '\\',
    ';',
    ';x',
    '%',
    '%2',
    '',
    'e',
    '2e',
  );
  const segment = fc.array(piece, { maxLength: 4 }).map((parts) => parts.join(''));
  const pathOf = fc.array(segment, { maxLength: 5 }).map((segments) => segments.join('/'));
  const query = fc.option(
    fc.array(fc.constantFrom('x=1', '..', '/../', '//', '%2e', '\\', '&'), { maxLength: 3 }),
    { nil: undefined },
  );
  const rewrite = fc.constantFrom(
    undefined,
    { '^/a': '' },
    { '^/a': '..' },
    { '^/a': '.' },
    { '^/a': '/..' },
    { '^/api': '/%2e' },
    { '\\.': '' },
    { '/': '//' },
    { '%2': '' },
    { a: '.' },
    { ';': '' },
    { x: '/' },
  );
  fc.assert(
    fc.property(
      fc.constantFrom('', '/api', '/a', '/a/b'),
      pathOf,
      query,
      fc.boolean(),
      fc.constantFrom('', '/base', '/b/c'),
      rewrite,
      (prefix, rest, q, stripPrefix, basePath, rules) => {
        // The route table only hands over urls whose prefix matches at a segment boundary.
        const tail = rest === '' ? '' : `/${rest}`;
        const url = `${prefix}${tail}${q === undefined ? '' : `?${q.join('')}`}` || '/';
        const pathRewrite = compilePathRewrite(rules, 'target');
        const result = sent(url, rule({ prefix, basePath, stripPrefix, pathRewrite }), REQ);
        if (result === undefined) return;
        assert.equal(result.charCodeAt(0), 0x2f, `${url} -> ${result}`);
        assert.equal(hasDotSegment(result), false, `${url} -> ${result}`);
      },
    ),
    { numRuns: 2000 },
  );
});

test('property: a safe url without rewrite or prefix is forwarded as it is, slashes merged', () => {
  const segment = fc.stringMatching(/^[a-z0-9.%;~-]{0,6}$/);
  fc.assert(
    fc.property(fc.array(segment, { minLength: 1, maxLength: 6 }), (segments) => {
      const url = `/${segments.join('/')}`;
      const result = sent(url, rule(), REQ);
      if (hasDotSegment(url)) {
        assert.equal(result, undefined, url);
      } else {
        assert.equal(result, url.replace(/\/{2,}/g, '/'), url);
      }
    }),
    { numRuns: 1000 },
  );
});
