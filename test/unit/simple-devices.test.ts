import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { DeviceHost, MmioDevice, PioDevice } from '../../src/devices/device.js';
import { DEBUG_EXIT_PORT, DebugExit } from '../../src/devices/debug-exit.js';
import { PARK_PORT, Park } from '../../src/devices/park.js';
import { Bus, BusConflictError } from '../../src/vmm/bus.js';

/** A DeviceHost that records what devices ask of it. */
class RecordingHost implements DeviceHost {
  readonly cpu = 3;
  readonly calls: string[] = [];
  exitVm(status: number): void {
    this.calls.push(`exit ${status}`);
  }
  parkVcpu(): void {
    this.calls.push('park');
  }
  emit(event: string): void {
    this.calls.push(`emit ${event}`);
  }
}

test('debug exit: status is the low byte of a write of any size', () => {
  const dev = new DebugExit();
  const host = new RecordingHost();
  dev.pioWrite(DEBUG_EXIT_PORT, 1, 0x2a, host);
  dev.pioWrite(DEBUG_EXIT_PORT, 2, 0x1234, host);
  dev.pioWrite(DEBUG_EXIT_PORT, 4, 0xdeadbeef, host);
  dev.pioWrite(DEBUG_EXIT_PORT, 1, 0, host);
  assert.deepEqual(host.calls, ['exit 42', 'exit 52', 'exit 239', 'exit 0']);
});

test('debug exit and park: reads return all ones for the size and have no effect', () => {
  const host = new RecordingHost();
  for (const dev of [new DebugExit(), new Park()]) {
    const port = dev instanceof Park ? PARK_PORT : DEBUG_EXIT_PORT;
    assert.equal(dev.pioRead(port, 1, host), 0xff);
    assert.equal(dev.pioRead(port, 2, host), 0xffff);
    assert.equal(dev.pioRead(port, 4, host), 0xffffffff);
  }
  assert.deepEqual(host.calls, []);
});

test('park: any write parks the vCPU and nothing else', () => {
  const dev = new Park();
  const host = new RecordingHost();
  dev.pioWrite(PARK_PORT, 1, 0, host);
  dev.pioWrite(PARK_PORT, 4, 0xffffffff, host);
  assert.deepEqual(host.calls, ['park', 'park']);
});

test('ports match the guest ABI', () => {
  assert.equal(DEBUG_EXIT_PORT, 0xf4);
  assert.equal(PARK_PORT, 0xf5);
});

const pio = (name: string): PioDevice => ({ name, pioRead: () => 0, pioWrite: () => undefined });
const mmio = (name: string): MmioDevice => ({ name, mmioRead: () => undefined, mmioWrite: () => undefined });

test('Bus: port lookup returns the claiming device for every port of its range only', () => {
  const bus = new Bus();
  const uart = pio('uart');
  const exit = new DebugExit();
  bus.addPio(0x3f8, 8, uart);
  bus.addPio(DEBUG_EXIT_PORT, 1, exit);
  assert.equal(bus.pio(0x3f7), undefined);
  assert.equal(bus.pio(0x3f8), uart);
  assert.equal(bus.pio(0x3ff), uart);
  assert.equal(bus.pio(0x400), undefined);
  assert.equal(bus.pio(0xf4), exit);
  assert.equal(bus.pio(0xf5), undefined);
});

test('Bus: overlapping port claims throw BusConflictError and leave the bus unchanged', () => {
  const bus = new Bus();
  const a = pio('a');
  bus.addPio(0x3f8, 8, a);
  const b = pio('b');
  assert.throws(() => bus.addPio(0x3f0, 9, b), (e: unknown) => {
    assert.ok(e instanceof BusConflictError);
    assert.match(e.message, /0x3f8.*b conflicts with a/);
    return true;
  });
  assert.throws(() => bus.addPio(0x3ff, 2, b), BusConflictError);
  assert.equal(bus.pio(0x3f0), undefined, 'a failed claim takes no ports');
  assert.equal(bus.pio(0x400), undefined);
  bus.addPio(0x3f0, 8, b);
  assert.equal(bus.pio(0x3f7), b, 'adjacent ranges do not conflict');
});

test('Bus: invalid port ranges are rejected', () => {
  const bus = new Bus();
  assert.throws(() => bus.addPio(0xffff, 2, pio('x')), RangeError);
  assert.throws(() => bus.addPio(0x10, 0, pio('x')), RangeError);
  assert.throws(() => bus.addPio(-1, 1, pio('x')), RangeError);
  bus.addPio(0xffff, 1, pio('last'));
  assert.equal(bus.pio(0xffff)?.name, 'last');
});

test('Bus: MMIO lookup includes the base and excludes the end', () => {
  const bus = new Bus();
  const a = mmio('a');
  const b = mmio('b');
  bus.addMmio(0xfee00000n, 0x1000n, a);
  bus.addMmio(0xfee01000n, 0x10n, b);
  assert.equal(bus.mmioAt(0xfedfffffn), undefined);
  assert.equal(bus.mmioAt(0xfee00000n), a);
  assert.equal(bus.mmioAt(0xfee00fffn), a);
  assert.equal(bus.mmioAt(0xfee01000n), b, 'adjacent range starts where the previous ends');
  assert.equal(bus.mmioAt(0xfee0100fn), b);
  assert.equal(bus.mmioAt(0xfee01010n), undefined);
});

test('Bus: overlapping MMIO claims throw BusConflictError', () => {
  const bus = new Bus();
  const a = mmio('a');
  bus.addMmio(0x1000n, 0x1000n, a);
  assert.throws(() => bus.addMmio(0x1fffn, 1n, mmio('b')), BusConflictError);
  assert.throws(() => bus.addMmio(0x0n, 0x1001n, mmio('c')), BusConflictError);
  assert.throws(() => bus.addMmio(0x800n, 0x2000n, mmio('d')), BusConflictError, 'enclosing range');
  bus.addMmio(0x0n, 0x1000n, mmio('e'));
  assert.equal(bus.mmioAt(0xfffn)?.name, 'e');
  assert.equal(bus.mmioAt(0x1000n), a);
});
