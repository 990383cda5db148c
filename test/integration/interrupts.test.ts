/**
 * Host→guest interrupts (Vm.create({ interrupts: true })): MSIs, irqfds signalled from the main
 * thread and from another worker_thread, KT_HC_WAIT sleeping and waking, stop() and queries while
 * a vCPU sleeps, multi-vCPU routing, and what happens without a handler or without interrupts.
 * The guest is test/fixtures/guests/irq-wait.c.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { Worker } from 'node:worker_threads';
import { IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE, MP_STATE } from '../../src/kvm/ioctls.js';
import { Kvm } from '../../src/kvm/kvm.js';
import { statValue } from '../../src/kvm/stats.js';
import { kvm_pic_state, offsetOf } from '../../src/kvm/structs.js';
import { createIrqchip, LAPIC, readyVcpu } from '../../src/vmm/interrupts.js';
import { CRASH_STATUS, STOPPED_STATUS } from '../../src/vmm/outcome.js';
import { Vm } from '../../src/vmm/vm.js';
import { loadImageFile } from '../../src/loader/image.js';
import { bootGuest, fixtureGuest, requireKvm, waitFor } from '../helpers/kvm.js';

const VECTOR = 0x40;
const CFG_STAMP = 1 << 16;
const CFG_POLL = 1 << 17;
const CFG_HOST_WRITES = 1 << 18;

/** What the guest's vCPUs are told by hypercall 256 (see irq-wait.c), and where their counters are. */
interface Guest {
  /** GPA of each ready vCPU's interrupt counter, by vCPU. */
  counters: Map<number, bigint>;
}

/** Hooks irq-wait.c up: `config[cpu]` answers hypercall 256, ready vCPUs land in `counters`. */
function irqWaitSetup(guest: Guest, config: number[]) {
  return (vm: Vm) => {
    vm.handleHypercall(256, (c) => config[Number(c.a0)] ?? 0);
    vm.on('value', (p: { cpu: number; value: bigint }) => guest.counters.set(p.cpu, p.value));
  };
}

/**
 * Sends `n` interrupts with `send`, each only after the guest has counted the previous one: an
 * edge MSI that arrives while the same vector is still pending coalesces with it.
 */
async function pace(vm: Vm, counter: bigint, n: number, send: (i: number) => void | Promise<void>): Promise<void> {
  for (let i = 1; i <= n; i++) {
    await send(i);
    await waitFor(() => vm.memory.readU32(counter) >= i, 5000, `interrupt ${i} of ${n} to be counted`);
  }
}

async function ready(guest: Guest, cpu = 0): Promise<bigint> {
  await waitFor(() => guest.counters.has(cpu), 10_000, `vCPU ${cpu} to install its handler`);
  return guest.counters.get(cpu)!;
}

const N = 20;

function assertGotAll(r: Awaited<ReturnType<typeof bootGuest>>, cpu = 0, n = N): void {
  assert.equal(r.console, `irq-wait: cpu ${cpu} got ${n} interrupts\n`);
  assert.deepEqual(r.result, { kind: 'exit', status: 0, cpu });
}

test('signalMsi: N interrupts wake the guest from KT_HC_WAIT; the vCPU really slept in KVM', async (t) => {
  if (!requireKvm(t)) return;
  const guest: Guest = { counters: new Map() };
  const r = await bootGuest('fixtures', 'irq-wait', { interrupts: true }, {}, {
    setup: irqWaitSetup(guest, [N]),
    during: async (vm) => {
      const counter = await ready(guest);
      await pace(vm, counter, N, () => assert.equal(vm.signalMsi(VECTOR), true));
    },
  });
  assertGotAll(r);
  // Each wait that found the word unchanged halted the vCPU inside KVM_RUN (no exit, no spin).
  const vcpu = r.stats!.kvm!.vcpus[0];
  assert.ok(statValue(vcpu, 'halt_wakeup') >= 1n, `halt_wakeup = ${statValue(vcpu, 'halt_wakeup')}`);
});

test('an Irqfd signalled from the main thread interrupts the guest', async (t) => {
  if (!requireKvm(t)) return;
  const guest: Guest = { counters: new Map() };
  let gsi = -1;
  const r = await bootGuest('fixtures', 'irq-wait', { interrupts: true }, {}, {
    setup: irqWaitSetup(guest, [N]),
    during: async (vm) => {
      const irqfd = vm.createIrqfd(VECTOR);
      gsi = irqfd.gsi;
      const counter = await ready(guest);
      await pace(vm, counter, N, () => irqfd.signal());
      irqfd.close();
      assert.throws(() => irqfd.signal(), /closed/);
    },
  });
  assert.equal(gsi, 24, 'the first irqfd gets the first GSI above the IOAPIC pins');
  assertGotAll(r);
});

test('an Irqfd signalled from another worker_thread (by fd number) interrupts the guest', async (t) => {
  if (!requireKvm(t)) return;
  const guest: Guest = { counters: new Map() };
  let worker: Worker | undefined;
  try {
    const r = await bootGuest('fixtures', 'irq-wait', { interrupts: true }, {}, {
      setup: irqWaitSetup(guest, [N]),
      during: async (vm) => {
        const irqfd = vm.createIrqfd(VECTOR);
        const w = new Worker(new URL('../fixtures/irqfd-signaller.js', import.meta.url), { workerData: { fd: irqfd.fd } });
        worker = w;
        const counter = await ready(guest);
        await pace(vm, counter, N, () => new Promise<void>((resolve, reject) => {
          w.once('message', () => resolve());
          w.once('error', reject);
          w.postMessage('signal');
        }));
      },
    });
    assertGotAll(r);
  } finally {
    await worker?.terminate();
  }
});

test('2 vCPUs: an MSI and an irqfd for vCPU 1 reach vCPU 1 only', async (t) => {
  if (!requireKvm(t)) return;
  const guest: Guest = { counters: new Map() };
  const r = await bootGuest('fixtures', 'irq-wait', { interrupts: true, vcpus: 2 }, {}, {
    // vCPU 0 expects nothing and sleeps in KT_HC_WAIT: an interrupt reaching it is flagged.
    setup: irqWaitSetup(guest, [0, N]),
    during: async (vm) => {
      const counter = await ready(guest, 1);
      const irqfd = vm.createIrqfd(VECTOR, 1);
      await pace(vm, counter, N, (i) => (i % 2 ? assert.equal(vm.signalMsi(VECTOR, 1), true) : irqfd.signal()));
    },
  });
  assertGotAll(r, 1);
});

test('no lost wakeups: the host writes the word, then signals, at random moments', async (t) => {
  if (!requireKvm(t)) return;
  const guest: Guest = { counters: new Map() };
  const n = 300;
  const r = await bootGuest('fixtures', 'irq-wait', { interrupts: true }, {}, {
    setup: irqWaitSetup(guest, [n | CFG_HOST_WRITES]),
    during: async (vm) => {
      const counter = await ready(guest);
      // The guest reads the word, then asks KT_HC_WAIT to sleep unless it changed. Each update
      // lands anywhere in that sequence (several may coalesce into one interrupt); if the VMM's
      // check-then-halt could miss one, the guest would sleep forever on a stale value.
      for (let i = 1; i <= n; i++) {
        vm.memory.writeU32(counter, i);
        vm.signalMsi(VECTOR);
        if (Math.random() < 0.5) await new Promise((resolve) => setImmediate(resolve));
        else if (Math.random() < 0.2) await new Promise((resolve) => setTimeout(resolve, 1));
      }
    },
  });
  assertGotAll(r, 0, n);
});

test('stop() and a register query while the guest sleeps in KT_HC_WAIT', async (t) => {
  if (!requireKvm(t)) return;
  const guest: Guest = { counters: new Map() };
  let stoppedAt = 0;
  let queryMs = -1;
  const r = await bootGuest('fixtures', 'irq-wait', { interrupts: true }, {}, {
    setup: irqWaitSetup(guest, [1]),
    during: async (vm, run) => {
      const counter = await ready(guest);
      await new Promise((resolve) => setTimeout(resolve, 100));
      // A query kicks the halted vCPU out of KVM_RUN; it answers and goes back to sleep.
      const start = performance.now();
      const state = await vm.vcpuState(0);
      queryMs = performance.now() - start;
      assert.equal(state.regs.rax, 0n, 'KT_HC_WAIT has returned 0 into RAX (delivered when the vCPU wakes)');
      assert.equal(vm.memory.readU32(counter), 0);
      await new Promise((resolve) => setTimeout(resolve, 50));
      stoppedAt = performance.now();
      vm.stop();
      await run;
    },
  });
  assert.ok(queryMs >= 0 && queryMs < 3000, `query took ${queryMs} ms`);
  assert.ok(performance.now() - stoppedAt < 3000, 'stop() took too long');
  assert.deepEqual(r.result, { kind: 'stopped', status: STOPPED_STATUS });
  assert.equal(r.console, '', 'the guest never got past its wait');
});

test('KT_HC_WAIT without interrupts returns -KT_EOPNOTSUPP (-95)', async (t) => {
  if (!requireKvm(t)) return;
  const guest: Guest = { counters: new Map() };
  const r = await bootGuest('fixtures', 'irq-wait', {}, {}, { setup: irqWaitSetup(guest, [1]) });
  assert.equal(r.console, 'irq-wait: kt_wait returned -95\n');
  assert.deepEqual(r.result, { kind: 'exit', status: 2, cpu: 0 });
});

test('an interrupt for a vector with no handler ends the VM with an "unexpected interrupt" report', async (t) => {
  if (!requireKvm(t)) return;
  const guest: Guest = { counters: new Map() };
  const r = await bootGuest('fixtures', 'irq-wait', { interrupts: true }, {}, {
    setup: irqWaitSetup(guest, [1]),
    during: async (vm) => {
      await ready(guest);
      vm.signalMsi(0x41);
    },
  });
  assert.equal(r.result.kind, 'crash');
  if (r.result.kind !== 'crash') return;
  assert.equal(r.result.status, CRASH_STATUS);
  assert.equal(r.result.report.vector, 0x41);
  assert.match(r.result.report.summary, /unexpected interrupt \(vector 65\)/);
  assert.equal(r.result.report.sregs.cpl, 3, 'the interrupted code ran at CPL3');
});

test('interrupt APIs: clear errors without interrupts, range checks, GSI reuse, IF=1 at entry', async (t) => {
  if (!requireKvm(t)) return;
  const plain = Vm.create({ console: 'capture' });
  try {
    assert.equal(plain.interrupts, false);
    assert.throws(() => plain.signalMsi(VECTOR), /create the VM with interrupts: true/);
    assert.throws(() => plain.createIrqfd(VECTOR), /create the VM with interrupts: true/);
  } finally {
    plain.close();
  }
  const vm = Vm.create({ console: 'capture', interrupts: true, vcpus: 2 });
  try {
    assert.equal(vm.interrupts, true);
    for (const v of [0x1f, 0xf0, 0x100, -1, 1.5]) assert.throws(() => vm.signalMsi(v), RangeError, `vector ${v}`);
    assert.throws(() => vm.signalMsi(VECTOR, 2), /no vCPU 2/);
    assert.throws(() => vm.createIrqfd(VECTOR, 5), /no vCPU 5/);
    const a = vm.createIrqfd(0x20);
    const b = vm.createIrqfd(0xef, 1);
    assert.deepEqual([a.gsi, b.gsi], [24, 25]);
    a.close();
    const c = vm.createIrqfd(0x30);
    assert.equal(c.gsi, 24, 'a closed irqfd frees its GSI');
    // b and c are left open on purpose: close() releases them.
    vm.load(loadImageFile(fixtureGuest('irq-wait')));
    const state = await vm.vcpuState(1);
    assert.equal(state.regs.rflags & 0x200n, 0x200n, 'long-mode guests start with RFLAGS.IF = 1');
  } finally {
    vm.close();
  }
});

test('VMM setup: both PICs masked, LAPICs software-enabled, APs runnable', (t) => {
  if (!requireKvm(t)) return;
  const kvm = Kvm.open();
  const vmFd = kvm.createVm();
  const vcpus = [] as ReturnType<typeof vmFd.createVcpu>[];
  try {
    createIrqchip(vmFd);
    for (const chip of [IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE]) {
      assert.equal(vmFd.getIrqchip(chip)[offsetOf(kvm_pic_state, 'imr')], 0xff, `PIC ${chip} IMR`);
    }
    for (let i = 0; i < 2; i++) {
      const v = vmFd.createVcpu(i, kvm.vcpuMmapSize());
      vcpus.push(v);
      assert.equal(readyVcpu(v), i, 'the APIC id is the vCPU index');
      const svr = new DataView(v.getLapic().buffer).getUint32(LAPIC.SVR, true);
      assert.equal(svr & 0x1ff, 0x1ff, 'SVR: enabled, spurious vector 0xff');
      assert.equal(v.getMpState(), MP_STATE.RUNNABLE);
    }
  } finally {
    vcpus.forEach((v) => v.close());
    vmFd.close();
    kvm.close();
  }
});

/** Median and 90th percentile of samples, in µs. */
function summary(us: number[]): string {
  const s = [...us].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))].toFixed(0);
  return `median ${q(0.5)} µs, p90 ${q(0.9)} µs, min ${s[0].toFixed(0)} µs (n=${s.length})`;
}

/**
 * Interrupt-to-handler latency, printed and not asserted (shared 2-core hosts drift a lot): the
 * host timestamps just before signalling; the handler makes a KT_HC_BENCH_MARK hypercall, whose
 * exit records the guest-side timestamp. So each sample also contains half a hypercall round trip.
 */
async function measure(t: TestContext, what: string, poll: boolean, irqfd: boolean): Promise<void> {
  const guest: Guest = { counters: new Map() };
  const samples: number[] = [];
  const n = 30;
  const r = await bootGuest('fixtures', 'irq-wait', { interrupts: true }, {}, {
    setup: irqWaitSetup(guest, [n | CFG_STAMP | (poll ? CFG_POLL : 0)]),
    during: async (vm) => {
      const counter = await ready(guest);
      const marks = vm.benchMarks();
      const fd = irqfd ? vm.createIrqfd(VECTOR) : undefined;
      await pace(vm, counter, n, async () => {
        // Let the guest settle back into its wait (or polling loop) first.
        await new Promise((resolve) => setTimeout(resolve, 5));
        const before = marks[1];
        const t0 = performance.timeOrigin + performance.now();
        if (fd) fd.signal();
        else vm.signalMsi(VECTOR);
        await waitFor(() => marks[1] !== before, 5000, 'the handler timestamp');
        samples.push((marks[1] - t0) * 1000);
      });
    },
  });
  assertGotAll(r, 0, n);
  t.diagnostic(`interrupt latency, ${what}: ${summary(samples)}`);
}

test('latency (printed): signalMsi to handler, guest asleep in KT_HC_WAIT', async (t) => {
  if (!requireKvm(t)) return;
  await measure(t, 'KVM_SIGNAL_MSI → handler, guest sleeping in KT_HC_WAIT', false, false);
});

test('latency (printed): signalMsi to handler, guest polling', async (t) => {
  if (!requireKvm(t)) return;
  await measure(t, 'KVM_SIGNAL_MSI → handler, guest running (polling)', true, false);
});

test('latency (printed): irqfd to handler, guest asleep in KT_HC_WAIT', async (t) => {
  if (!requireKvm(t)) return;
  await measure(t, 'irqfd → handler, guest sleeping in KT_HC_WAIT', false, true);
});
