/**
 * `kvmtalk translate <image> <gva...>`: load a guest and follow each GVA to the host-physical
 * page: GVA → GPA (guest page tables, checked against KVM_TRANSLATE) → HVA (memslot) → HPA
 * (pagemap), plus the GPA's walk through an EPT view (a userspace model of an EPT).
 */
import type { Command } from 'commander';
import { translateChain, type TranslationChain } from '../../translate/chain.js';
import { EptView } from '../../translate/ept-view.js';
import { Pagemap } from '../../translate/host-pages.js';
import { chainJson, renderChain } from '../../translate/render.js';
import type { VmResult } from '../../vmm/outcome.js';
import { Vm } from '../../vmm/vm.js';
import { UsageError } from '../errors.js';
import { addImageOptions, loadImageFromOptions, parseGva, parseImageVmOptions, parseIndex, type ImageVmOptionText } from '../options.js';
import { describeResult } from '../run-vm.js';

interface TranslateOptions extends ImageVmOptionText {
  json?: boolean;
  cpu: string;
  runMs?: string;
  ept: boolean;
}

/** When the guest was translated. */
type GuestState = 'loaded' | 'running' | 'ended';

/** Shows EPT-build progress on stderr once building has taken 250 ms; returns the callback and a finisher. */
function progressReporter(): { progress: (done: number, total: number) => void; finish: () => void } {
  const start = performance.now();
  let last = 0;
  let shown = false;
  const tty = process.stderr.isTTY === true;
  return {
    progress(done, total) {
      const now = performance.now();
      if (now - start < 250 || (now - last < (tty ? 100 : 1000) && done < total)) return;
      last = now;
      shown = true;
      const line = `[kvmtalk] building the EPT view: ${Math.floor((100 * done) / total)}% (${done}/${total} guest pages)`;
      process.stderr.write(tty ? `\r${line}` : `${line}\n`);
    },
    finish() {
      if (shown && tty) process.stderr.write('\n');
    },
  };
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Registers `translate`. */
export function registerTranslate(program: Command): void {
  const cmd = program
    .command('translate')
    .description('follow guest virtual addresses to host-physical ones: GVA → GPA → HVA → HPA, with an EPT view of the GPA')
    .argument('<image>', 'guest image file (ELF64 or raw)')
    .argument('<gva...>', 'guest virtual addresses (decimal or 0x hex)')
    .option('--json', 'machine-readable output')
    .option('--cpu <n>', 'vCPU whose page tables (CR3) and paging mode are used', '0');
  addImageOptions(cmd)
    .option('--run-ms <ms>', 'run the guest this long first and translate while it runs (then stop it)')
    .option('--no-ept', 'skip the EPT view (stage 2\')')
    .addHelpText('after', [
      '',
      'Without --run-ms the guest is translated just after loading, before it runs.',
      'The EPT view is a model of an EPT built in userspace from the memslots and /proc/self/pagemap:',
      'KVM\'s own EPT cannot be read from userspace (and PVM hosts use shadow paging, with no EPT).',
      'HPAs need root: without CAP_SYS_ADMIN the kernel hides PFNs, and the output says so.',
    ].join('\n'))
    .action(async (image: string, gvaTexts: string[], o: TranslateOptions) => {
      const gvas = gvaTexts.map(parseGva);
      const opts = parseImageVmOptions(o);
      const cpu = parseIndex(o.cpu, '--cpu', opts.vcpus - 1);
      const runMs = o.runMs === undefined ? undefined : parseIndex(o.runMs, '--run-ms', 3_600_000);
      const { image: loaded, mode } = loadImageFromOptions(image, opts);
      if (gvas.length === 0) throw new UsageError('give at least one GVA');

      const vm = Vm.create({ memory: opts.memory, memoryBacking: opts.memoryBacking, vcpus: opts.vcpus, console: 'capture' });
      // stdout carries the translation; the guest's console goes to stderr.
      vm.on('console', (bytes: Uint8Array) => process.stderr.write(bytes));
      const pagemap = new Pagemap();
      try {
        vm.load(loaded, { mode, cpl: opts.cpl });
        let state: GuestState = 'loaded';
        let run: Promise<VmResult> | undefined;
        let ended: VmResult | undefined;
        if (runMs !== undefined) {
          run = vm.run();
          void run.then((r) => (ended = r));
          await Promise.race([sleep(runMs), run]);
          state = ended ? 'ended' : 'running';
        }
        const chains: TranslationChain[] = [];
        try {
          let ept: EptView | undefined;
          if (o.ept) {
            const reporter = progressReporter();
            ept = EptView.build(vm.memory, pagemap, { progress: reporter.progress });
            reporter.finish();
          }
          for (const gva of gvas) {
            const chain = await translateChain(vm, gva, { cpu, pagemap, ept: ept ?? false });
            if (state === 'running') chain.notes.push('translated while the guest was running: it may change its page tables at any time');
            chains.push(chain);
          }
        } finally {
          if (run && !ended) vm.stop();
        }
        const result = run ? await run : undefined;
        const afterRun = result === undefined ? undefined
          : state === 'ended' ? `the guest ended before ${runMs} ms, so it was translated after it ended: ${describeResult(result)}`
            : `translated while the guest ran, then stopped it: ${describeResult(result)}`;
        if (o.json) {
          const out = {
            image, backing: vm.memory.backing, cpu, state,
            ...(result ? { run: { ms: runMs, kind: result.kind, status: result.status, description: describeResult(result) } } : {}),
            translations: chains.map(chainJson),
          };
          process.stdout.write(JSON.stringify(out, null, 2) + '\n');
        } else {
          process.stdout.write(chains.map(renderChain).join('\n'));
        }
        if (afterRun) process.stderr.write(`[kvmtalk] ${afterRun}\n`);
      } finally {
        pagemap.close();
        vm.close();
      }
    });
}
