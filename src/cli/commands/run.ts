/** `kvmtalk run <image>`: boot an ELF or raw image. */
import type { Command } from 'commander';
import { Vm } from '../../vmm/vm.js';
import { addImageOptions, loadImageFromOptions, parseImageVmOptions, parseRegAssignments, type ImageVmOptionText } from '../options.js';
import { runFromCli } from '../run-vm.js';

interface RunOptions extends ImageVmOptionText {
  setReg?: string[];
  stats?: boolean;
  upcall?: boolean;
  interrupts?: boolean;
}

export function registerRun(program: Command): void {
  const cmd = program
    .command('run')
    .description('boot a guest image (ELF64 or raw) and run it until it exits, halts or crashes')
    .argument('<image>', 'guest image file');
  addImageOptions(cmd)
    .option('--set-reg <reg=value...>', 'set a register on every vCPU before it starts, e.g. --set-reg rax=2 rbx=2')
    .option('--stats', 'print exit counts, exit-latency percentiles and KVM binary stats at the end')
    .option('--interrupts', 'in-kernel irqchip, so the host can interrupt the guest (docs/guest-abi.md, "Interrupts")')
    .option('--upcall', 'add the upcall device and its endpoint for `kvmtalk inject` (implies --interrupts; docs/upcall-device.md)')
    .addHelpText('after', '\nThe exit status is the guest\'s (debug-exit port or main() return), 125 if it crashed, 143 if stopped.\nInteractive: stdin goes to the guest serial port; Ctrl-] stops the VM.')
    .action(async (image: string, o: RunOptions) => {
      const opts = parseImageVmOptions(o);
      const regs = parseRegAssignments(o.setReg);
      const { image: img, mode } = loadImageFromOptions(image, opts);
      const vm = Vm.create({
        memory: opts.memory, memoryBacking: opts.memoryBacking, vcpus: opts.vcpus, timing: o.stats === true,
        interrupts: o.interrupts === true || o.upcall === true, upcall: o.upcall === true,
      });
      try {
        vm.load(img, { mode, cpl: opts.cpl, regs });
        const result = await runFromCli(vm, { stats: o.stats });
        process.exitCode = result.status;
      } finally {
        vm.close();
      }
    });
}
