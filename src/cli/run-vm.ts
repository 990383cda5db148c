/** Runs a loaded VM from the CLI: stdin, signals, the end-of-run line, and --stats output. */
import { exitReasonName } from '../kvm/exit-reasons.js';
import { formatStats } from '../kvm/stats.js';
import { formatCrashReport, type VmResult } from '../vmm/outcome.js';
import type { Vm } from '../vmm/vm.js';

const CTRL_RIGHT_BRACKET = 0x1d;

/** Connects a TTY stdin to the guest's serial port (Ctrl-] stops the VM), and SIGINT/SIGTERM to stop(). */
function attachHost(vm: Vm): () => void {
  const onSignal = () => vm.stop();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const stdin = process.stdin;
  const interactive = stdin.isTTY === true;
  const onData = (chunk: Buffer) => {
    if (chunk.includes(CTRL_RIGHT_BRACKET)) return vm.stop();
    vm.sendSerialInput(chunk);
  };
  if (interactive) {
    stdin.setRawMode(true);
    stdin.on('data', onData);
    stdin.resume();
  }
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (interactive) {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
    }
  };
}

/** One line (or a crash report) describing how the VM ended, for stderr. */
export function describeResult(r: VmResult): string {
  switch (r.kind) {
    case 'exit':
      return `guest exited with status ${r.status} (vCPU ${r.cpu})`;
    case 'halt':
      return `vCPU ${r.cpu} halted at 0x${r.rip.toString(16)} with nothing to wake it; VM ended`;
    case 'parked':
      return 'every vCPU parked; VM ended';
    case 'stopped':
      return 'VM stopped by the host';
    case 'crash':
      return formatCrashReport(r.report);
    case 'failed':
      return `VMM failure: ${r.message}`;
  }
}

const us = (ns: number) => (Number.isFinite(ns) ? `${(ns / 1000).toFixed(1)} µs` : '-');

/** The --stats block: exits by reason, latency percentiles, and KVM's binary stats. */
export function formatRunStats(vm: Vm): string {
  const st = vm.stats();
  if (!st) return '';
  const lines = ['exits by reason:'];
  st.exits.forEach((n, reason) => n && lines.push(`  ${exitReasonName(reason).padEnd(28)} ${n}`));
  for (const [label, h] of [['time in KVM_RUN per exit', st.inKvm], ['time in the VMM per exit', st.inVmm]] as const) {
    if (!h || h.count === 0) continue;
    lines.push(`${label} (${h.count} samples): p50 ${us(h.percentile(50))}  p90 ${us(h.percentile(90))}  p99 ${us(h.percentile(99))}  max ${us(h.percentile(100))}`);
  }
  if (st.kvm) {
    st.kvm.vcpus.forEach((values, i) => lines.push(`KVM stats, vCPU ${i}:`, indent(formatStats(values, st.kvm!.vcpuStats[i].describe()))));
    lines.push('KVM stats, VM:', indent(formatStats(st.kvm.vm, st.kvm.vmStats.describe())));
  } else {
    lines.push('KVM binary stats: not available (KVM_GET_STATS_FD needs Linux 5.14+)');
  }
  return lines.join('\n');
}

const indent = (text: string) => text.split('\n').map((l) => `  ${l}`).join('\n');

/** Runs `vm` to the end with host I/O attached; prints how it ended; returns the exit status. */
export async function runFromCli(vm: Vm, opts: { stats?: boolean; quietExit?: boolean } = {}): Promise<VmResult> {
  const detach = attachHost(vm);
  let result: VmResult;
  try {
    result = await vm.run();
  } finally {
    detach();
  }
  if (!(opts.quietExit && result.kind === 'exit' && result.status === 0)) process.stderr.write(`[kvmtalk] ${describeResult(result)}\n`);
  if (opts.stats) process.stderr.write(formatRunStats(vm) + '\n');
  return result;
}
