/**
 * Host→guest interrupts through KVM's in-kernel irqchip: the one-time setup that lets a guest
 * take interrupts without running any CPL0 code, MSIs on demand, and irqfds (eventfds that raise
 * an MSI in the kernel). The guest side is `guest/sdk/include/kvmtalk/irq.h`; the contract is the
 * "Interrupts" section of docs/guest-abi.md.
 */
import { IRQCHIP_IOAPIC, IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE, MP_STATE } from '../kvm/ioctls.js';
import { kvm_pic_state, offsetOf } from '../kvm/structs.js';
import * as sys from '../kvm/sys.js';
import type { VcpuFd } from '../kvm/vcpu-fd.js';
import type { GsiRoute, VmFd } from '../kvm/vm-fd.js';

/** Local APIC facts (xAPIC mode, as KVM resets it). */
export const LAPIC = {
  /** Guest-physical base of every vCPU's LAPIC page (the identity map makes it a pointer too). */
  BASE: 0xfee00000,
  /** APIC ID register; the id is in bits 24–31. */
  ID: 0x20,
  /** End-of-interrupt register: the guest writes 0 here when a handler is done. */
  EOI: 0xb0,
  /** Spurious-interrupt vector register: bit 8 software-enables the APIC. */
  SVR: 0xf0,
  SVR_ENABLE: 0x100,
} as const;

/** Vector the LAPIC uses for spurious interrupts (KVM's LAPIC never raises one). */
export const SPURIOUS_VECTOR = 0xff;
/** Vectors the guest may install handlers for and the host may send (docs/guest-abi.md). */
export const FIRST_GUEST_VECTOR = 0x20;
export const LAST_GUEST_VECTOR = 0xef;
/** GSIs 0–23 are the IOAPIC's pins (0–15 also the PICs'); irqfd routes start above them. */
export const FIRST_IRQFD_GSI = 24;
/** KVM_MAX_IRQ_ROUTES on x86. */
const MAX_GSI = 4095;

const MSI_ADDRESS_BASE = 0xfee00000;
const PIC_IMR = offsetOf(kvm_pic_state, 'imr');

/** The error every interrupt API throws on a VM created without them. */
export class InterruptsDisabledError extends Error {
  constructor(what: string) {
    super(`${what} needs an in-kernel irqchip: create the VM with interrupts: true`);
    this.name = 'InterruptsDisabledError';
  }
}

/**
 * The routes KVM installs with KVM_CREATE_IRQCHIP (arch/x86/kvm/irq_comm.c `default_routing`):
 * GSI 0–23 to the IOAPIC pin of the same number, and GSI 0–15 also to the PICs. KVM_SET_GSI_ROUTING
 * replaces the whole table, so every update has to include these again.
 */
export function defaultRoutes(): GsiRoute[] {
  const routes: GsiRoute[] = [];
  for (let gsi = 0; gsi < 24; gsi++) {
    routes.push({ gsi, type: 'irqchip', irqchip: IRQCHIP_IOAPIC, pin: gsi });
    if (gsi < 16) routes.push({ gsi, type: 'irqchip', irqchip: gsi < 8 ? IRQCHIP_PIC_MASTER : IRQCHIP_PIC_SLAVE, pin: gsi % 8 });
  }
  return routes;
}

/**
 * The MSI that delivers `vector` to the LAPIC with id `apicId`: physical destination mode,
 * no redirection hint (address bits 2, 3 clear), fixed delivery, edge-triggered (data bits 8–15 clear).
 */
export function msiMessage(vector: number, apicId: number): { addressLo: number; addressHi: number; data: number } {
  return { addressLo: (MSI_ADDRESS_BASE | ((apicId & 0xff) << 12)) >>> 0, addressHi: 0, data: vector & 0xff };
}

function checkVector(vector: number): void {
  if (!Number.isInteger(vector) || vector < FIRST_GUEST_VECTOR || vector > LAST_GUEST_VECTOR) {
    throw new RangeError(`interrupt vector must be 0x${FIRST_GUEST_VECTOR.toString(16)}–0x${LAST_GUEST_VECTOR.toString(16)}, got ${vector}`);
  }
}

/**
 * Creates the in-kernel irqchip (PIC, IOAPIC, LAPICs) and masks every line of both 8259 PICs, so
 * nothing legacy reaches the guest. Must run before the first vCPU is created. The guest could
 * mask the PICs itself (OUT 0xff to 0x21/0xa1), but doing it here means it runs no setup code.
 */
export function createIrqchip(vm: VmFd): void {
  vm.createIrqchip();
  for (const chip of [IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE]) {
    const state = vm.getIrqchip(chip);
    state[PIC_IMR] = 0xff;
    vm.setIrqchip(chip, state);
  }
}

/**
 * Readies a vCPU of a VM with an in-kernel irqchip: software-enables its LAPIC (SVR bit 8,
 * spurious vector 0xff) and makes it runnable. KVM resets the APIC hardware-enabled but
 * software-disabled, and a disabled APIC accepts no fixed interrupts; the guest could only set
 * the SVR through LAPIC MMIO, so the VMM does it up front. And with an in-kernel LAPIC, every vCPU
 * but the first starts as an x86 application processor waiting for INIT/SIPI (KVM_RUN would block
 * forever); kvmtalk starts all vCPUs itself, so they are made runnable (KVM_SET_MP_STATE).
 * @returns the LAPIC's APIC id (MSI destination)
 */
export function readyVcpu(vcpu: VcpuFd): number {
  const regs = vcpu.getLapic();
  const dv = new DataView(regs.buffer, regs.byteOffset, regs.byteLength);
  dv.setUint32(LAPIC.SVR, (dv.getUint32(LAPIC.SVR, true) & ~0x1ff) | LAPIC.SVR_ENABLE | SPURIOUS_VECTOR, true);
  vcpu.setLapic(regs);
  vcpu.setMpState(MP_STATE.RUNNABLE);
  return dv.getUint32(LAPIC.ID, true) >>> 24;
}

/**
 * An eventfd wired to one vCPU and vector with KVM_IRQFD: every {@link signal} raises the MSI in
 * the kernel, without a userspace exit or a vCPU kick. Create with `Vm.createIrqfd`.
 */
export class Irqfd {
  private closed = false;

  /** @internal */
  constructor(
    /** The eventfd; any thread of this process may signal it (see {@link Irqfd.signalFd}). */
    readonly fd: number,
    /** The GSI KVM routes to the MSI. */
    readonly gsi: number,
    /** The vector it delivers. */
    readonly vector: number,
    /** The target vCPU's index. */
    readonly cpu: number,
    private readonly release: (irqfd: Irqfd) => void,
  ) {}

  /**
   * Raises the interrupt: writes a u64 1 to the eventfd. Signals that arrive before the guest
   * takes the interrupt coalesce into one (an edge MSI sets one IRR bit), so count work in shared
   * memory, not in interrupts.
   */
  signal(): void {
    if (this.closed) throw new Error(`irqfd for GSI ${this.gsi} is closed`);
    sys.eventfdSignal(this.fd);
  }

  /** Signals an irqfd by its fd number, e.g. from a worker_thread that was handed `irqfd.fd`. */
  static signalFd(fd: number): void {
    sys.eventfdSignal(fd);
  }

  /** Detaches the eventfd from KVM (KVM_IRQFD deassign), frees the GSI and closes the eventfd. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.release(this);
  }
}

/** The interrupt state of one VM: APIC ids, the GSI routing table and the live irqfds. */
export class Interrupts {
  private readonly msiRoutes = new Map<number, GsiRoute>();
  private readonly irqfds = new Set<Irqfd>();

  constructor(
    private readonly vm: VmFd,
    /** APIC id of each vCPU, by index. */
    private readonly apicIds: readonly number[],
  ) {}

  private apicId(cpu: number): number {
    const id = this.apicIds[cpu];
    if (id === undefined) throw new RangeError(`no vCPU ${cpu} (this VM has ${this.apicIds.length})`);
    return id;
  }

  /** KVM_SIGNAL_MSI of `vector` to vCPU `cpu`. Returns whether the LAPIC accepted it. */
  signalMsi(vector: number, cpu: number): boolean {
    checkVector(vector);
    const m = msiMessage(vector, this.apicId(cpu));
    return this.vm.signalMsi(m.addressLo, m.addressHi, m.data) > 0;
  }

  /** A new {@link Irqfd} for `vector` on vCPU `cpu`: allocates a GSI, routes it to the MSI, assigns an eventfd. */
  createIrqfd(vector: number, cpu: number): Irqfd {
    checkVector(vector);
    const m = msiMessage(vector, this.apicId(cpu));
    let gsi = FIRST_IRQFD_GSI;
    while (this.msiRoutes.has(gsi)) gsi++;
    if (gsi > MAX_GSI) throw new RangeError(`no free GSI: at most ${MAX_GSI - FIRST_IRQFD_GSI + 1} irqfds per VM`);
    this.msiRoutes.set(gsi, { gsi, type: 'msi', ...m });
    const fd = sys.eventfd();
    try {
      this.program();
      this.vm.irqfd(fd, gsi);
    } catch (e) {
      sys.close(fd);
      this.msiRoutes.delete(gsi);
      this.program();
      throw e;
    }
    const irqfd = new Irqfd(fd, gsi, vector, cpu, (i) => this.release(i));
    this.irqfds.add(irqfd);
    return irqfd;
  }

  /** Closes every irqfd still open (the VM is going away). */
  close(): void {
    for (const i of [...this.irqfds]) i.close();
  }

  private release(irqfd: Irqfd): void {
    this.irqfds.delete(irqfd);
    try {
      this.vm.irqfd(irqfd.fd, irqfd.gsi, true);
      this.msiRoutes.delete(irqfd.gsi);
      this.program();
    } finally {
      sys.close(irqfd.fd);
    }
  }

  /** KVM_SET_GSI_ROUTING replaces the whole table: the defaults plus every live MSI route. */
  private program(): void {
    this.vm.setGsiRouting([...defaultRoutes(), ...this.msiRoutes.values()]);
  }
}
