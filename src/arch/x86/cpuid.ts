/** Per-vCPU CPUID: KVM's supported leaves with this vCPU's APIC ids filled in. */
import type { CpuidEntry } from '../../kvm/kvm.js';

/** A copy of `supported` with leaf 1's initial APIC id and leaves 0xB/0x1F x2APIC ids set to `cpu`. */
export function cpuidForVcpu(supported: readonly CpuidEntry[], cpu: number): CpuidEntry[] {
  return supported.map((e) => {
    if (e.function === 1) return { ...e, ebx: ((e.ebx & 0x00ffffff) | (cpu << 24)) >>> 0 };
    if (e.function === 0xb || e.function === 0x1f) return { ...e, edx: cpu };
    return { ...e };
  });
}
