/**
 * The KVM system handle (`/dev/kvm`): the first layer of Kvm → VmFd → VcpuFd.
 */
import { CAP, KVM } from './ioctls.js';
import { kvm_cpuid2, kvm_cpuid_entry2, decode, sizeOf } from './structs.js';
import * as sys from './sys.js';
import { VmFd } from './vm-fd.js';

/** One CPUID leaf as KVM reports and accepts it (`struct kvm_cpuid_entry2`). */
export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/** /dev/kvm cannot be used; `reason` is a one-line explanation fit for a user. */
export class KvmUnavailableError extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'KvmUnavailableError';
  }
}

const CPUID_HEADER = sizeOf(kvm_cpuid2);
const CPUID_ENTRY = sizeOf(kvm_cpuid_entry2);

/** Packs CPUID entries into a `struct kvm_cpuid2` buffer. */
export function encodeCpuid(entries: readonly CpuidEntry[]): Uint8Array {
  const buf = new Uint8Array(CPUID_HEADER + entries.length * CPUID_ENTRY);
  const dv = new DataView(buf.buffer);
  dv.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const o = CPUID_HEADER + i * CPUID_ENTRY;
    [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx].forEach((v, k) => dv.setUint32(o + 4 * k, v >>> 0, true));
  });
  return buf;
}

/** An open `/dev/kvm`. */
export class Kvm {
  private constructor(readonly fd: number) {}

  /**
   * Opens /dev/kvm (or `$KVMTALK_KVM`) and checks the API version.
   * @throws {@link KvmUnavailableError} with a readable reason when KVM cannot be used.
   */
  static open(path = process.env.KVMTALK_KVM || '/dev/kvm'): Kvm {
    let fd: number;
    try {
      fd = sys.open(path, sys.O_RDWR);
    } catch (e) {
      const code = e instanceof sys.SysError ? e.code : '';
      if (code === 'ENOENT') throw new KvmUnavailableError(`${path} does not exist: this kernel has no KVM (load kvm_intel/kvm_amd, or enable nested virtualization)`);
      if (code === 'EACCES' || code === 'EPERM') throw new KvmUnavailableError(`${path}: permission denied (add your user to the 'kvm' group or run as root)`);
      throw new KvmUnavailableError(`${path}: ${(e as Error).message}`);
    }
    const kvm = new Kvm(fd);
    const version = kvm.apiVersion();
    if (version !== 12) {
      kvm.close();
      throw new KvmUnavailableError(`${path}: KVM API version ${version}, kvmtalk needs 12`);
    }
    return kvm;
  }

  /** KVM_GET_API_VERSION (always 12 on a usable kernel). */
  apiVersion(): number {
    return sys.ioctl(this.fd, 'KVM_GET_API_VERSION', KVM.GET_API_VERSION);
  }

  /** KVM_CHECK_EXTENSION: 0 when absent, otherwise a capability-specific value. */
  checkExtension(cap: number): number {
    return sys.ioctl(this.fd, 'KVM_CHECK_EXTENSION', KVM.CHECK_EXTENSION, cap);
  }

  /** Size of the per-vCPU `kvm_run` mapping. */
  vcpuMmapSize(): number {
    return sys.ioctl(this.fd, 'KVM_GET_VCPU_MMAP_SIZE', KVM.GET_VCPU_MMAP_SIZE);
  }

  /** The largest vCPU count KVM accepts for one VM. */
  maxVcpus(): number {
    return this.checkExtension(CAP.MAX_VCPUS) || this.checkExtension(CAP.NR_VCPUS) || 4;
  }

  /** KVM_GET_SUPPORTED_CPUID: the leaves KVM can expose to a guest. */
  supportedCpuid(): CpuidEntry[] {
    for (let n = 128; ; n *= 2) {
      const buf = new Uint8Array(CPUID_HEADER + n * CPUID_ENTRY);
      new DataView(buf.buffer).setUint32(0, n, true);
      try {
        sys.ioctlBuf(this.fd, 'KVM_GET_SUPPORTED_CPUID', KVM.GET_SUPPORTED_CPUID, buf);
      } catch (e) {
        if (e instanceof sys.SysError && e.code === 'E2BIG' && n < 4096) continue;
        throw e;
      }
      const count = new DataView(buf.buffer).getUint32(0, true);
      const entries: CpuidEntry[] = [];
      for (let i = 0; i < count; i++) {
        const o = CPUID_HEADER + i * CPUID_ENTRY;
        entries.push(decode<CpuidEntry>(buf.subarray(o, o + CPUID_ENTRY), kvm_cpuid_entry2));
      }
      return entries;
    }
  }

  /** KVM_CREATE_VM. */
  createVm(): VmFd {
    return new VmFd(sys.ioctl(this.fd, 'KVM_CREATE_VM', KVM.CREATE_VM, 0), this);
  }

  close(): void {
    sys.close(this.fd);
  }
}
