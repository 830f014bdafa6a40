// lib/upstream/pool.ts and lib/upstream/upstream.ts: how a pool chooses (smooth weighted
// round-robin, least-connections, a consistent hash ring), the `tried` exclusion, and each
// upstream's passive health (maxFails / failTimeout, the probe) and health-check verdicts.
import { afterEach, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { UpstreamPool } from '../../dist/upstream/pool.js';
import { Upstream } from '../../dist/upstream/upstream.js';

// A clock the tests move by hand: health reads Date.now().
const realNow = Date.now;
let now = 1_000_000;
beforeEach(() => {
  now = 1_000_000;
  Date.now = () => now;
});
afterEach(() => {
  Date.now = realNow;
});

/** An upstream named `name` (its url is `http://<name>`), with a stand-in engine and fresh stats. */
function upstream(name, weight = 1) {
  const target = {
    label: `http://${name}`,
    basePath: '',
    secure: false,
    url: { protocol: 'http:', host: name, hostname: name, href: `http://${name}/` },
  };
  const engine = {};
  return new Upstream(target, weight, engine, {
    requests: 0,
    tunnels: 0,
    active: 0,
    fails: 0,
    down: false,
  });
}

/** A pool over `upstreams`; the hash key is `req.key`; `events` records down/up. */
function pool(upstreams, settings = {}) {
  const events = [];
  const p = new UpstreamPool(
    upstreams,
    {
      balance: 'round-robin',
      hashKey: (req) => req.key,
      maxFails: 1,
      failTimeout: 10_000,
      retries: upstreams.length - 1,
      ...settings,
    },
    {
      down: (u, why) => events.push(['down', u.url, why]),
      up: (u, why) => events.push(['up', u.url, why]),
    },
  );
  p.reported = events;
  return p;
}

const req = (key) => ({ key });

/** The names of `count` picks (the upstream url without `http://`; `-` for none). */
function picks(p, count, request = req(undefined), tried) {
  const names = [];
  for (let i = 0; i < count; i++) names.push(p.pick(request, tried)?.url.slice(7) ?? '-');
  return names.join(' ');
}

// ---------------------------------------------------------------------------------------------

describe('smooth weighted round-robin (nginx)', () => {
  test('weights {5, 1, 1}: nginx’s documented sequence a a b a c a a, then again', () => {
    const p = pool([upstream('a', 5), upstream('b'), upstream('c')]);
    assert.equal(picks(p, 7), 'a a b a c a a');
    assert.equal(picks(p, 14), 'a a b a c a a a a b a c a a');
  });

  test('equal weights: in list order', () => {
    const p = pool([upstream('a'), upstream('b'), upstream('c')]);
    assert.equal(picks(p, 6), 'a b c a b c');
  });

  test('weights {1, 1, 2}: c a b c, never three of one in a row', () => {
    const p = pool([upstream('a'), upstream('b'), upstream('c', 2)]);
    assert.equal(picks(p, 8), 'c a b c c a b c');
  });

  test('property: over one cycle (the sum of the weights) each upstream is picked exactly its weight, and the state returns to zero', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 2, maxLength: 6 }),
        (weights) => {
          const upstreams = weights.map((w, i) => upstream(`u${i}`, w));
          const p = pool(upstreams);
          const total = weights.reduce((a, b) => a + b, 0);
          for (let cycle = 0; cycle < 2; cycle++) {
            const counts = new Map();
            for (let i = 0; i < total; i++) {
              const chosen = p.pick(req(undefined));
              counts.set(chosen, (counts.get(chosen) ?? 0) + 1);
            }
            for (const u of upstreams) assert.equal(counts.get(u), u.weight);
            for (const u of upstreams) assert.equal(u.current, 0);
          }
        },
      ),
    );
  });

  test('property: smooth — after every prefix of n picks, each upstream has n·w/W of them, give or take less than 2', () => {
    // Plain weighted round-robin (a a a a a a b b b b b b for 6/6) is off by 3 after 6 picks.
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 2, maxLength: 6 }),
        (weights) => {
          const upstreams = weights.map((w, i) => upstream(`u${i}`, w));
          const p = pool(upstreams);
          const total = weights.reduce((a, b) => a + b, 0);
          const counts = new Map(upstreams.map((u) => [u, 0]));
          for (let n = 1; n <= total * 2; n++) {
            const chosen = p.pick(req(undefined));
            counts.set(chosen, counts.get(chosen) + 1);
            for (const u of upstreams) {
              const off = Math.abs(counts.get(u) - (n * u.weight) / total);
              assert.ok(
                off < 2,
                `${u.url} (weight ${u.weight} of ${weights}) off by ${off} after ${n}`,
              );
            }
          }
        },
      ),
    );
  });

  test('an unavailable upstream is skipped; the others keep their proportions', () => {
    const [a, b, c] = [upstream('a'), upstream('b', 2), upstream('c')];
    const p = pool([a, b, c]);
    p.checked(c, false, 'health check');
    const names = picks(p, 9).split(' ');
    assert.equal(names.filter((n) => n === 'c').length, 0);
    assert.equal(names.filter((n) => n === 'b').length, 6);
    assert.equal(names.filter((n) => n === 'a').length, 3);
  });

  test('nothing available: undefined, and pick() did not count anything', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b]);
    p.checked(a, false, 'x');
    p.checked(b, false, 'x');
    assert.equal(p.pick(req(undefined)), undefined);
    assert.equal(a.current, 0);
    assert.equal(b.current, 0);
  });
});

describe('least-connections', () => {
  test('all idle: ties broken round-robin', () => {
    const p = pool([upstream('a'), upstream('b'), upstream('c')], {
      balance: 'least-connections',
    });
    assert.equal(picks(p, 6), 'a b c a b c');
  });

  test('the fewest in flight wins; among the least loaded, round-robin', () => {
    const [a, b, c] = [upstream('a'), upstream('b'), upstream('c')];
    const p = pool([a, b, c], { balance: 'least-connections' });
    a.stats.active = 3;
    b.stats.active = 1;
    c.stats.active = 1;
    assert.equal(picks(p, 4), 'b c b c');
    c.stats.active = 0;
    assert.equal(picks(p, 3), 'c c c');
  });

  test('in flight per weight: 2 on weight 2 ties 1 on weight 1; 3 on weight 2 loses to 1', () => {
    const [a, b] = [upstream('a', 2), upstream('b')];
    const p = pool([a, b], { balance: 'least-connections' });
    a.stats.active = 2;
    b.stats.active = 1;
    assert.deepEqual(new Set(picks(p, 4).split(' ')), new Set(['a', 'b']));
    a.stats.active = 3;
    assert.equal(picks(p, 3), 'b b b');
  });

  test('a down upstream with nothing in flight is not "least loaded"', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b], { balance: 'least-connections' });
    b.stats.active = 5;
    p.failed(a, 'refused');
    assert.equal(picks(p, 3), 'b b b');
  });
});

describe('tried: the upstreams a retry leaves aside', () => {
  for (const balance of ['round-robin', 'least-connections', 'hash']) {
    test(`${balance}: never one already tried; none left → undefined; the next pick is unrestricted`, () => {
      const [a, b, c] = [upstream('a'), upstream('b'), upstream('c')];
      const p = pool([a, b, c], { balance });
      for (let i = 0; i < 20; i++) {
        const request = req(`key-${i}`);
        const first = p.pick(request);
        const second = p.pick(request, [first]);
        assert.ok(second && second !== first);
        const third = p.pick(request, [first, second]);
        assert.ok(third && third !== first && third !== second);
        assert.equal(p.pick(request, [first, second, third]), undefined);
      }
      // The exclusion held for those calls only.
      const seen = new Set(Array.from({ length: 30 }, (_, i) => p.pick(req(`k${i}`))));
      assert.equal(seen.size, 3);
    });
  }

  test('hash: a retry goes to the next upstream on the ring, the same one for the same key', () => {
    const p = pool([upstream('a'), upstream('b'), upstream('c')], { balance: 'hash' });
    for (let i = 0; i < 20; i++) {
      const first = p.pick(req(`k${i}`));
      const retry = p.pick(req(`k${i}`), [first]);
      assert.equal(p.pick(req(`k${i}`), [first]), retry);
    }
  });

  test('a pool of one: itself, or nothing once tried', () => {
    const only = upstream('only');
    const p = pool([only]);
    assert.equal(p.pick(req()), only);
    assert.equal(p.pick(req(), [only]), undefined);
  });
});

describe('hash: a consistent hash ring', () => {
  const names = ['a', 'b', 'c', 'd'];

  function owners(p, keys) {
    return keys.map((key) => p.pick(req(key)).url);
  }

  test('the same key, the same upstream, whatever else was asked in between', () => {
    const p = pool(
      names.map((n) => upstream(n)),
      { balance: 'hash' },
    );
    const keys = Array.from({ length: 200 }, (_, i) => `user-${i}`);
    const first = owners(p, keys);
    assert.deepEqual(owners(p, [...keys].reverse()).reverse(), first);
    assert.equal(new Set(first).size, 4);
  });

  test('two pools over the same upstreams agree (the ring depends only on the URLs and weights)', () => {
    const keys = Array.from({ length: 300 }, (_, i) => `k${i}`);
    const one = pool(
      names.map((n) => upstream(n)),
      { balance: 'hash' },
    );
    const other = pool(
      [...names].reverse().map((n) => upstream(n)),
      { balance: 'hash' },
    );
    assert.deepEqual(owners(one, keys), owners(other, keys));
  });

  test('property: adding one upstream to N moves about 1/(N+1) of the keys, every one of them to it', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.string({ minLength: 1, maxLength: 12 }), {
          minLength: 300,
          maxLength: 600,
        }),
        fc.integer({ min: 2, max: 6 }),
        (keys, n) => {
          const base = Array.from({ length: n }, (_, i) => `10.0.0.${i + 1}:4000`);
          const before = pool(
            base.map((h) => upstream(h)),
            { balance: 'hash' },
          );
          const added = pool(
            [...base, '10.0.0.99:4000'].map((h) => upstream(h)),
            { balance: 'hash' },
          );
          let moved = 0;
          const was = owners(before, keys);
          const is = owners(added, keys);
          for (let i = 0; i < keys.length; i++) {
            if (was[i] === is[i]) continue;
            moved++;
            assert.equal(is[i], 'http://10.0.0.99:4000', 'a key moves only to the new upstream');
          }
          const share = moved / keys.length;
          const expected = 1 / (n + 1);
          assert.ok(
            share > expected * 0.4 && share < expected * 1.8,
            `${moved} of ${keys.length} moved with ${n} → ${n + 1} (expected about ${expected.toFixed(2)})`,
          );
        },
      ),
      { numRuns: 40 },
    );
  });

  test('property: removing one upstream moves only its own keys', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.string({ minLength: 1 }), { minLength: 100, maxLength: 300 }),
        fc.integer({ min: 0, max: 3 }),
        (keys, removed) => {
          const all = pool(
            names.map((n) => upstream(n)),
            { balance: 'hash' },
          );
          const fewer = pool(
            names.filter((_, i) => i !== removed).map((n) => upstream(n)),
            { balance: 'hash' },
          );
          const was = owners(all, keys);
          const is = owners(fewer, keys);
          for (let i = 0; i < keys.length; i++) {
            if (was[i] !== `http://${names[removed]}`) assert.equal(is[i], was[i], keys[i]);
            else assert.notEqual(is[i], was[i]);
          }
        },
      ),
      { numRuns: 30 },
    );
  });

  test('an unavailable owner: its keys go to the next on the ring, the others stay, and they come back', () => {
    const upstreams = names.map((n) => upstream(n));
    const p = pool(upstreams, { balance: 'hash' });
    const keys = Array.from({ length: 400 }, (_, i) => `s${i}`);
    const was = owners(p, keys);
    const [, b] = upstreams;
    p.checked(b, false, 'health check');
    const during = owners(p, keys);
    for (let i = 0; i < keys.length; i++) {
      if (was[i] === b.url) assert.notEqual(during[i], b.url);
      else assert.equal(during[i], was[i]);
    }
    p.checked(b, true, 'health check');
    assert.deepEqual(owners(p, keys), was);
  });

  test('weights: a weight-3 upstream owns about 3/5 of the keys next to two of weight 1', () => {
    const p = pool([upstream('a', 3), upstream('b'), upstream('c')], { balance: 'hash' });
    const keys = Array.from({ length: 3000 }, (_, i) => `key:${i}`);
    const share = owners(p, keys).filter((url) => url === 'http://a').length / keys.length;
    assert.ok(share > 0.45 && share < 0.75, `a owns ${share}`);
  });

  test('the ring is balanced: for realistic upstream names each owns its fair share of keys, ± 20 %', () => {
    const sets = [
      [
        'http://10.0.0.1:8080',
        'http://10.0.0.2:8080',
        'http://10.0.0.3:8080',
        'http://10.0.0.4:8080',
      ],
      ['http://web1.internal', 'http://web2.internal', 'http://web3.internal'],
      ['http://app-1:3000', 'http://app-2:3000', 'http://app-3:3000'],
    ];
    const keys = Array.from({ length: 30_000 }, (_, i) => `${(i * 2654435761) % 4294967296}`);
    for (const set of sets) {
      const p = pool(
        set.map((url) => upstream(url.slice(7))),
        { balance: 'hash' },
      );
      const counts = new Map();
      for (const key of keys) {
        const { url } = p.pick(req(key));
        counts.set(url, (counts.get(url) ?? 0) + 1);
      }
      const shares = set.map((url) => ((counts.get(url) ?? 0) * set.length) / keys.length);
      for (const [i, share] of shares.entries())
        assert.ok(
          share > 0.8 && share < 1.2,
          `${set[i]}: ${share.toFixed(2)} × its fair share (${shares.map((x) => x.toFixed(2))})`,
        );
    }
  });

  test('an undefined key: round-robin for that request', () => {
    const p = pool([upstream('a'), upstream('b'), upstream('c')], { balance: 'hash' });
    assert.equal(picks(p, 6, req(undefined)), 'a b c a b c');
  });

  test("'' is a key like any other (not round-robin)", () => {
    const p = pool([upstream('a'), upstream('b'), upstream('c')], { balance: 'hash' });
    assert.equal(new Set(picks(p, 6, req('')).split(' ')).size, 1);
  });
});

describe('passive health: maxFails within failTimeout, then a probe', () => {
  test('maxFails 1: the first failure leaves it out (event, stats.down), once', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b], { failTimeout: 300 });
    p.failed(a, 'connect ECONNREFUSED');
    assert.equal(a.available(), false);
    assert.equal(a.stats.down, true);
    assert.equal(a.stats.fails, 1);
    assert.equal(p.reported.length, 1);
    assert.deepEqual(p.reported[0].slice(0, 2), ['down', 'http://a']);
    assert.match(p.reported[0][2], /ECONNREFUSED; left out for 300 ms/);
    // A request still in flight on it fails too: counted, no second event, not extended.
    now += 100;
    p.failed(a, 'reset');
    assert.equal(a.stats.fails, 2);
    assert.equal(p.reported.length, 1);
    assert.equal(a.downUntil, 1_000_000 + 300);
    assert.equal(picks(p, 3), 'b b b');
  });

  test('maxFails 3: two failures leave it in, the third within failTimeout leaves it out', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b], { maxFails: 3, failTimeout: 1_000 });
    p.failed(a, 'x');
    now += 400;
    p.failed(a, 'x');
    assert.equal(a.available(), true);
    assert.equal(a.stats.down, false);
    assert.equal(p.reported.length, 0);
    now += 400;
    p.failed(a, 'x');
    assert.equal(a.available(), false);
    assert.equal(p.reported.length, 1);
  });

  test('the window starts over after failTimeout: failures spread wider than it never add up', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b], { maxFails: 2, failTimeout: 100 });
    for (let i = 0; i < 5; i++) {
      p.failed(a, 'x');
      now += 150;
    }
    assert.equal(a.available(), true);
    assert.equal(a.stats.fails, 5);
    assert.equal(p.reported.length, 0);
    p.failed(a, 'x');
    now += 50;
    p.failed(a, 'x');
    assert.equal(a.available(), false, 'two within 50 ms');
  });

  test('after failTimeout one request probes it; the others keep away until it is answered; success brings it back', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b], { failTimeout: 300 });
    p.failed(a, 'x');
    now += 299;
    assert.equal(a.available(), false, 'not before failTimeout');
    assert.equal(picks(p, 2), 'b b');
    now += 1;
    assert.equal(a.available(), true);
    const probe = p.pick(req(), [b]);
    assert.equal(probe, a);
    assert.equal(a.probing, true);
    assert.equal(a.available(), false, 'one probe at a time');
    assert.equal(picks(p, 3), 'b b b');
    assert.equal(a.stats.down, true, 'still down while probed');
    p.answered(a);
    assert.equal(a.stats.down, false);
    assert.equal(a.available(), true);
    assert.deepEqual(
      p.reported.map((e) => e.slice(0, 2)),
      [
        ['down', 'http://a'],
        ['up', 'http://a'],
      ],
    );
    assert.match(p.reported[1][2], /probe/);
  });

  test('a failed probe: out again for failTimeout, no second down event, then probed again', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b], { failTimeout: 300 });
    p.failed(a, 'x');
    now += 300;
    assert.equal(p.pick(req(), [b]), a);
    p.failed(a, 'still refused');
    assert.equal(a.probing, false);
    assert.equal(a.available(), false);
    assert.equal(a.stats.down, true);
    assert.equal(p.reported.length, 1, 'it never came back: no new down event');
    now += 299;
    assert.equal(a.available(), false, 'out for a whole failTimeout from the failed probe');
    now += 1;
    assert.equal(p.pick(req(), [b]), a, 'probed again');
    p.answered(a);
    assert.equal(p.reported.at(-1)[0], 'up');
  });

  test('a probe abandoned (the client left before a verdict): another request may probe', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b], { failTimeout: 300 });
    p.failed(a, 'x');
    now += 300;
    assert.equal(p.pick(req(), [b]), a);
    assert.equal(a.available(), false);
    a.probeAbandoned();
    assert.equal(a.available(), true);
    assert.equal(a.stats.down, true);
    assert.equal(p.pick(req(), [b]), a, 'the next probe');
  });

  test('answered() on an upstream that is up changes nothing and reports nothing', () => {
    const a = upstream('a');
    const p = pool([a, upstream('b')]);
    p.answered(a);
    assert.equal(p.reported.length, 0);
    assert.equal(a.stats.down, false);
  });

  test('an answer resets the failure count: maxFails counts failures since the last success', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b], { maxFails: 2, failTimeout: 1_000 });
    p.failed(a, 'x');
    now += 300;
    assert.equal(p.pick(req(), [b]), a);
    p.failed(a, 'x');
    assert.equal(a.available(), false, 'two within the window');
    now += 1_000;
    p.pick(req(), [b]);
    p.answered(a);
    p.failed(a, 'x');
    assert.equal(a.available(), true, 'one failure after the successful probe');
  });

  test('maxFails 0: never left out', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b], { maxFails: 0 });
    for (let i = 0; i < 10; i++) p.failed(a, 'x');
    assert.equal(a.available(), true);
    assert.equal(a.stats.fails, 10);
    assert.equal(a.stats.down, false);
    assert.equal(p.reported.length, 0);
  });

  test('a pool of one is never left out for failures (but counts them)', () => {
    const only = upstream('only');
    const p = pool([only], { maxFails: 1, failTimeout: 300 });
    for (let i = 0; i < 5; i++) p.failed(only, 'refused');
    assert.equal(only.available(), true);
    assert.equal(only.stats.down, false);
    assert.equal(only.stats.fails, 5);
    assert.equal(p.reported.length, 0);
    assert.equal(p.pick(req()), only);
    assert.equal(only.probing, false);
  });
});

describe('checked(): the health check’s verdicts', () => {
  test('down and up are reported on change only, with the check’s reason', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b]);
    p.checked(a, true, 'GET /health answered 200');
    assert.equal(p.reported.length, 0, 'up while up: nothing');
    p.checked(a, false, 'GET /health answered 500');
    p.checked(a, false, 'GET /health answered 500');
    assert.deepEqual(p.reported, [['down', 'http://a', 'GET /health answered 500']]);
    assert.equal(a.stats.down, true);
    assert.equal(a.available(), false);
    p.checked(a, true, 'GET /health answered 204');
    p.checked(a, true, 'GET /health answered 204');
    assert.deepEqual(p.reported.at(-1), ['up', 'http://a', 'GET /health answered 204']);
    assert.equal(p.reported.length, 2);
    assert.equal(a.available(), true);
  });

  test('a pool of one can be taken down by its health check (pick finds nothing)', () => {
    const only = upstream('only');
    const p = pool([only]);
    p.checked(only, false, 'no answer');
    assert.equal(p.pick(req()), undefined);
    assert.equal(p.reported[0][0], 'down');
    p.checked(only, true, 'answered 200');
    assert.equal(p.pick(req()), only);
  });

  test('a 2xx while left out for failures does not bring it back: its traffic failed, and only a probe of it does', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b], { failTimeout: 10_000 });
    p.failed(a, 'x');
    p.checked(a, true, 'answered 200');
    assert.equal(a.available(), false);
    assert.equal(a.stats.down, true);
    assert.deepEqual(
      p.reported.map((e) => e[0]),
      ['down'],
    );
    now += 10_000;
    assert.equal(p.pick(req(), [b]), a, 'the probe');
    p.answered(a);
    assert.equal(a.stats.down, false);
    assert.deepEqual(
      p.reported.map((e) => e[0]),
      ['down', 'up'],
    );
  });

  test('down by both: an answered probe does not bring it back while the health check says down', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b], { failTimeout: 300 });
    p.failed(a, 'x');
    p.checked(a, false, 'answered 500');
    assert.equal(p.reported.length, 1, 'already down: one event');
    now += 300;
    assert.equal(a.available(), false, 'the health check holds it out past failTimeout');
    // A request that was in flight on it answers: the passive part is cleared, the check's is not.
    p.answered(a);
    assert.equal(a.stats.down, true);
    assert.equal(a.available(), false);
    assert.equal(p.reported.length, 1);
    p.checked(a, true, 'answered 200');
    assert.equal(a.available(), true);
    assert.deepEqual(
      p.reported.map((e) => e[0]),
      ['down', 'up'],
    );
  });

  test('a failing check while left out for failures reports nothing new, and holds it out after failTimeout', () => {
    const [a, b] = [upstream('a'), upstream('b')];
    const p = pool([a, b], { failTimeout: 300 });
    p.failed(a, 'x');
    p.checked(a, false, 'answered 503');
    now += 1_000;
    assert.equal(a.available(), false);
    assert.equal(p.pick(req(), [b]), undefined);
    assert.equal(p.reported.length, 1);
  });
});

describe('every upstream left out for failures', () => {
  test('all are taken back at once, as nginx does, with an up event each: the request is not refused', () => {
    const [a, b, c] = [upstream('a'), upstream('b'), upstream('c')];
    const p = pool([a, b, c], { failTimeout: 10_000 });
    for (const each of [a, b, c]) p.failed(each, 'refused');
    assert.deepEqual(
      p.reported.map((e) => e[0]),
      ['down', 'down', 'down'],
    );
    const chosen = p.pick(req());
    assert.ok([a, b, c].includes(chosen), 'a request still goes somewhere');
    assert.deepEqual(
      p.reported.map((e) => e[0]),
      ['down', 'down', 'down', 'up', 'up', 'up'],
    );
    assert.ok([a, b, c].every((each) => each.stats.down === false));
  });

  test('not while one is still in, nor those a health check holds out; for a retry, of those not yet tried', () => {
    const [a, b, c] = [upstream('a'), upstream('b'), upstream('c')];
    const p = pool([a, b, c], { failTimeout: 10_000 });
    p.failed(a, 'refused');
    assert.ok([b, c].includes(p.pick(req())), 'b and c are in: a stays out');
    assert.equal(a.stats.down, true);
    // A retry after b and c failed: a, the only one it has not tried, is taken back.
    assert.equal(p.pick(req(), [b, c]), a);
    p.failed(a, 'refused');
    p.checked(b, false, 'answered 500');
    p.failed(c, 'refused');
    // a and c out for failures, b by its health check: a and c come back, b stays out.
    const chosen = p.pick(req());
    assert.ok(chosen === a || chosen === c);
    assert.equal(b.available(), false);
  });
});

describe('retries', () => {
  test('the pool reports the retries it was given', () => {
    assert.equal(pool([upstream('a'), upstream('b')], { retries: 0 }).retries, 0);
    assert.equal(pool([upstream('a'), upstream('b'), upstream('c')]).retries, 2);
  });
});
