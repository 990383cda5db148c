/**
 * kvmtalk's public API. The layers follow rust-vmm's kvm-ioctls (Kvm → VmFd → VcpuFd) under a
 * `Vm` that owns memory, devices and vCPU threads.
 */
export { Vm, type LoadOptions, type RunStats, type VmOptions } from './vmm/vm.js';
export { Irqfd, InterruptsDisabledError } from './vmm/interrupts.js';
export { formatCrashReport, crashReportJson, CRASH_STATUS, STOPPED_STATUS, type CrashReport, type VmResult } from './vmm/outcome.js';
export { HypercallCall, type HypercallHandler, type HypercallModule, type HypercallRegistrar } from './hypercall/registry.js';
export { HC, HC_USER_BASE, KT_ERR } from './hypercall/abi.js';
export { GuestMemory, GuestMemoryError, parseSize } from './memory/guest-memory.js';
export { loadImageFile, type LoadedImage } from './loader/image.js';
export { parseElf, ImageError, type ElfImage } from './loader/elf.js';
export { rawImage } from './loader/raw.js';
export { Kvm, KvmUnavailableError, type CpuidEntry } from './kvm/kvm.js';
export { VmFd } from './kvm/vm-fd.js';
export { VcpuFd, type Regs, type Sregs } from './kvm/vcpu-fd.js';
export { KvmRun, REG } from './kvm/kvm-run.js';
export { KvmStats, formatStats, statValue } from './kvm/stats.js';
export { exitReasonName, EXIT } from './kvm/exit-reasons.js';
export { disassemble } from './vmm/disassemble.js';
export { compileGuest, buildSdk } from './sdk/toolchain.js';
export type { PioDevice, MmioDevice, DeviceHost } from './devices/device.js';
export { translateChain, translateChainSync, type TranslationChain } from './translate/chain.js';
export { renderChain, chainJson } from './translate/render.js';
export { EptView } from './translate/ept-view.js';
export { walk, walkFast, decodeFlags, formatFlags, FastWalker, PageTableBuilder } from './translate/page-walk.js';
export { Pagemap, gpaToHva, translateGpa, type HostPageInfo } from './translate/host-pages.js';
export { attachChannel, type AttachedChannel } from './control/attach.js';
export { listVms, runtimeDirPath } from './control/runtime-dir.js';
export { Ring, RingCorruptedError } from './channel/ring.js';
export { Channel } from './channel/channel.js';
export { UpcallHost, UpcallBusyError, UpcallCancelledError, UpcallTimeoutError, type LoadStatus, type AffinityEvent } from './upcall/upcall-host.js';
export { UpcallClient, UpcallRemoteError } from './upcall/client.js';
export { assemble, AsmError } from './bpf/asm.js';
export { disassemble as disassembleBpf } from './bpf/disasm.js';
export { decodeProgram, encodeProgram, type BpfInsn } from './bpf/isa.js';
export { verify, type VerifyOptions, type VerifyResult } from './bpf/verifier.js';
export { runProgram, BpfInterpreter, BpfRuntimeError } from './bpf/interpreter.js';
export { loadBpfObject, BpfObjectError } from './bpf/elf.js';
export { BPF_HOOKS, GUEST_HELPERS, findHook, type BpfHook } from './bpf/hooks.js';
export { encodeImage, decodeImage, imageFromFile, imageFromAssembly, imageFromObject, verifyImage, BpfImageError, type BpfImage } from './bpf/image.js';
export { readMapDirectory, GuestBpfMap, GuestMapError } from './bpf/guest-maps.js';
