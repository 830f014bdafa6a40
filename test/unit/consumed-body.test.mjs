// lib/http/consumed-body.ts: re-sending a request body that a body parser already read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parse as querystringParse } from 'node:querystring';
import fc from 'fast-check';
import qs from 'qs';
import { consumedBody } from '../../dist/http/consumed-body.js';

/** A request a body parser has read: `_body` is what body-parser sets. */
const parsed = (contentType, body, over = {}) => ({
  headers: contentType === undefined ? {} : { 'content-type': contentType },
  body,
  _body: true,
  readableEnded: true,
  ...over,
});

const FORM = 'application/x-www-form-urlencoded';

function resent(req) {
  const result = consumedBody(req);
  assert.equal(result?.kind, 'resend', JSON.stringify(result));
  assert.ok(Buffer.isBuffer(result.body));
  return result.body;
}

const formOf = (body) => resent(parsed(FORM, body)).toString('latin1');

/** How `express.urlencoded({ extended: true })` (body-parser 2) reads a form. */
const qsRead = (form) =>
  qs.parse(form, {
    allowPrototypes: true,
    arrayLimit: Math.max(100, form.split('&').length),
    depth: 32,
    parameterLimit: 1000,
    strictDepth: true,
  });

/** How a flat parser (`querystring`, body-parser 1's `extended: false`) reads a form, with URLSearchParams. */
function flatRead(form) {
  const read = {};
  for (const [name, value] of new URLSearchParams(form)) {
    const seen = read[name];
    read[name] =
      seen === undefined ? value : Array.isArray(seen) ? [...seen, value] : [seen, value];
  }
  return read;
}

test('an unread body is undefined: no parser ran and the stream has not ended', () => {
  assert.equal(
    consumedBody(parsed('application/json', undefined, { _body: false, readableEnded: false })),
    undefined,
  );
  assert.equal(consumedBody({ headers: {}, readableEnded: false }), undefined);
  // A req.body set by someone else than a body parser, the stream still unread.
  assert.equal(
    consumedBody(parsed('application/json', { a: 1 }, { _body: undefined, readableEnded: false })),
    undefined,
  );
});

test('a body counts as read when a parser marked it, or when the stream ended', () => {
  const json = 'application/json';
  assert.equal(consumedBody(parsed(json, { a: 1 }, { readableEnded: false })).kind, 'resend');
  assert.equal(consumedBody(parsed(json, { a: 1 }, { _body: false })).kind, 'resend');
});

test('JSON is re-serialised', () => {
  const body = { a: 1, b: [1, 'x', null, true], c: { d: 'é€😀' }, e: null };
  const bytes = resent(parsed('application/json', body));
  assert.equal(bytes.toString('utf8'), '{"a":1,"b":[1,"x",null,true],"c":{"d":"é€😀"},"e":null}');
  assert.deepEqual(JSON.parse(bytes.toString('utf8')), body);
  assert.equal(bytes.length, Buffer.byteLength(JSON.stringify(body)));
});

test('JSON: media type parameters and case, +json types, arrays', () => {
  assert.equal(resent(parsed('Application/JSON; charset=UTF-8', { a: 1 })).toString(), '{"a":1}');
  assert.equal(resent(parsed('application/vnd.api+json', { data: [] })).toString(), '{"data":[]}');
  assert.equal(
    resent(parsed('application/merge-patch+json; charset=utf-8', { a: null })).toString(),
    '{"a":null}',
  );
  assert.equal(resent(parsed('application/json', [1, { a: 2 }])).toString(), '[1,{"a":2}]');
  assert.equal(resent(parsed('application/json', {})).toString(), '{}');
});

test('urlencoded, flat: each value read back alike by URLSearchParams, querystring and qs', () => {
  const cases = [
    [{ a: '1' }, 'a=1'],
    [{ a: '1', b: 'two words', c: '' }, 'a=1&b=two+words&c='],
    [{ q: 'ü&=?+#%' }, 'q=%C3%BC%26%3D%3F%2B%23%25'],
    [{ a: ['1', '2'] }, 'a=1&a=2'],
    [{ a: ['x', 'y', 'z'], b: 'w' }, 'a=x&a=y&a=z&b=w'],
    [{ a: ['', ''] }, 'a=&a='],
    [{}, ''],
  ];
  for (const [body, form] of cases) {
    const written = formOf(body);
    assert.equal(written, form);
    assert.deepEqual(flatRead(written), body, form);
    assert.deepEqual({ ...querystringParse(written) }, body, form);
    assert.deepEqual(qs.parse(written), body, form);
    assert.deepEqual(qsRead(written), body, form);
  }
});

test('urlencoded: a one-value array is written key[]', () => {
  const written = formOf({ a: ['1'], b: 'x' });
  assert.equal(written, 'a%5B%5D=1&b=x');
  assert.deepEqual(qs.parse(written), { a: ['1'], b: 'x' });
  assert.deepEqual(qsRead(written), { a: ['1'], b: 'x' });
  assert.deepEqual(formOf({ a: [''] }), 'a%5B%5D=');
  assert.deepEqual(qsRead(formOf({ a: [''] })), { a: [''] });
});

test('urlencoded, nested: brackets for objects, indices for arrays of objects, as qs reads them', () => {
  const cases = [
    [{ user: { name: 'Ann', age: '3' } }, 'user[name]=Ann&user[age]=3'],
    [{ a: { b: { c: 'd' } } }, 'a[b][c]=d'],
    [{ a: [{ b: '1' }, { b: '2', c: '3' }] }, 'a[0][b]=1&a[1][b]=2&a[1][c]=3'],
    [{ a: [{ b: '1' }] }, 'a[0][b]=1'],
    [{ a: { b: ['1'] } }, 'a[b][]=1'],
    [{ a: { b: ['1', '2'] } }, 'a[b]=1&a[b]=2'],
    [{ a: [{ b: ['x'] }, { b: ['y', 'z'] }] }, 'a[0][b][]=x&a[1][b]=y&a[1][b]=z'],
    [{ a: ['x', { b: 'y' }] }, 'a[0]=x&a[1][b]=y'],
    [{ a: [{ b: { c: 'é' } }], d: 'e' }, 'a[0][b][c]=é&d=e'],
  ];
  for (const [body, form] of cases) {
    const written = formOf(body);
    assert.equal(decodeURIComponent(written.replaceAll('+', ' ')), form);
    assert.deepEqual(qs.parse(written), body, form);
    assert.deepEqual(qsRead(written), body, form);
  }
});

test('urlencoded: brackets and names are percent-encoded', () => {
  assert.equal(formOf({ a: { 'b c': 'd' } }), 'a%5Bb+c%5D=d');
  assert.equal(formOf({ a: [{ b: '1' }] }), 'a%5B0%5D%5Bb%5D=1');
});

test('urlencoded: a long array of objects keeps its indices for body-parser', () => {
  const body = { items: Array.from({ length: 150 }, (_, i) => ({ id: String(i) })) };
  const written = formOf(body);
  assert.ok(written.startsWith('items%5B0%5D%5Bid%5D=0&items%5B1%5D%5Bid%5D=1&'));
  assert.deepEqual(qsRead(written), body);
});

test('urlencoded: null becomes an empty value; undefined is left out', () => {
  assert.equal(formOf({ a: null, b: undefined, c: 'x' }), 'a=&c=x');
  assert.equal(formOf({ a: 1, b: true }), 'a=1&b=true');
});

test('property: an urlencoded body as qs parses it reads back the same with qs', () => {
  const name = fc.stringMatching(/^[a-z_][a-z0-9_]{0,5}$/);
  const text = fc.string({ unit: 'grapheme', maxLength: 8 });
  const { value } = fc.letrec((tie) => ({
    value: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      text,
      fc.array(text, { minLength: 1, maxLength: 4 }),
      tie('object'),
      fc.array(tie('object'), { minLength: 1, maxLength: 3 }),
    ),
    object: fc.dictionary(name, tie('value'), { minKeys: 1, maxKeys: 4, noNullPrototype: true }),
  }));
  const body = fc.dictionary(name, value, { maxKeys: 5, noNullPrototype: true });
  fc.assert(
    fc.property(body, (b) => {
      assert.deepEqual(qsRead(formOf(b)), b);
    }),
    { numRuns: 500 },
  );
});

test('property: a flat urlencoded body reads back the same with URLSearchParams and qs', () => {
  const name = fc.stringMatching(/^[a-z_][a-z0-9_]{0,5}$/);
  const text = fc.string({ unit: 'grapheme', maxLength: 8 });
  const value = fc.oneof(text, fc.array(text, { minLength: 2, maxLength: 4 }));
  fc.assert(
    fc.property(fc.dictionary(name, value, { maxKeys: 5, noNullPrototype: true }), (b) => {
      const written = formOf(b);
      assert.deepEqual(flatRead(written), b);
      assert.deepEqual(qsRead(written), b);
    }),
    { numRuns: 500 },
  );
});

test('text: encoded in its charset, utf-8 without one', () => {
  const body = 'héllo €';
  assert.deepEqual(resent(parsed('text/plain', body)), Buffer.from('68c3a96c6c6f20e282ac', 'hex'));
  assert.deepEqual(resent(parsed(undefined, body)), Buffer.from(body, 'utf8'));
  for (const type of [
    'text/plain; charset=utf-8',
    'text/plain; charset=UTF-8',
    'text/plain;charset=utf8',
    'text/plain; charset="utf-8"',
    'text/plain; format=flowed; charset = utf-8',
  ]) {
    assert.deepEqual(resent(parsed(type, body)), Buffer.from('68c3a96c6c6f20e282ac', 'hex'), type);
  }
});

test('text: latin1 and its names', () => {
  for (const charset of ['iso-8859-1', 'ISO-8859-1', 'latin1']) {
    assert.deepEqual(
      resent(parsed(`text/plain; charset=${charset}`, 'héllo')),
      Buffer.from([0x68, 0xe9, 0x6c, 0x6c, 0x6f]),
      charset,
    );
  }
  for (const charset of ['us-ascii', 'ascii']) {
    assert.deepEqual(
      resent(parsed(`text/plain; charset=${charset}`, 'hello')),
      Buffer.from('hello', 'ascii'),
      charset,
    );
  }
});

test('text: utf-16le', () => {
  assert.deepEqual(
    resent(parsed('text/plain; charset=utf-16le', 'hé€')),
    Buffer.from([0x68, 0x00, 0xe9, 0x00, 0xac, 0x20]),
  );
  assert.deepEqual(
    resent(parsed('text/plain; charset=UTF-16LE', '😀')),
    Buffer.from([0x3d, 0xd8, 0x00, 0xde]),
  );
});

test('text: a charset that cannot be re-encoded is lost, with the reason', () => {
  for (const charset of [
    'shift_jis',
    'utf-16',
    'utf-16be',
    'windows-1252',
    'koi8-r',
    'x-unknown',
  ]) {
    assert.deepEqual(consumedBody(parsed(`text/plain; charset=${charset}`, 'abc')), {
      kind: 'lost',
      reason: 'its charset cannot be re-encoded',
    });
  }
});

test('text: a string body of another type is encoded the same way', () => {
  assert.equal(
    resent(parsed('application/xml; charset=utf-8', '<a>é</a>')).toString('hex'),
    '3c613ec3a93c2f613e',
  );
  assert.equal(resent(parsed('application/json', '{"a":1}')).toString(), '{"a":1}');
});

test('a Buffer body (express.raw) is sent as it is, whatever its type', () => {
  const raw = Buffer.from([0x00, 0xff, 0x10, 0x80]);
  for (const type of [
    'application/octet-stream',
    'application/json',
    FORM,
    'text/plain; charset=shift_jis',
    undefined,
  ]) {
    assert.equal(resent(parsed(type, raw)), raw, String(type));
  }
  assert.equal(resent(parsed('application/octet-stream', Buffer.alloc(0))).length, 0);
});

test('a parsed body of a type with no known serialisation is lost, with the reason', () => {
  assert.deepEqual(consumedBody(parsed('multipart/form-data; boundary=x', { a: '1' })), {
    kind: 'lost',
    reason: 'a parsed "multipart/form-data" body has no known serialisation',
  });
  assert.deepEqual(consumedBody(parsed('application/xml', { root: {} })), {
    kind: 'lost',
    reason: 'a parsed "application/xml" body has no known serialisation',
  });
  assert.deepEqual(consumedBody(parsed(undefined, { a: 1 })), {
    kind: 'lost',
    reason: 'a parsed "untyped" body has no known serialisation',
  });
  // json as a suffix only: not 'application/jsonp', not 'application/json-seq'.
  assert.equal(consumedBody(parsed('application/json-seq', { a: 1 })).kind, 'lost');
  assert.deepEqual(consumedBody(parsed('application/x-ndjson', [{ a: 1 }])), {
    kind: 'lost',
    reason: 'a parsed "application/x-ndjson" body has no known serialisation',
  });
});

test('a read body without req.body is lost, with the reason', () => {
  assert.deepEqual(consumedBody(parsed('application/json', undefined)), {
    kind: 'lost',
    reason: 'req.body is empty although the request had a body',
  });
});

test('JSON: any value express.json({ strict: false }) parses is re-serialised, primitives included; text/json is JSON', () => {
  for (const value of [0, false, null, 12.5, [1, 'x']]) {
    assert.equal(resent(parsed('application/json', value)).toString(), JSON.stringify(value));
  }
  assert.equal(resent(parsed('text/json', { a: 1 })).toString(), '{"a":1}');
});

test('JSON is re-encoded in the charset its Content-Type declares', () => {
  const body = resent(parsed('application/json; charset=utf-16le', { name: 'é' }));
  assert.equal(body.toString('utf16le'), '{"name":"é"}');
});

test('urlencoded: a form declared in another charset than UTF-8 is lost, not re-coded', () => {
  const result = consumedBody(parsed(`${FORM}; charset=iso-8859-1`, { name: 'é' }));
  assert.deepEqual(result, {
    kind: 'lost',
    reason: 'a form in a charset other than UTF-8 cannot be re-encoded',
  });
});
