/** `kvmtalk run <image>`: boot an ELF or raw image. */
import type { Command } from 'commander';
import { IMAGE_BASE } from '../../arch/x86/layout.js';
import { loadImageFile } from '../../loader/image.js';
import { MEMORY_BACKINGS } from '../../memory/guest-memory.js';
import { Vm } from '../../vmm/vm.js';
import { parseAddress, parseChoice, parseCount, parseMemory, parseRegAssignments } from '../options.js';
import { runFromCli } from '../run-vm.js';

interface RunOptions {
  format: string;
  mode?: string;
  loadAddr?: string;
  entry?: string;
  setReg?: string[];
  mem: string;
  memoryBacking: string;
  vcpus: string;
  cpl: string;
  stats?: boolean;
}

export function registerRun(program: Command): void {
  program
    .command('run')
    .description('boot a guest image (ELF64 or raw) and run it until it exits, halts or crashes')
    .argument('<image>', 'guest image file')
    .option('--format <fmt>', 'image format: elf, raw or auto', 'auto')
    .option('--mode <mode>', 'long (64-bit, set up by the VMM) or real (16-bit); default: long for ELF, real for raw')
    .option('--load-addr <addr>', 'guest-physical load address of a raw image (default 0x1000 in real mode, 0x400000 in long mode)')
    .option('--entry <addr>', 'entry point (default: the ELF entry, or the raw load address)')
    .option('--set-reg <reg=value...>', 'set a register on every vCPU before it starts, e.g. --set-reg rax=2 rbx=2')
    .option('--mem <size>', 'guest RAM', '64M')
    .option('--memory-backing <kind>', 'host backing of guest RAM: shmem (memfd, 4 KiB pages), thp (transparent 2 MiB pages) or hugetlb (2 MiB pages from the hugetlb pool)', 'shmem')
    .option('--vcpus <n>', 'number of vCPUs', '1')
    .option('--cpl <0|3>', 'long mode: privilege level of guest code', '3')
    .option('--stats', 'print exit counts, exit-latency percentiles and KVM binary stats at the end')
    .addHelpText('after', '\nThe exit status is the guest\'s (debug-exit port or main() return), 125 if it crashed, 143 if stopped.\nInteractive: stdin goes to the guest serial port; Ctrl-] stops the VM.')
    .action(async (image: string, o: RunOptions) => {
      const format = parseChoice(o.format, '--format', ['elf', 'raw', 'auto'] as const);
      const vcpus = parseCount(o.vcpus, '--vcpus', 64);
      const memory = parseMemory(o.mem);
      const memoryBacking = parseChoice(o.memoryBacking, '--memory-backing', MEMORY_BACKINGS);
      const cpl = Number(parseChoice(o.cpl, '--cpl', ['0', '3'] as const)) as 0 | 3;
      const regs = parseRegAssignments(o.setReg);
      const explicitMode = o.mode === undefined ? undefined : parseChoice(o.mode, '--mode', ['long', 'real'] as const);
      // Raw images default to real mode, so the default load address follows the explicit mode only.
      const loadAddr = o.loadAddr !== undefined ? parseAddress(o.loadAddr, '--load-addr') : explicitMode === 'long' ? BigInt(IMAGE_BASE) : 0x1000n;
      const entry = o.entry !== undefined ? parseAddress(o.entry, '--entry') : undefined;
      const img = loadImageFile(image, { format, loadAddr, entry });
      const mode = explicitMode ?? (img.format === 'elf' ? 'long' : 'real');
      const vm = Vm.create({ memory, memoryBacking, vcpus, timing: o.stats === true });
      try {
        vm.load(img, { mode, cpl, regs });
        const result = await runFromCli(vm, { stats: o.stats });
        process.exitCode = result.status;
      } finally {
        vm.close();
      }
    });
}
