import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import type { DeviceHost } from '../../src/devices/device.js';
import { COM1_BASE, SERIAL_OUTPUT_BUFFER, Serial16550, SerialInput } from '../../src/devices/serial-16550.js';

const host: DeviceHost = {
  cpu: 0,
  exitVm: () => assert.fail('serial must not end the VM'),
  parkVcpu: () => assert.fail('serial must not park'),
  emit: () => undefined,
};

const RBR = COM1_BASE;
const IER = COM1_BASE + 1;
const IIR = COM1_BASE + 2;
const LCR = COM1_BASE + 3;
const MCR = COM1_BASE + 4;
const LSR = COM1_BASE + 5;
const MSR = COM1_BASE + 6;
const SCR = COM1_BASE + 7;

function uart(input?: SerialInput): { dev: Serial16550; chunks: string[] } {
  const chunks: string[] = [];
  const dev = new Serial16550({ output: (b) => chunks.push(Buffer.from(b).toString('latin1')), input });
  return { dev, chunks };
}
const rd = (dev: Serial16550, port: number): number => dev.pioRead(port, 1, host);
const wr = (dev: Serial16550, port: number, v: number): void => dev.pioWrite(port, 1, v, host);
const bytes = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'latin1'));

test('DLAB switches offsets 0/1 between RBR/IER and the divisor latch, preserving both', () => {
  const { dev } = uart();
  wr(dev, IER, 0x05);
  wr(dev, LCR, 0x83);
  wr(dev, RBR, 0x01);
  wr(dev, IER, 0x02);
  assert.equal(rd(dev, RBR), 0x01);
  assert.equal(rd(dev, IER), 0x02);
  wr(dev, LCR, 0x03);
  assert.equal(rd(dev, IER), 0x05, 'IER untouched by DLM write');
  assert.equal(rd(dev, LCR), 0x03);
  wr(dev, LCR, 0x80);
  assert.deepEqual([rd(dev, RBR), rd(dev, IER)], [0x01, 0x02], 'divisor kept across DLAB toggles');
});

test('divisor latch defaults to 9600 baud and a 16-bit read spans DLL and DLM', () => {
  const { dev } = uart();
  wr(dev, LCR, 0x80);
  assert.equal(dev.pioRead(RBR, 2, host), 0x000c);
  dev.pioWrite(RBR, 2, 0x0201, host);
  assert.deepEqual([rd(dev, RBR), rd(dev, IER)], [0x01, 0x02]);
});

test('LCR, SCR, IER and MCR read back (IER and MCR masked to their defined bits)', () => {
  const { dev } = uart();
  wr(dev, LCR, 0x1b);
  wr(dev, SCR, 0xa5);
  wr(dev, IER, 0xff);
  wr(dev, MCR, 0xff);
  assert.equal(rd(dev, LCR), 0x1b);
  assert.equal(rd(dev, SCR), 0xa5);
  assert.equal(rd(dev, IER), 0x0f);
  assert.equal(rd(dev, MCR), 0x1f);
});

test('IIR: 0xC1 idle, FIFO bits follow FCR, THRE interrupt latches and clears on IIR read', () => {
  const { dev } = uart();
  assert.equal(rd(dev, IIR), 0xc1);
  wr(dev, IIR, 0x00);
  assert.equal(rd(dev, IIR), 0x01);
  wr(dev, IIR, 0x07);
  assert.equal(rd(dev, IIR), 0xc1);
  assert.equal(dev.interruptPending(), false);

  wr(dev, IER, 0x02);
  assert.equal(dev.interruptPending(), true);
  assert.equal(rd(dev, IIR), 0xc2);
  assert.equal(dev.interruptPending(), false, 'reading IIR acknowledges THRE');
  assert.equal(rd(dev, IIR), 0xc1);
  wr(dev, RBR, 0x41);
  assert.equal(rd(dev, IIR), 0xc2, 'THR empties again after each write');
  wr(dev, IER, 0x00);
  wr(dev, RBR, 0x41);
  assert.equal(rd(dev, IIR), 0xc1, 'disabled sources are not reported');
});

test('IIR: received data outranks THRE and persists until the data is read', () => {
  const input = new SerialInput();
  const { dev } = uart(input);
  wr(dev, IER, 0x03);
  assert.equal(rd(dev, IIR), 0xc2);
  input.push(bytes('k'));
  assert.equal(rd(dev, IIR), 0xc4);
  assert.equal(rd(dev, IIR), 0xc4, 'not acknowledged by IIR read');
  assert.equal(dev.interruptPending(), true);
  assert.equal(rd(dev, RBR), 0x6b);
  assert.equal(rd(dev, IIR), 0xc1);
  assert.equal(dev.interruptPending(), false);
});

test('LSR: THRE and TEMT always set, DR follows input', () => {
  const input = new SerialInput();
  const { dev } = uart(input);
  assert.equal(rd(dev, LSR), 0x60);
  input.push(bytes('ab'));
  assert.equal(rd(dev, LSR), 0x61);
  assert.equal(rd(dev, RBR), 0x61);
  assert.equal(rd(dev, LSR), 0x61);
  assert.equal(rd(dev, RBR), 0x62);
  assert.equal(rd(dev, LSR), 0x60);
  assert.equal(rd(dev, RBR), 0, 'empty RBR reads 0');
  const { dev: noInput } = uart();
  assert.equal(rd(noInput, LSR), 0x60);
});

test('loopback: THR goes to RBR, not the output, and host input is disconnected', () => {
  const input = new SerialInput();
  input.push(bytes('H'));
  const { dev, chunks } = uart(input);
  wr(dev, MCR, 0x10);
  assert.equal(rd(dev, LSR), 0x60, 'host input not visible in loopback');
  wr(dev, RBR, 0x55);
  wr(dev, RBR, 0x0a);
  assert.equal(rd(dev, LSR), 0x61);
  assert.equal(rd(dev, RBR), 0x55);
  assert.equal(rd(dev, RBR), 0x0a);
  assert.equal(rd(dev, LSR), 0x60);
  dev.flush();
  assert.deepEqual(chunks, [], 'loopback bytes never reach the sink');
  wr(dev, MCR, 0x00);
  assert.equal(rd(dev, RBR), 0x48, 'host input readable again after loopback');
});

test('loopback: 16-byte receive FIFO overruns into LSR.OE, FCR clears it', () => {
  const { dev } = uart();
  wr(dev, MCR, 0x10);
  for (let i = 0; i < 17; i++) wr(dev, RBR, i);
  wr(dev, IER, 0x04);
  assert.equal(rd(dev, IIR), 0xc6, 'receiver line status outranks data');
  assert.equal(rd(dev, LSR), 0x63);
  assert.equal(rd(dev, LSR), 0x61, 'OE clears on read');
  assert.equal(rd(dev, RBR), 0);
  wr(dev, IIR, 0x03);
  assert.equal(rd(dev, LSR), 0x60);
});

test('MSR: loopback maps RTS/DTR/OUT1/OUT2 to CTS/DSR/RI/DCD with delta bits', () => {
  const { dev } = uart();
  assert.equal(rd(dev, MSR), 0xb0, 'connected terminal: CTS, DSR, DCD');
  wr(dev, MCR, 0x1a); // LOOP | OUT2 | RTS: Linux's 8250 loopback probe expects 0x90
  assert.equal(rd(dev, MSR), 0x92, 'DSR dropped: DDSR');
  assert.equal(rd(dev, MSR), 0x90, 'deltas clear on read');
  wr(dev, MCR, 0x1f);
  assert.equal(rd(dev, MSR), 0xf2, 'DSR rose: DDSR; RI rising edge is not TERI');
  wr(dev, IER, 0x08);
  assert.equal(rd(dev, IIR), 0xc1);
  wr(dev, MCR, 0x10);
  assert.equal(rd(dev, IIR), 0xc0, 'modem status interrupt');
  assert.equal(rd(dev, MSR), 0x0f, 'all four deltas, TERI on RI falling edge');
  assert.equal(rd(dev, IIR), 0xc1);
});

test('output is line buffered: newline and 4 KiB flush, partial lines wait', () => {
  const { dev, chunks } = uart();
  for (const b of bytes('hello')) wr(dev, RBR, b);
  assert.deepEqual(chunks, []);
  wr(dev, RBR, 0x0a);
  assert.deepEqual(chunks, ['hello\n']);
  for (let i = 0; i < SERIAL_OUTPUT_BUFFER - 1; i++) wr(dev, RBR, 0x78);
  assert.equal(chunks.length, 1);
  wr(dev, RBR, 0x79);
  assert.equal(chunks.length, 2);
  assert.equal(chunks[1], 'x'.repeat(SERIAL_OUTPUT_BUFFER - 1) + 'y');
  wr(dev, RBR, 0x7a);
  dev.flush();
  dev.flush();
  assert.deepEqual(chunks.slice(2), ['z'], 'flush sends once and never sends empty chunks');
});

test('reading LSR or RBR flushes a pending prompt; other registers do not', () => {
  const { dev, chunks } = uart();
  for (const b of bytes('> ')) wr(dev, RBR, b);
  rd(dev, IIR);
  rd(dev, MSR);
  rd(dev, SCR);
  assert.deepEqual(chunks, []);
  rd(dev, LSR);
  assert.deepEqual(chunks, ['> ']);
  wr(dev, RBR, 0x3f);
  wr(dev, LCR, 0x80);
  rd(dev, RBR); // DLL, not RBR
  assert.deepEqual(chunks, ['> ']);
  wr(dev, LCR, 0x03);
  rd(dev, RBR);
  assert.deepEqual(chunks, ['> ', '?']);
});

test('the sink gets its own copy of the bytes', () => {
  const got: Uint8Array[] = [];
  const dev = new Serial16550({ output: (b) => got.push(b) });
  wr(dev, RBR, 0x61);
  dev.flush();
  wr(dev, RBR, 0x62);
  dev.flush();
  assert.deepEqual(got.map((b) => Array.from(b)), [[0x61], [0x62]]);
});

test('string writes: one sink call through the last newline, the tail stays buffered', () => {
  const { dev, chunks } = uart();
  dev.pioWriteString(RBR, 1, bytes('pre'), host);
  assert.deepEqual(chunks, []);
  dev.pioWriteString(RBR, 1, bytes('fix\nline2\nrest'), host);
  assert.deepEqual(chunks, ['prefix\nline2\n']);
  dev.pioWriteString(RBR, 1, bytes('\n'), host);
  assert.deepEqual(chunks, ['prefix\nline2\n', 'rest\n']);
});

test('string writes: long output without newlines flushes in 4 KiB chunks', () => {
  const { dev, chunks } = uart();
  dev.pioWriteString(RBR, 1, bytes('a'.repeat(10)), host);
  dev.pioWriteString(RBR, 1, bytes('b'.repeat(2 * SERIAL_OUTPUT_BUFFER)), host);
  assert.deepEqual(
    chunks.map((c) => c.length),
    [SERIAL_OUTPUT_BUFFER, SERIAL_OUTPUT_BUFFER],
  );
  assert.equal(chunks[0], 'a'.repeat(10) + 'b'.repeat(SERIAL_OUTPUT_BUFFER - 10));
  dev.flush();
  assert.equal(chunks[2], 'b'.repeat(10));
});

test('string writes: a line longer than the buffer still goes out as one call', () => {
  const { dev, chunks } = uart();
  dev.pioWriteString(RBR, 1, bytes('head'), host);
  const line = 'c'.repeat(SERIAL_OUTPUT_BUFFER + 100) + '\n';
  dev.pioWriteString(RBR, 1, bytes(line + 'tail'), host);
  assert.deepEqual(chunks, ['head' + line]);
  dev.flush();
  assert.deepEqual(chunks, ['head' + line, 'tail']);
});

test('string writes elsewhere fall back to per-item register writes', () => {
  const { dev, chunks } = uart();
  dev.pioWriteString(SCR, 1, new Uint8Array([1, 2, 0x33]), host);
  assert.equal(rd(dev, SCR), 0x33);
  wr(dev, MCR, 0x10);
  dev.pioWriteString(RBR, 1, bytes('ok'), host);
  assert.deepEqual([rd(dev, RBR), rd(dev, RBR)], [0x6f, 0x6b], 'loopback string goes to RBR');
  wr(dev, MCR, 0x00);
  wr(dev, LCR, 0x80);
  dev.pioWriteString(RBR, 1, new Uint8Array([0x30]), host);
  assert.equal(rd(dev, RBR), 0x30, 'DLAB string write sets DLL');
  wr(dev, LCR, 0x03);
  dev.pioWriteString(RBR, 2, new Uint8Array([0x41, 0x0b, 0x42, 0x0a]), host); // rep outsw: THR then IER
  assert.equal(rd(dev, IER), 0x0a);
  dev.flush();
  assert.deepEqual(chunks, ['AB']);
});

test('SerialInput: FIFO order across wraparound', () => {
  const ring = new SerialInput(8);
  assert.equal(ring.capacity, 8);
  assert.equal(ring.available(), false);
  assert.equal(ring.pop(), -1);
  const seen: number[] = [];
  let next = 0;
  for (let round = 0; round < 10; round++) {
    const chunk = new Uint8Array(5).map(() => next++ & 0xff);
    assert.equal(ring.push(chunk), 5);
    assert.equal(ring.size(), 5);
    for (let b = ring.pop(); b !== -1; b = ring.pop()) seen.push(b);
  }
  assert.deepEqual(seen, Array.from({ length: 50 }, (_, i) => i));
  assert.equal(ring.dropped, 0);
});

test('SerialInput: overflow drops the excess and counts it', () => {
  const ring = new SerialInput(8);
  assert.equal(ring.push(bytes('abcdef')), 6);
  assert.equal(ring.freeSpace(), 2);
  assert.equal(ring.push(bytes('ghijk')), 2);
  assert.equal(ring.dropped, 3);
  assert.equal(ring.push(bytes('z')), 0);
  assert.equal(ring.dropped, 4);
  let s = '';
  for (let b = ring.pop(); b !== -1; b = ring.pop()) s += String.fromCharCode(b);
  assert.equal(s, 'abcdefgh');
  assert.equal(ring.freeSpace(), 8);
});

test('SerialInput: default capacity, reattach, and bad capacities', () => {
  const ring = new SerialInput();
  assert.equal(ring.capacity, 4096);
  ring.push(bytes('xy'));
  const other = SerialInput.fromBuffer(ring.buffer);
  assert.equal(other.capacity, 4096);
  assert.equal(other.pop(), 0x78);
  assert.equal(ring.pop(), 0x79, 'both views share one ring');
  assert.throws(() => new SerialInput(100), RangeError);
  assert.throws(() => new SerialInput(0), RangeError);
  assert.throws(() => SerialInput.fromBuffer(new SharedArrayBuffer(64)), RangeError);
});

const workerCode = `
const { parentPort, workerData } = require('node:worker_threads');
import(workerData.moduleUrl).then(({ SerialInput }) => {
  const ring = SerialInput.fromBuffer(workerData.sab);
  parentPort.postMessage('ready');
  let count = 0, bad = -1;
  const deadline = Date.now() + 20000;
  while (count < workerData.total && Date.now() < deadline) {
    const b = ring.pop();
    if (b === -1) continue;
    if (b !== ((count * 7) & 0xff) && bad < 0) bad = count;
    count++;
  }
  ring.push(new TextEncoder().encode('done'));
  parentPort.postMessage({ count, bad });
});
`;

test('SerialInput created on the main thread is drained by a worker thread', async () => {
  const ring = new SerialInput(64);
  const total = 200_000;
  const moduleUrl = new URL('../../src/devices/serial-input.js', import.meta.url).href;
  const worker = new Worker(workerCode, { eval: true, workerData: { sab: ring.buffer, total, moduleUrl } });
  try {
    const messages: unknown[] = [];
    let wake: () => void = () => undefined;
    worker.on('message', (m) => {
      messages.push(m);
      wake();
    });
    worker.on('error', (e) => {
      messages.push(e);
      wake();
    });
    const nextMessage = async (): Promise<unknown> => {
      while (messages.length === 0) await new Promise<void>((r) => (wake = r));
      return messages.shift();
    };
    assert.equal(await nextMessage(), 'ready');
    // A small ring forces the producer to run into the consumer many times (wraparound under contention).
    let sent = 0;
    const deadline = Date.now() + 20_000;
    while (sent < total) {
      if (Date.now() > deadline) assert.fail(`worker stopped consuming after ${sent} bytes`);
      const n = Math.min(ring.freeSpace(), total - sent, 13);
      if (n === 0) continue;
      const chunk = new Uint8Array(n);
      for (let i = 0; i < n; i++) chunk[i] = ((sent + i) * 7) & 0xff;
      assert.equal(ring.push(chunk), n);
      sent += n;
    }
    assert.deepEqual(await nextMessage(), { count: total, bad: -1 });
    let reply = '';
    for (let b = ring.pop(); b !== -1; b = ring.pop()) reply += String.fromCharCode(b);
    assert.equal(reply, 'done', 'worker can produce into the ring too');
    assert.equal(ring.dropped, 0);
  } finally {
    await worker.terminate();
  }
});
