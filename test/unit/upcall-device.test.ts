import { test } from 'node:test';
import assert from 'node:assert/strict';
/**
 * The upcall device's register model (docs/upcall-device.md): the shared-state device of each
 * vCPU thread (here several on one thread, sharing one UpcallState) driven by the main thread's
 * UpcallHost, with the worker→main events delivered synchronously, and COPY writing into a real
 * (memfd-backed) guest RAM through a spy that fails the test on any write outside it.
 */
import type { DeviceHost } from '../../src/devices/device.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import {
  UPCALL_BASE,
  UPCALL_CMD,
  UPCALL_ERRNO,
  UPCALL_FEATURE,
  UPCALL_IRQ,
  UPCALL_MAGIC,
  UPCALL_REG,
  UPCALL_VERSION,
  UPCALL_WINDOW_OFFSET,
  UPCALL_WINDOW_SIZE,
  UpcallDevice,
  UpcallState,
  type GuestRam,
  type UpcallPolicy,
} from '../../src/devices/upcall-device.js';
import { UpcallCancelledError, UpcallHost, UpcallTimeoutError, type AffinityEvent, type LoadStatus } from '../../src/upcall/upcall-host.js';

class FakeHost implements DeviceHost {
  constructor(readonly cpu = 0) {}
  exitVm(): void {
    throw new Error('the upcall device must not end the VM');
  }
  parkVcpu(): void {
    throw new Error('the upcall device must not park');
  }
  emit(): void {}
}

interface SetupOptions {
  vcpus?: number;
  policy?: UpcallPolicy;
  pin?: (tid: number, cpu: number) => void;
  raiseIrq?: (v: number) => void;
  timeoutMs?: number;
}

/** Guest RAM for COPY: 256 KiB, shared by the tests (each fills what it checks). */
const ram = GuestMemory.create(256 * 1024);
const RAM_SIZE = BigInt(ram.size);

/** {@link ram} as COPY sees it, recording every write and refusing (failing the test) one outside RAM. */
function spyRam(writes: [bigint, number][]): GuestRam {
  return {
    contains: (gpa, len) => ram.contains(gpa, len),
    write: (gpa, data) => {
      const a = BigInt(gpa);
      assert.ok(a >= 0n && a + BigInt(data.length) <= RAM_SIZE, `COPY wrote ${data.length} bytes at 0x${a.toString(16)}, outside RAM`);
      writes.push([a, data.length]);
      ram.write(a, data);
    },
  };
}

function setup(o: SetupOptions = {}) {
  const irqs: number[] = [];
  const ramWrites: [bigint, number][] = [];
  const state = UpcallState.create(o.vcpus ?? 4);
  const upcall = new UpcallHost(state, { raiseIrq: o.raiseIrq ?? ((v) => irqs.push(v)), commandTimeoutMs: o.timeoutMs });
  const pins: [number, number][] = [];
  const makeDevice = () => new UpcallDevice(state, {
    notify: (e) => upcall.handleEvent(e),
    policy: o.policy ?? { pinning: true, allowedCpus: [0, 1, 2, 3] },
    pin: o.pin ?? ((tid, cpu) => void pins.push([tid, cpu])),
    memory: spyRam(ramWrites),
  });
  // Two vCPU threads' devices on one state: every access goes to a random one of them.
  const devices = [makeDevice(), makeDevice()];
  let turn = 0;
  const dev = {
    mmioRead: (addr: bigint, data: Uint8Array, h: DeviceHost) => devices[turn++ & 1]!.mmioRead(addr, data, h),
    mmioWrite: (addr: bigint, data: Uint8Array, h: DeviceHost) => devices[turn++ & 1]!.mmioWrite(addr, data, h),
  };
  const host = new FakeHost(1);
  const read = (off: number): number => {
    const data = new Uint8Array(4);
    dev.mmioRead(UPCALL_BASE + BigInt(off), data, host);
    return (data[0]! | (data[1]! << 8) | (data[2]! << 16) | (data[3]! << 24)) >>> 0;
  };
  const write = (off: number, value: number): void => {
    const data = new Uint8Array([value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, (value >>> 24) & 0xff]);
    dev.mmioWrite(UPCALL_BASE + BigInt(off), data, host);
  };
  /** Points COPY_ADDR_LO/HI at `addr` and COPY_LEN at `cap`, writes `seq` to COPY; returns COPY_STATUS. */
  const copy = (seq: number, addr: bigint, cap: number): number => {
    write(UPCALL_REG.COPY_ADDR_LO, Number(addr & 0xffffffffn));
    write(UPCALL_REG.COPY_ADDR_HI, Number((addr >> 32n) & 0xffffffffn));
    write(UPCALL_REG.COPY_LEN, cap);
    write(UPCALL_REG.COPY, seq);
    return read(UPCALL_REG.COPY_STATUS) | 0;
  };
  return { dev, upcall, state, irqs, host, read, write, pins, copy, ramWrites };
}

/** What a guest driver does: read DATA_LEN bytes through the window, paging with DATA_OFFSET. */
function guestReadProgram(read: (o: number) => number, write: (o: number, v: number) => void): Uint8Array {
  const len = read(UPCALL_REG.DATA_LEN);
  const out = new Uint8Array(len);
  for (let page = 0; page < len; page += UPCALL_WINDOW_SIZE) {
    write(UPCALL_REG.DATA_OFFSET, page);
    for (let i = 0; i < UPCALL_WINDOW_SIZE && page + i < len; i += 4) {
      const w = read(UPCALL_WINDOW_OFFSET + i);
      for (let b = 0; b < 4 && page + i + b < len; b++) out[page + i + b] = (w >>> (8 * b)) & 0xff;
    }
  }
  return out;
}

function randomProgram(len: number, seed: number): Uint8Array {
  const p = new Uint8Array(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    p[i] = x & 0xff;
  }
  return p;
}

test('identification registers and reset state', () => {
  const { read } = setup();
  assert.equal(read(UPCALL_REG.MAGIC), UPCALL_MAGIC);
  assert.equal(Buffer.from([0x4b, 0x54, 0x55, 0x50]).toString(), 'KTUP');
  assert.equal(read(UPCALL_REG.VERSION), UPCALL_VERSION);
  assert.equal(read(UPCALL_REG.WINDOW_SIZE), UPCALL_WINDOW_SIZE);
  assert.equal(read(UPCALL_REG.IRQ_STATUS), 0);
  assert.equal(read(UPCALL_REG.IRQ_VECTOR), 0);
  assert.equal(read(UPCALL_REG.COMMAND), UPCALL_CMD.NONE);
  assert.equal(read(UPCALL_REG.DATA_LEN), 0);
  assert.equal(read(UPCALL_REG.AFFINITY), 0xffffffff);
  assert.equal(read(UPCALL_REG.STATUS_PC), 0xffffffff);
  assert.equal(read(UPCALL_REG.MAP_DIR_LO), 0);
  assert.equal(read(UPCALL_WINDOW_OFFSET), 0);
  assert.equal(read(UPCALL_REG.FEATURES), UPCALL_FEATURE.COPY);
  for (const r of [UPCALL_REG.COPY_ADDR_LO, UPCALL_REG.COPY_ADDR_HI, UPCALL_REG.COPY_LEN, UPCALL_REG.COPY, UPCALL_REG.COPY_STATUS]) assert.equal(read(r), 0);
});

test('IRQ_VECTOR accepts 0 and 0x20–0xef only', () => {
  const { upcall, read, write } = setup();
  write(UPCALL_REG.IRQ_VECTOR, 0x41);
  assert.equal(read(UPCALL_REG.IRQ_VECTOR), 0x41);
  for (const bad of [0x1f, 0xf0, 0xff, 0x100, 0xffffffff]) write(UPCALL_REG.IRQ_VECTOR, bad);
  assert.equal(read(UPCALL_REG.IRQ_VECTOR), 0x41);
  assert.equal(upcall.counters.badValue, 5);
  write(UPCALL_REG.IRQ_VECTOR, 0);
  assert.equal(read(UPCALL_REG.IRQ_VECTOR), 0);
});

test('deliver: interrupt, paged DATA window, STATUS + ACK resolve the promise', async () => {
  const { upcall, irqs, read, write } = setup();
  write(UPCALL_REG.IRQ_VECTOR, 0x50);
  const program = randomProgram(5000, 7); // > two windows, not a multiple of 4
  const done = upcall.deliver(program, 3);
  assert.deepEqual(irqs, [0x50]);
  assert.equal(read(UPCALL_REG.IRQ_STATUS) & UPCALL_IRQ.CMD_PENDING, UPCALL_IRQ.CMD_PENDING);
  assert.equal(read(UPCALL_REG.COMMAND), UPCALL_CMD.LOAD_PROGRAM);
  assert.equal(read(UPCALL_REG.COMMAND_ARG), 3);
  const seq = read(UPCALL_REG.COMMAND_SEQ);
  assert.equal(seq, 1);
  assert.equal(read(UPCALL_REG.DATA_LEN), 5000);
  assert.deepEqual(guestReadProgram(read, write), program);
  // Past the end of the program the window reads zeros.
  write(UPCALL_REG.DATA_OFFSET, 4996);
  assert.equal(read(UPCALL_WINDOW_OFFSET), (program[4996]! | (program[4997]! << 8) | (program[4998]! << 16) | (program[4999]! << 24)) >>> 0);
  assert.equal(read(UPCALL_WINDOW_OFFSET + 4), 0);
  // Unaligned DATA_OFFSET is refused.
  write(UPCALL_REG.DATA_OFFSET, 6);
  assert.equal(read(UPCALL_REG.DATA_OFFSET), 4996);
  // Write-1-to-clear.
  write(UPCALL_REG.IRQ_STATUS, UPCALL_IRQ.CMD_PENDING);
  assert.equal(read(UPCALL_REG.IRQ_STATUS) & UPCALL_IRQ.CMD_PENDING, 0);
  // The guest rejects it at instruction 17.
  write(UPCALL_REG.STATUS, -UPCALL_ERRNO.EINVAL >>> 0);
  write(UPCALL_REG.STATUS_PC, 17);
  write(UPCALL_REG.ACK, seq + 1); // stale: ignored
  assert.equal(upcall.counters.staleAcks, 1);
  assert.equal(upcall.pendingCommands, 1);
  write(UPCALL_REG.ACK, seq);
  assert.deepEqual(await done, { status: -22, pc: 17, seq: 1 } satisfies LoadStatus);
  assert.equal(read(UPCALL_REG.COMMAND), UPCALL_CMD.NONE);
  assert.equal(read(UPCALL_REG.DATA_LEN), 0);
  assert.equal(read(UPCALL_REG.IRQ_STATUS), UPCALL_IRQ.CMD_DONE);
  write(UPCALL_REG.ACK, seq); // a second ACK is stale
  assert.equal(upcall.counters.staleAcks, 2);
});

test('COPY writes the current program into guest RAM; the window still works; ACK completes', async () => {
  const { upcall, read, write, copy, ramWrites } = setup();
  const program = randomProgram(5000, 11);
  const done = upcall.deliver(program, 4);
  const seq = read(UPCALL_REG.COMMAND_SEQ);
  ram.fill(0x1000, 0x2000, 0xa5);
  // Any alignment; a buffer exactly the program's size.
  assert.equal(copy(seq, 0x1003n, program.length), program.length);
  assert.deepEqual(ram.read(0x1003, program.length), program);
  assert.equal(ram.readU8(0x1002), 0xa5, 'nothing before the buffer');
  assert.equal(ram.readU8(0x1003 + program.length), 0xa5, 'nothing after the program');
  assert.deepEqual(read(UPCALL_REG.COPY_ADDR_LO), 0x1003);
  assert.deepEqual(read(UPCALL_REG.COPY_LEN), program.length);
  // The very end of RAM, with a larger buffer (COPY_LEN is a capacity).
  assert.equal(copy(seq, RAM_SIZE - 5000n, 0xffffffff), 5000);
  assert.deepEqual(ram.read(RAM_SIZE - 5000n, 5000), program);
  assert.deepEqual(ramWrites, [[0x1003n, 5000], [RAM_SIZE - 5000n, 5000]]);
  // COPY neither completes the command nor disturbs the window.
  assert.equal(read(UPCALL_REG.COMMAND), UPCALL_CMD.LOAD_PROGRAM);
  assert.deepEqual(guestReadProgram(read, write), program);
  assert.equal(upcall.counters.copies, 2);
  write(UPCALL_REG.ACK, seq);
  assert.deepEqual(await done, { status: 0, pc: null, seq });
});

test('COPY refuses with a negative errno and writes nothing: no command, stale seq, small buffer, outside RAM', async () => {
  const { upcall, read, write, copy, ramWrites } = setup({ timeoutMs: 50 });
  const before = ram.read(0, ram.size);
  // No command.
  assert.equal(copy(0, 0x1000n, 100), -UPCALL_ERRNO.ENOENT);
  assert.equal(copy(1, 0x1000n, 100), -UPCALL_ERRNO.ENOENT);
  const program = randomProgram(300, 12);
  const done = upcall.deliver(program, 1);
  const seq = read(UPCALL_REG.COMMAND_SEQ);
  const len = BigInt(program.length);
  // Stale sequence numbers (checked before the buffer).
  for (const bad of [0, seq + 1, seq - 1, 0xffffffff]) assert.equal(copy(bad, 0x1000n, 1000), -UPCALL_ERRNO.ESTALE, `seq ${bad}`);
  // A buffer smaller than the program (checked before its address).
  for (const cap of [0, 1, program.length - 1]) assert.equal(copy(seq, 0x1000n, cap), -UPCALL_ERRNO.ENOSPC, `COPY_LEN ${cap}`);
  assert.equal(copy(seq, 1n << 63n, 0), -UPCALL_ERRNO.ENOSPC);
  // Outside RAM: straddling its end, at it, past it, at the register page, above 4 GiB, and
  // addresses whose end wraps around 2^64 (a 64-bit sum would land inside RAM).
  const outside = [
    RAM_SIZE - len + 1n, RAM_SIZE - 1n, RAM_SIZE, RAM_SIZE + 4096n, UPCALL_BASE, 0xfee00000n, 1n << 32n,
    (1n << 64n) - 1n, (1n << 64n) - len + 1n, (1n << 64n) - len, (1n << 64n) - (1n << 32n), 0x8000_0000_0000_0000n,
  ];
  for (const addr of outside) assert.equal(copy(seq, addr, 0xffffffff), -UPCALL_ERRNO.EFAULT, `COPY_ADDR 0x${addr.toString(16)}`);
  assert.deepEqual(ramWrites, []);
  assert.deepEqual(ram.read(0, ram.size), before, 'guest RAM unchanged');
  assert.equal(upcall.counters.copies, 0);
  assert.equal(upcall.counters.copyErrors, 2 + 4 + 4 + outside.length);
  // COPY_STATUS holds the last result until the next COPY.
  assert.equal(read(UPCALL_REG.COPY_STATUS) | 0, -UPCALL_ERRNO.EFAULT);
  assert.equal(copy(seq, 0x2000n, 300), 300);
  assert.equal(read(UPCALL_REG.COPY_STATUS), 300);
  // After the ACK the command is gone: its sequence number copies nothing.
  write(UPCALL_REG.ACK, seq);
  await done;
  assert.equal(copy(seq, 0x2000n, 300), -UPCALL_ERRNO.ENOENT);
  // Nor after the host withdrew it (timeout).
  const late = upcall.deliver(program, 1);
  const seq2 = read(UPCALL_REG.COMMAND_SEQ);
  await assert.rejects(late, UpcallTimeoutError);
  assert.equal(copy(seq2, 0x2000n, 300), -UPCALL_ERRNO.ENOENT);
  // UNLOAD has no program: COPY copies 0 bytes (an address up to the end of RAM is in bounds).
  const unload = upcall.unload(1);
  const seq3 = read(UPCALL_REG.COMMAND_SEQ);
  assert.equal(copy(seq3, RAM_SIZE, 0), 0);
  assert.equal(copy(seq3, RAM_SIZE + 1n, 0), -UPCALL_ERRNO.EFAULT);
  write(UPCALL_REG.ACK, seq3);
  await unload;
  assert.deepEqual(ramWrites, [[0x2000n, 300], [RAM_SIZE, 0]]);
});

test('commands queue; each ACK posts the next; STATUS defaults to success', async () => {
  const { upcall, irqs, read, write } = setup();
  const a = upcall.deliver(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]), 1);
  const b = upcall.unload(1);
  assert.equal(upcall.pendingCommands, 2);
  assert.deepEqual(irqs, [], 'no vector yet: no interrupt');
  write(UPCALL_REG.IRQ_VECTOR, 0x30); // pending event delivered once a vector is set
  assert.deepEqual(irqs, [0x30]);
  write(UPCALL_REG.ACK, read(UPCALL_REG.COMMAND_SEQ));
  assert.deepEqual(await a, { status: 0, pc: null, seq: 1 });
  assert.deepEqual(irqs, [0x30, 0x30]);
  assert.equal(read(UPCALL_REG.COMMAND), UPCALL_CMD.UNLOAD);
  assert.equal(read(UPCALL_REG.DATA_LEN), 0);
  assert.equal(read(UPCALL_REG.STATUS_PC), 0xffffffff);
  write(UPCALL_REG.ACK, 2);
  assert.deepEqual(await b, { status: 0, pc: null, seq: 2 });
});

test('deliver rejects bad host arguments; cancelAll rejects and tells the guest', async () => {
  const { upcall, irqs, read, write } = setup();
  await assert.rejects(upcall.deliver(new Uint8Array(0), 0), RangeError);
  await assert.rejects(upcall.deliver(new Uint8Array(4), -1), RangeError);
  await assert.rejects(upcall.deliver(new Uint8Array((1 << 16) + 1), 0), RangeError);
  write(UPCALL_REG.IRQ_VECTOR, 0x22);
  const p1 = upcall.deliver(new Uint8Array(8), 0);
  const p2 = upcall.deliver(new Uint8Array(8), 0);
  upcall.cancelAll('vm stopping');
  await assert.rejects(p1, UpcallCancelledError);
  await assert.rejects(p2, UpcallCancelledError);
  assert.equal(read(UPCALL_REG.IRQ_STATUS), UPCALL_IRQ.CMD_CANCELLED);
  assert.equal(read(UPCALL_REG.COMMAND), 0);
  assert.deepEqual(irqs, [0x22, 0x22]);
  write(UPCALL_REG.IRQ_STATUS, 0xffffffff);
  assert.equal(read(UPCALL_REG.IRQ_STATUS), 0);
});

test('AFFINITY: policy, self, range; pins the named vCPU\'s thread; result in AFFINITY_STATUS and an event', () => {
  const fail = Object.assign(new Error('EINVAL'), { errno: 22 });
  const { read, write, pins, upcall, state } = setup({
    vcpus: 4,
    policy: { pinning: true, allowedCpus: [1, 5] },
    pin: (tid, cpu) => {
      if (tid === 999) throw fail;
      pins.push([tid, cpu]);
    },
  });
  assert.equal(read(UPCALL_REG.HOST_CPUS), 2); // the allowed set's size
  const events: AffinityEvent[] = [];
  upcall.onAffinity((e) => events.push(e));
  write(UPCALL_REG.AFFINITY, (2 << 16) | 5); // vCPU 2 has no thread yet
  assert.equal(read(UPCALL_REG.AFFINITY_STATUS) | 0, -3);
  state.publishTid(1, 4242);
  state.publishTid(2, 4343);
  state.publishTid(3, 999);
  write(UPCALL_REG.AFFINITY, (2 << 16) | 5);
  assert.equal(read(UPCALL_REG.AFFINITY_STATUS), 0);
  assert.equal(read(UPCALL_REG.AFFINITY), (2 << 16) | 5);
  assert.equal(read(UPCALL_REG.IRQ_STATUS) & UPCALL_IRQ.AFFINITY_DONE, UPCALL_IRQ.AFFINITY_DONE);
  write(UPCALL_REG.AFFINITY, (0xffff << 16) | 1); // the writing vCPU (FakeHost.cpu = 1)
  assert.equal(read(UPCALL_REG.AFFINITY_STATUS), 0);
  write(UPCALL_REG.AFFINITY, (2 << 16) | 2); // CPU 2 is not allowed
  assert.equal(read(UPCALL_REG.AFFINITY_STATUS) | 0, -UPCALL_ERRNO.EINVAL);
  write(UPCALL_REG.AFFINITY, (4 << 16) | 1); // no vCPU 4
  assert.equal(read(UPCALL_REG.AFFINITY_STATUS) | 0, -UPCALL_ERRNO.EINVAL);
  write(UPCALL_REG.AFFINITY, (3 << 16) | 1); // sched_setaffinity fails: its errno
  assert.equal(read(UPCALL_REG.AFFINITY_STATUS) | 0, -22);
  assert.deepEqual(pins, [[4343, 5], [4242, 1]]);
  assert.deepEqual(events.map((e) => e.result), [-3, 0, 0, -22, -22, -22]);
  assert.deepEqual(events[2], { vcpu: 1, hostCpu: 1, result: 0 });
  assert.equal(upcall.counters.affinityRequests, 6);
});

test('AFFINITY with pinning off is -EPERM and pins nothing; a throwing pin without errno is -EIO', () => {
  const off = setup({ policy: { pinning: false, allowedCpus: [0, 1] } });
  off.state.publishTid(0, 1);
  assert.equal(off.read(UPCALL_REG.HOST_CPUS), 0);
  off.write(UPCALL_REG.AFFINITY, 1);
  assert.equal(off.read(UPCALL_REG.AFFINITY_STATUS) | 0, -UPCALL_ERRNO.EPERM);
  assert.deepEqual(off.pins, []);
  const broken = setup({ pin: () => { throw new Error('no errno'); } });
  broken.state.publishTid(0, 1);
  broken.write(UPCALL_REG.AFFINITY, 1);
  assert.equal(broken.read(UPCALL_REG.AFFINITY_STATUS) | 0, -UPCALL_ERRNO.EIO);
});

test('MAP_DIR_LO/HI hold the map directory GPA the guest publishes', () => {
  const { read, write, upcall } = setup();
  assert.equal(upcall.mapDirectory(), 0n);
  write(UPCALL_REG.MAP_DIR_LO, 0x12345000);
  write(UPCALL_REG.MAP_DIR_HI, 0x1);
  assert.equal(read(UPCALL_REG.MAP_DIR_LO), 0x12345000);
  assert.equal(read(UPCALL_REG.MAP_DIR_HI), 1);
  assert.equal(upcall.mapDirectory(), 0x1_12345000n);
});

test('a command the guest does not ACK times out, is cancelled, and the next one is posted', async () => {
  const { upcall, read, write, irqs } = setup({ timeoutMs: 50 });
  write(UPCALL_REG.IRQ_VECTOR, 0x33);
  const a = upcall.deliver(new Uint8Array([1, 2, 3, 4]), 1);
  const b = upcall.deliver(new Uint8Array([5, 6, 7, 8]), 2);
  await assert.rejects(a, UpcallTimeoutError);
  // The cancellation interrupted the guest; the next command came right after.
  assert.equal(read(UPCALL_REG.COMMAND_ARG), 2);
  assert.equal(read(UPCALL_REG.COMMAND_SEQ), 2);
  assert.equal(read(UPCALL_REG.IRQ_STATUS) & UPCALL_IRQ.CMD_CANCELLED, 0, 'a new command clears CMD_CANCELLED');
  assert.deepEqual(irqs, [0x33, 0x33, 0x33]);
  write(UPCALL_REG.ACK, 1); // the late ACK of the withdrawn command is stale
  assert.equal(upcall.counters.staleAcks, 1);
  write(UPCALL_REG.ACK, 2);
  assert.deepEqual(await b, { status: 0, pc: null, seq: 2 });
  upcall.cancelAll('done', true);
  await assert.rejects(upcall.deliver(new Uint8Array(4), 0), UpcallCancelledError);
});

test('bad accesses: all ones on read, ignored on write, counted', () => {
  const { dev, upcall, read, write } = setup();
  const host = new FakeHost();
  const d2 = new Uint8Array(2);
  dev.mmioRead(UPCALL_BASE, d2, host);
  assert.deepEqual([...d2], [0xff, 0xff]);
  const d8 = new Uint8Array(8);
  dev.mmioRead(UPCALL_BASE, d8, host);
  assert.deepEqual([...d8], new Array(8).fill(0xff));
  const d4 = new Uint8Array(4);
  dev.mmioRead(UPCALL_BASE + 2n, d4, host);
  assert.deepEqual([...d4], [0xff, 0xff, 0xff, 0xff]);
  assert.equal(upcall.counters.badSize, 3);
  assert.equal(read(0x60), 0xffffffff); // unassigned register
  assert.equal(read(0x7fc), 0xffffffff);
  dev.mmioRead(UPCALL_BASE + 0x1000n, d4, host); // outside the page
  dev.mmioRead(UPCALL_BASE - 4n, d4, host);
  assert.equal(upcall.counters.badOffset, 4);
  dev.mmioWrite(UPCALL_BASE + BigInt(UPCALL_REG.IRQ_VECTOR), new Uint8Array([0x40]), host); // 1-byte write
  assert.equal(read(UPCALL_REG.IRQ_VECTOR), 0);
  write(UPCALL_REG.MAGIC, 0);
  write(UPCALL_WINDOW_OFFSET, 0);
  write(UPCALL_REG.FEATURES, 0);
  write(UPCALL_REG.COPY_STATUS, 5);
  write(UPCALL_REG.HOST_CPUS, 9);
  assert.equal(read(UPCALL_REG.MAGIC), UPCALL_MAGIC);
  assert.equal(read(UPCALL_REG.FEATURES), UPCALL_FEATURE.COPY);
  assert.equal(read(UPCALL_REG.COPY_STATUS), 0);
  assert.equal(upcall.counters.readOnlyWrites, 5);
  assert.equal(upcall.counters.badSize, 4);
});

test('a throwing raiseIrq is counted, not propagated', async () => {
  const { upcall, write } = setup({ raiseIrq: () => { throw new Error('no irqchip'); } });
  write(UPCALL_REG.IRQ_VECTOR, 0x30);
  const p = upcall.deliver(new Uint8Array(4), 0);
  assert.equal(upcall.counters.irqErrors, 1);
  write(UPCALL_REG.ACK, 1);
  assert.equal((await p).status, 0);
});

test('fuzz: 100,000 random accesses never throw, never corrupt a delivery, and COPY never writes outside RAM', async () => {
  let x = 0x9e3779b9;
  const rnd = (): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  const { dev, upcall, read, state, ramWrites } = setup({ vcpus: 2, policy: { pinning: true, allowedCpus: [0, 3, 6] } });
  state.publishTid(0, 100);
  state.publishTid(1, 101);
  const regOffsets = [...Object.values(UPCALL_REG), 0x60, 0x7fc];
  const program = randomProgram(3000, 99);
  let settled: LoadStatus | undefined;
  let deliveries = 0;
  let completed = 0;
  let pending: Promise<LoadStatus> | undefined;
  const start = (): void => {
    deliveries++;
    settled = undefined;
    pending = upcall.deliver(program, 7);
    pending.then(
      (s) => {
        settled = s;
        completed++;
      },
      () => {},
    );
  };
  start();
  let seq = read(UPCALL_REG.COMMAND_SEQ);
  const sizes = [1, 2, 3, 4, 4, 4, 8, 0];
  const host = new FakeHost(1);
  for (let i = 0; i < 100_000; i++) {
    const r = rnd();
    // Offsets: registers (sometimes misaligned), anywhere in the page, just outside it.
    const sel = r & 7;
    const skew = (r >>> 3) & 1 ? rnd() % 4 : 0;
    const off =
      sel < 3 ? regOffsets[rnd() % regOffsets.length]! + skew
      : sel < 6 ? (rnd() % 0x1000) & ~(skew ? 0 : 3)
      : sel === 6 ? 0x1000 + (rnd() % 64)
      : -(rnd() % 64) - 1;
    const addr = UPCALL_BASE + BigInt(off);
    const size = sizes[(r >>> 4) & 7]!;
    const data = new Uint8Array(size);
    const valSel = (r >>> 7) & 3;
    // The COPY buffer registers mostly get values that matter: inside RAM or just past its end,
    // a high half of 0 or all ones (2^64 wraparound), around the program's length; COPY the seq.
    const near = (r >>> 11) & 3;
    const value =
      near && off === UPCALL_REG.COPY_ADDR_LO ? rnd() % (ram.size + 0x4000)
      : near && off === UPCALL_REG.COPY_ADDR_HI ? ((r >>> 13) & 3 ? 0 : 0xffffffff)
      : near && off === UPCALL_REG.COPY_LEN ? program.length - 4 + (rnd() % 8)
      : near && off === UPCALL_REG.COPY ? seq
      : valSel === 0 ? rnd() & 0xff : valSel === 1 ? seq + ((r >>> 9) & 1) : rnd();
    for (let b = 0; b < size; b++) data[b] = (value >>> (8 * (b & 3))) & 0xff;
    if ((r >>> 10) & 1) {
      const copies = ramWrites.length;
      assert.doesNotThrow(() => dev.mmioWrite(addr, data, host));
      // A COPY that wrote put exactly the program where COPY_ADDR says.
      if (ramWrites.length > copies) {
        const [at, len] = ramWrites.at(-1)!;
        assert.equal(len, program.length);
        assert.equal(at, (BigInt(read(UPCALL_REG.COPY_ADDR_HI)) << 32n) | BigInt(read(UPCALL_REG.COPY_ADDR_LO)));
        assert.deepEqual(ram.read(at, len), program);
        assert.equal(read(UPCALL_REG.COPY_STATUS), len);
      }
    } else {
      data.fill(0x5a);
      assert.doesNotThrow(() => dev.mmioRead(addr, data, host));
    }
    // Invariants, checked through registers (reads of valid registers change nothing).
    assert.equal(read(UPCALL_REG.MAGIC), UPCALL_MAGIC);
    assert.equal(read(UPCALL_REG.VERSION), UPCALL_VERSION);
    const cmd = read(UPCALL_REG.COMMAND);
    if (cmd !== UPCALL_CMD.NONE) {
      assert.equal(cmd, UPCALL_CMD.LOAD_PROGRAM);
      assert.equal(read(UPCALL_REG.COMMAND_ARG), 7);
      assert.equal(read(UPCALL_REG.COMMAND_SEQ), seq);
      assert.equal(read(UPCALL_REG.DATA_LEN), program.length);
      const dataOffset = read(UPCALL_REG.DATA_OFFSET);
      assert.equal(dataOffset & 3, 0);
      const k = (rnd() % UPCALL_WINDOW_SIZE) & ~3;
      let expect = 0;
      for (let b = 0; b < 4; b++) {
        const j = dataOffset + k + b;
        if (j < program.length) expect |= program[j]! << (8 * b);
      }
      assert.equal(read(UPCALL_WINDOW_OFFSET + k), expect >>> 0);
    } else {
      // Only an aligned 4-byte ACK of the current sequence number completes a command.
      assert.equal(upcall.pendingCommands, 0);
      await new Promise((res) => setImmediate(res));
      assert.ok(settled, 'the command disappeared without its promise resolving');
      assert.equal(settled.seq, seq);
      start();
      const next = read(UPCALL_REG.COMMAND_SEQ);
      assert.equal(next, seq + 1);
      seq = next;
    }
    const v = read(UPCALL_REG.IRQ_VECTOR);
    assert.ok(v === 0 || (v >= 0x20 && v <= 0xef));
  }
  assert.ok(completed > 10, `only ${completed} deliveries completed`);
  const c = upcall.counters;
  assert.ok(c.badSize > 0 && c.badOffset > 0 && c.readOnlyWrites > 0 && c.staleAcks > 0);
  assert.ok(c.copies > 10 && c.copyErrors > 100, `copies ${c.copies}, refused ${c.copyErrors}`);
  assert.equal(c.copies, ramWrites.length);
  upcall.cancelAll();
  await assert.rejects(pending!, UpcallCancelledError);
  assert.equal(deliveries, completed + 1);
});
