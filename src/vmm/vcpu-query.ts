/** vCPU operations that need the vCPU's own thread while the VM runs (vCPU ioctls wait for KVM_RUN). */
import type { Regs, Sregs, Translation, VcpuFd } from '../kvm/vcpu-fd.js';
import type { VcpuQuery } from './worker-protocol.js';

/** A vCPU's registers. */
export interface VcpuState {
  regs: Regs;
  sregs: Sregs;
}

/** Answers a {@link VcpuQuery} with ioctls on `vcpu`. */
export function answerQuery(vcpu: VcpuFd, query: VcpuQuery): VcpuState | Translation {
  switch (query.kind) {
    case 'state':
      return { regs: vcpu.getRegs(), sregs: vcpu.getSregs() };
    case 'translate':
      return vcpu.translate(query.gva);
  }
}

const CR4_PGE = 1n << 7n;

/**
 * Flushes the vCPU's whole TLB, global entries included, the architectural way: by toggling
 * CR4.PGE (and back, so the guest sees no change). Guest code at CPL3 cannot do this itself.
 */
export function flushTlb(vcpu: VcpuFd): void {
  const sregs = vcpu.getSregs();
  vcpu.setSregs({ ...sregs, cr4: sregs.cr4 ^ CR4_PGE });
  vcpu.setSregs(sregs);
}
