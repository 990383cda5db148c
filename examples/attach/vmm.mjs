// Process 1 of the attach demo: runs the guest as VM "<name>" and reads its "telemetry" channel
// itself, printing "[vmm] ..." lines, until another process attaches (then the VMM pauses its
// reader) and again after that process detaches.
//
// Usage: node examples/attach/vmm.mjs <guest.elf> [name]     (after npm run build)
import { loadImageFile, Vm } from '../../dist/src/index.js';

const [elf, name = 'attach-demo'] = process.argv.slice(2);
if (!elf) {
  console.error('usage: node examples/attach/vmm.mjs <guest.elf> [name]');
  process.exit(2);
}

// interrupts: true lets the guest sleep (KT_HC_WAIT) instead of spinning when its ring is full.
const vm = Vm.create({ name, interrupts: true, console: 'capture' });
vm.on('console', (bytes) => process.stdout.write(`[guest] ${Buffer.from(bytes).toString()}`));
vm.on('channel', (ch) => {
  // The guest opened a channel: the control socket is served from now on (`name`.sock).
  console.log(`[vmm] VM '${name}' (pid ${process.pid}) has channel '${ch.name}'; try: kvmtalk attach ${name} ${ch.name}`);
  ch.on('message', (msg) => console.log(`[vmm] ${ch.name}: ${Buffer.from(msg).toString()}`));
});
const server = () => vm.serveControl();
vm.load(loadImageFile(elf));
process.on('SIGINT', () => vm.stop());
process.on('SIGTERM', () => vm.stop());
const attached = (n) => console.log(`[vmm] another process attached to '${n}': the VMM stops reading it`);
const detached = (n) => console.log(`[vmm] '${n}' is back: the VMM reads it again`);
vm.once('channel', () => {
  server().on('attach', attached);
  server().on('detach', detached);
});
const result = await vm.run();
console.log(`[vmm] VM ended: ${result.kind}${'status' in result ? ` ${result.status}` : ''}`);
vm.close();
process.exitCode = result.kind === 'exit' ? result.status : 1;
