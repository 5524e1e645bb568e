// SPDX-License-Identifier: Apache-2.0
// The TypeScript declarations declare what the modules export, and the
// event map names every event the client emits (a declaration that drifts
// from the code would type-check code that fails, or refuse code that
// works). tests/package/npm.sh type-checks an example against them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

const here = new URL('..', import.meta.url);
const read = (f) => readFileSync(new URL(f, here), 'utf8');

function declared(dts) {
  const names = new Set();
  for (const m of dts.matchAll(/^export declare (?:const|class|function) ([A-Za-z_$][\w$]*)/gm)) names.add(m[1]);
  if (/^export default /m.test(dts)) names.add('default');
  return names;
}

for (const [js, dts] of [
  ['signal-client.js', 'signal-client.d.ts'],
  ['peer.js', 'peer.d.ts'],
]) {
  test(`${dts} declares exactly what ${js} exports`, async () => {
    const mod = await import(new URL(js, here));
    assert.deepEqual([...declared(read(dts))].sort(), Object.keys(mod).sort());
  });
}

test('SignalClientEventMap has an entry for every event the client emits', () => {
  const src = read('signal-client.js');
  const emitted = new Set([...src.matchAll(/_emit\('([a-z_]+)'/g)].map((m) => m[1]));
  const dts = read('signal-client.d.ts');
  const map = /export interface SignalClientEventMap \{([^}]*)\}/.exec(dts)[1];
  const typed = new Set([...map.matchAll(/^\s*([a-z_]+):/gm)].map((m) => m[1]));
  assert.deepEqual([...emitted].sort(), [...typed].sort());
});

test('PeerLinkEventMap and PeerRoomEventMap cover what peer.js emits', () => {
  const src = read('peer.js');
  const emitted = new Set([...src.matchAll(/_emit\('([a-z_]+)'/g)].map((m) => m[1]));
  const dts = read('peer.d.ts');
  const typed = new Set();
  for (const name of ['PeerLinkEventMap', 'PeerRoomEventMap']) {
    const body = new RegExp(`export interface ${name} \\{([\\s\\S]*?)\\n\\}`).exec(dts)[1];
    for (const m of body.matchAll(/^\s{2}([a-z_]+):/gm)) typed.add(m[1]);
  }
  assert.deepEqual([...emitted].sort(), [...typed].sort());
});
