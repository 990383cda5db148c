/** `kvmtalk info`: what this host's KVM offers kvmtalk, with the two behaviours that matter measured. */
import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { CAP } from '../../kvm/ioctls.js';
import { Kvm } from '../../kvm/kvm.js';
import { probeCpl0, probeVmcall } from '../../vmm/host-probe.js';

/** Capabilities kvmtalk uses or reports, and why. */
const CAPS: [keyof typeof CAP, string][] = [
  ['SYNC_REGS', 'registers in kvm_run: no GET/SET_REGS per exit'],
  ['IMMEDIATE_EXIT', 'stopping vCPUs'],
  ['MAX_VCPUS', 'vCPUs per VM'],
  ['NR_MEMSLOTS', 'memory slots'],
  ['IRQCHIP', 'in-kernel LAPIC/IOAPIC'],
  ['IRQFD', 'interrupts from an eventfd'],
  ['IOEVENTFD', 'doorbells without a userspace exit'],
  ['SIGNAL_MSI', 'MSI injection'],
  ['BINARY_STATS_FD', 'KVM statistics (--stats)'],
  ['XEN_HVM', 'VMCALL interception (bit 1)'],
  ['EXIT_HYPERCALL', 'hypercalls KVM forwards (bitmask)'],
  ['X86_USER_SPACE_MSR', 'MSR exits'],
  ['DIRTY_LOG_RING', 'dirty ring'],
  ['MANUAL_DIRTY_LOG_PROTECT2', 'manual dirty-log protect'],
  ['X86_DISABLE_EXITS', 'HLT/PAUSE passthrough'],
  ['GUEST_MEMFD', 'guest_memfd'],
];

function cpuModel(): string {
  try {
    return /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

export function registerInfo(program: Command): void {
  program
    .command('info')
    .description('describe this host\'s KVM: API version, capabilities, and measured VMCALL and CPL0 behaviour')
    .option('--json', 'machine-readable output')
    .action(async (o: { json?: boolean }) => {
      const kvm = Kvm.open();
      const apiVersion = kvm.apiVersion();
      const capabilities = Object.fromEntries(CAPS.map(([name]) => [name, kvm.checkExtension(CAP[name])]));
      const hypervisorFlag = /\bhypervisor\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));
      kvm.close();
      const vmcall = await probeVmcall();
      const cpl0 = await probeCpl0();
      const info = {
        api_version: apiVersion,
        cpu: cpuModel(),
        host_is_a_guest: hypervisorFlag,
        capabilities,
        vmcall_transport: vmcall.reachesUserspace,
        vmcall,
        cpl0_emulated: cpl0.emulated,
        cpl0,
        hypercall_transport: vmcall.reachesUserspace ? 'port 0xe0 and VMCALL' : 'port 0xe0',
      };
      if (o.json) {
        process.stdout.write(JSON.stringify(info, null, 2) + '\n');
        return;
      }
      const out = [
        `KVM API version ${apiVersion} on ${info.cpu}${hypervisorFlag ? ' (this host is itself a VM: nested KVM)' : ''}`,
        'capabilities:',
        ...CAPS.map(([name, why]) => `  ${name.padEnd(26)} ${String(capabilities[name]).padStart(6)}  ${why}`),
        `VMCALL reaches userspace: ${vmcall.reachesUserspace ? 'yes' : 'no'} (measured with a CPL3 VMCALL: ${vmcall.explanation}${Number.isNaN(vmcall.rax) ? '' : `; RAX=${vmcall.rax}`})`,
        `CPL0 emulated: ${cpl0.emulated ? 'yes' : 'no'} (measured: ${cpl0.cpl0NsPerInsn.toFixed(0)} ns/instruction at CPL0 vs ${cpl0.cpl3NsPerInsn.toFixed(2)} ns at CPL3; ` +
          `KVM emulated ${Number.isNaN(cpl0.emulatedFraction) ? '?' : cpl0.emulatedFraction.toFixed(2)} instructions per CPL0 instruction)`,
        `hypercall transport: ${info.hypercall_transport}`,
      ];
      process.stdout.write(out.join('\n') + '\n');
    });
}
