/** A KVM VM file descriptor: memory slots, vCPU creation, interrupts and eventfds. */
import { CAP, IRQ_ROUTING_IRQCHIP, IRQ_ROUTING_MSI, IRQFD_FLAG_DEASSIGN, KVM, XEN_HVM_CONFIG_INTERCEPT_HCALL } from './ioctls.js';
import type { Kvm } from './kvm.js';
import {
  encode, kvm_enable_cap, kvm_ioeventfd, kvm_irq_level, kvm_irq_routing, kvm_irq_routing_entry, kvm_irqchip, kvm_irqfd, kvm_msi,
  kvm_userspace_memory_region, kvm_xen_hvm_config, offsetOf, sizeOf,
} from './structs.js';
import * as sys from './sys.js';
import { VcpuFd } from './vcpu-fd.js';

/** One GSI route for {@link VmFd.setGsiRouting}: an in-kernel irqchip pin or an MSI message. */
export type GsiRoute =
  | { gsi: number; type: 'irqchip'; irqchip: number; pin: number }
  | { gsi: number; type: 'msi'; addressLo: number; addressHi: number; data: number };

const ROUTING_HEADER = sizeOf(kvm_irq_routing);
const ROUTING_ENTRY = sizeOf(kvm_irq_routing_entry);
const ROUTE_U = offsetOf(kvm_irq_routing_entry, 'u');
const IRQCHIP_SIZE = sizeOf(kvm_irqchip);
const IRQCHIP_STATE = offsetOf(kvm_irqchip, 'chip');

/** An open VM. */
export class VmFd {
  constructor(
    readonly fd: number,
    readonly kvm: Kvm,
  ) {}

  /** KVM_CHECK_EXTENSION on the VM (some capabilities are per VM). */
  checkExtension(cap: number): number {
    return sys.ioctl(this.fd, 'KVM_CHECK_EXTENSION', KVM.CHECK_EXTENSION, cap);
  }

  /** KVM_SET_USER_MEMORY_REGION: map `size` bytes at host address `hva` to guest-physical `gpa`. */
  setUserMemoryRegion(slot: number, gpa: bigint, size: number, hva: bigint, flags = 0): void {
    const buf = encode(kvm_userspace_memory_region, {
      slot, flags, guest_phys_addr: gpa, memory_size: BigInt(size), userspace_addr: hva,
    });
    sys.ioctlBuf(this.fd, 'KVM_SET_USER_MEMORY_REGION', KVM.SET_USER_MEMORY_REGION, buf);
  }

  /** KVM_CREATE_VCPU with APIC id `id`. */
  createVcpu(id: number, runSize: number): VcpuFd {
    return new VcpuFd(sys.ioctl(this.fd, 'KVM_CREATE_VCPU', KVM.CREATE_VCPU, id), id, runSize);
  }

  /** KVM_SET_TSS_ADDR: three pages KVM needs for real mode on Intel; harmless elsewhere. */
  setTssAddr(gpa: number): void {
    sys.ioctl(this.fd, 'KVM_SET_TSS_ADDR', KVM.SET_TSS_ADDR, gpa);
  }

  /** KVM_SET_IDENTITY_MAP_ADDR: one page KVM needs for real mode on Intel without unrestricted guest. */
  setIdentityMapAddr(gpa: bigint): void {
    const buf = new Uint8Array(8);
    new DataView(buf.buffer).setBigUint64(0, gpa, true);
    sys.ioctlBuf(this.fd, 'KVM_SET_IDENTITY_MAP_ADDR', KVM.SET_IDENTITY_MAP_ADDR, buf);
  }

  /** KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and LAPICs. */
  createIrqchip(): void {
    sys.ioctl(this.fd, 'KVM_CREATE_IRQCHIP', KVM.CREATE_IRQCHIP);
  }

  /** KVM_IRQ_LINE: set an in-kernel irqchip input line. */
  irqLine(irq: number, level: 0 | 1): void {
    sys.ioctlBuf(this.fd, 'KVM_IRQ_LINE', KVM.IRQ_LINE, encode(kvm_irq_level, { irq, level }));
  }

  /** KVM_SIGNAL_MSI: inject a message-signalled interrupt. Returns >0 if delivered. */
  signalMsi(addressLo: number, addressHi: number, data: number): number {
    const buf = encode(kvm_msi, { address_lo: addressLo, address_hi: addressHi, data, flags: 0, devid: 0, pad: new Array(12).fill(0) });
    return sys.ioctlBuf(this.fd, 'KVM_SIGNAL_MSI', KVM.SIGNAL_MSI, buf);
  }

  /**
   * KVM_GET_IRQCHIP of one in-kernel chip (`IRQCHIP_PIC_MASTER`, `_SLAVE`, `_IOAPIC`): a copy of
   * the 512-byte state union `chip`; for a PIC it starts with `struct kvm_pic_state`.
   */
  getIrqchip(chipId: number): Uint8Array {
    const buf = new Uint8Array(IRQCHIP_SIZE);
    new DataView(buf.buffer).setUint32(0, chipId, true);
    sys.ioctlBuf(this.fd, 'KVM_GET_IRQCHIP', KVM.GET_IRQCHIP, buf);
    return buf.slice(IRQCHIP_STATE);
  }

  /** KVM_SET_IRQCHIP: writes back a state union read with {@link getIrqchip}. */
  setIrqchip(chipId: number, state: Uint8Array): void {
    const buf = new Uint8Array(IRQCHIP_SIZE);
    new DataView(buf.buffer).setUint32(0, chipId, true);
    buf.set(state, IRQCHIP_STATE);
    sys.ioctlBuf(this.fd, 'KVM_SET_IRQCHIP', KVM.SET_IRQCHIP, buf);
  }

  /** KVM_SET_GSI_ROUTING: replaces the VM's whole GSI routing table with `routes`. */
  setGsiRouting(routes: readonly GsiRoute[]): void {
    const buf = new Uint8Array(ROUTING_HEADER + routes.length * ROUTING_ENTRY);
    const dv = new DataView(buf.buffer);
    dv.setUint32(0, routes.length, true);
    routes.forEach((r, i) => {
      const o = ROUTING_HEADER + i * ROUTING_ENTRY;
      dv.setUint32(o, r.gsi, true);
      dv.setUint32(o + 4, r.type === 'irqchip' ? IRQ_ROUTING_IRQCHIP : IRQ_ROUTING_MSI, true);
      const words = r.type === 'irqchip' ? [r.irqchip, r.pin] : [r.addressLo, r.addressHi, r.data];
      words.forEach((w, k) => dv.setUint32(o + ROUTE_U + 4 * k, w >>> 0, true));
    });
    sys.ioctlBuf(this.fd, 'KVM_SET_GSI_ROUTING', KVM.SET_GSI_ROUTING, buf);
  }

  /** KVM_IRQFD: signalling `eventfd` raises `gsi` (or, with `deassign`, no longer does). */
  irqfd(eventfd: number, gsi: number, deassign = false): void {
    const buf = encode(kvm_irqfd, { fd: eventfd, gsi, flags: deassign ? IRQFD_FLAG_DEASSIGN : 0, resamplefd: 0, pad: new Array(16).fill(0) });
    sys.ioctlBuf(this.fd, 'KVM_IRQFD', KVM.IRQFD, buf);
  }

  /**
   * KVM_IOEVENTFD: a guest write to `addr` signals `eventfd` in the kernel, with no exit to userspace.
   * @param pio true for an I/O port, false for MMIO
   */
  ioeventfd(opts: { addr: bigint; len: number; eventfd: number; pio: boolean; datamatch?: bigint; deassign?: boolean }): void {
    const flags = (opts.datamatch !== undefined ? 1 : 0) | (opts.pio ? 2 : 0) | (opts.deassign ? 4 : 0);
    const buf = encode(kvm_ioeventfd, {
      datamatch: opts.datamatch ?? 0n, addr: opts.addr, len: opts.len, fd: opts.eventfd, flags, pad: new Array(36).fill(0),
    });
    sys.ioctlBuf(this.fd, 'KVM_IOEVENTFD', KVM.IOEVENTFD, buf);
  }

  /** KVM_ENABLE_CAP on the VM. */
  enableCap(cap: number, args: bigint[] = [], flags = 0): void {
    const a = [...args, 0n, 0n, 0n, 0n].slice(0, 4);
    sys.ioctlBuf(this.fd, 'KVM_ENABLE_CAP', KVM.ENABLE_CAP, encode(kvm_enable_cap, { cap, flags, args: a, pad: new Array(64).fill(0) }));
  }

  /** Whether KVM can send VMCALL to userspace (`KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL`). */
  canInterceptVmcall(): boolean {
    const caps = this.checkExtension(CAP.XEN_HVM);
    return (caps & XEN_HVM_CONFIG_INTERCEPT_HCALL) !== 0;
  }

  /** Routes every VMCALL to userspace as KVM_EXIT_XEN; call only when {@link canInterceptVmcall}. */
  interceptVmcall(): void {
    const buf = encode(kvm_xen_hvm_config, {
      flags: XEN_HVM_CONFIG_INTERCEPT_HCALL, msr: 0, blob_addr_32: 0n, blob_addr_64: 0n,
      blob_size_32: 0, blob_size_64: 0, pad2: new Array(30).fill(0),
    });
    sys.ioctlBuf(this.fd, 'KVM_XEN_HVM_CONFIG', KVM.XEN_HVM_CONFIG, buf);
  }

  /** KVM_GET_STATS_FD for the VM's binary statistics. */
  statsFd(): number {
    return sys.ioctl(this.fd, 'KVM_GET_STATS_FD', KVM.GET_STATS_FD);
  }

  close(): void {
    sys.close(this.fd);
  }
}
