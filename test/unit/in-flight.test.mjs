// lib/runtime/in-flight.ts: the intrusive list of work in flight, and its visits in slices.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InFlight, InFlightList } from '../../dist/runtime/in-flight.js';

class Work extends InFlight {
  constructor(name) {
    super();
    this.name = name;
  }

  shutdown() {}
}

function listOf(names) {
  const list = new InFlightList();
  const works = names.map((name) => new Work(name));
  for (const work of works) list.add(work);
  return { list, works };
}

test('visitSome goes on from where it stopped, round and round, each entry once per size visits', () => {
  const { list } = listOf(['a', 'b', 'c', 'd', 'e']);
  const seen = [];
  for (let i = 0; i < 5; i++) list.visitSome(2, (work) => seen.push(work.name));
  // Newest first: e d c b a, then round again.
  assert.deepEqual(seen, ['e', 'd', 'c', 'b', 'a', 'e', 'd', 'c', 'b', 'a']);
});

test('visitSome never visits an entry twice in one call, and visits nothing in an empty list', () => {
  const { list } = listOf(['a', 'b']);
  const seen = [];
  list.visitSome(10, (work) => seen.push(work.name));
  assert.deepEqual(seen, ['b', 'a']);
  const empty = new InFlightList();
  empty.visitSome(3, () => assert.fail('visited'));
});

test('an entry removed while the cursor points at it, or by its own visit, does not stop the round', () => {
  const { list, works } = listOf(['a', 'b', 'c', 'd']);
  const seen = [];
  list.visitSome(1, (work) => seen.push(work.name)); // d; the cursor is at c
  list.delete(works[2]); // c
  list.visitSome(2, (work) => {
    seen.push(work.name);
    list.delete(work);
  });
  list.visitSome(5, (work) => seen.push(work.name));
  assert.deepEqual(seen, ['d', 'b', 'a', 'd']);
  assert.equal(list.size, 1);
});
