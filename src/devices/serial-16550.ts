/**
 * A 16550A-compatible UART, the guest console on COM1 (see docs/guest-abi.md, ports 0x3f8–0x3ff).
 *
 * Transmission is instantaneous (THR and the transmitter are always empty), so the only real state
 * is the register file, a small receive FIFO for loopback, and an output line buffer that turns a
 * byte-per-exit guest into line-sized writes to the host.
 */
import type { DeviceHost, PioDevice } from './device.js';
import type { SerialInput } from './serial-input.js';

export { SerialInput, SERIAL_INPUT_CAPACITY } from './serial-input.js';

/** First port of COM1. */
export const COM1_BASE = 0x3f8;
/** Number of ports a 16550 claims. */
export const SERIAL_PORT_COUNT = 8;
/** Size of the output line buffer; reaching it forces a flush. */
export const SERIAL_OUTPUT_BUFFER = 4096;

// Register offsets.
const RBR_THR = 0; // DLL when DLAB=1
const IER = 1; // DLM when DLAB=1
const IIR_FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

const LCR_DLAB = 0x80;
const MCR_LOOP = 0x10;
const IER_RDI = 0x01;
const IER_THRI = 0x02;
const IER_RLSI = 0x04;
const IER_MSI = 0x08;
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const IIR_NO_INT = 0x01;
const IIR_RLS = 0x06;
const IIR_RDI = 0x04;
const IIR_THRI = 0x02;
const IIR_MSI = 0x00;
const IIR_FIFO = 0xc0;
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
/** CTS, DSR and DCD: what a connected terminal presents outside loopback. */
const MSR_CONNECTED = 0xb0;
const RX_FIFO_DEPTH = 16;
const NEWLINE = 0x0a;

/** Construction options for {@link Serial16550}. */
export interface Serial16550Options {
  /**
   * Receives transmitted bytes. Each call gets a fresh array the sink may keep or transfer; it is
   * never empty.
   */
  output: (bytes: Uint8Array) => void;
  /** Host keyboard input; without it the line is idle and RBR reads 0. */
  input?: SerialInput;
}

/**
 * The 16550A UART. Claim {@link SERIAL_PORT_COUNT} ports at an 8-aligned base (the register is
 * selected by the low 3 bits of the port). Accesses wider than a byte touch consecutive registers,
 * as the ISA bus splits them; bytes past the device read as 0xff.
 *
 * Behaviour worth knowing:
 * - FIFOs start enabled, so an untouched UART's IIR reads 0xC1. FCR bit 0 turns the FIFO-enabled
 *   bits of IIR off and on; receive trigger levels are not modelled (data-available is raised from
 *   the first byte).
 * - Output is line buffered: it reaches the sink on '\n', when {@link SERIAL_OUTPUT_BUFFER} bytes are
 *   pending, on {@link flush}, and whenever the guest reads RBR or LSR, because a guest doing that
 *   may be waiting for an answer to a prompt that has no newline.
 * - FCR "clear receive FIFO" clears only the UART's own FIFO (loopback bytes), not host input that
 *   has not reached the guest yet, so typing ahead of guest initialisation is not lost.
 * - Interrupts are computed (IIR, {@link interruptPending}) but not yet wired to an irqchip.
 */
export class Serial16550 implements PioDevice {
  readonly name = 'serial-16550';

  private readonly output: (bytes: Uint8Array) => void;
  private readonly input: SerialInput | undefined;
  private readonly out = new Uint8Array(SERIAL_OUTPUT_BUFFER);
  private outLen = 0;

  // 0x000c = 9600 baud, what PC firmware leaves behind.
  private dll = 0x0c;
  private dlm = 0x00;
  private ier = 0;
  private lcr = 0;
  private mcr = 0;
  private scr = 0;
  private fifoEnabled = true;
  /** Loopback receive FIFO; host input bypasses it and is read straight from the ring. */
  private readonly rxFifo: number[] = [];
  private overrun = false;
  /** THRE interrupt latch: set when THR empties, cleared by reading IIR while it is the source. */
  private thrPending = false;
  /** MSR delta bits (DCTS, DDSR, TERI, DDCD), cleared by reading MSR. */
  private msrDelta = 0;

  constructor(options: Serial16550Options) {
    this.output = options.output;
    this.input = options.input;
  }

  /** Sends any buffered output to the sink now. */
  flush(): void {
    if (this.outLen === 0) return;
    const bytes = this.out.slice(0, this.outLen);
    this.outLen = 0;
    this.output(bytes);
  }

  /** Whether an enabled interrupt source is pending (the state of the UART's INTR line). */
  interruptPending(): boolean {
    return this.interruptId() !== IIR_NO_INT;
  }

  pioRead(port: number, size: number, _host?: DeviceHost): number {
    let value = 0;
    for (let i = 0; i < size; i++) {
      const offset = (port & 7) + i;
      const byte = offset < SERIAL_PORT_COUNT ? this.readRegister(offset) : 0xff;
      value |= byte << (8 * i);
    }
    return value >>> 0;
  }

  pioWrite(port: number, size: number, value: number, _host?: DeviceHost): void {
    for (let i = 0; i < size; i++) {
      const offset = (port & 7) + i;
      if (offset < SERIAL_PORT_COUNT) this.writeRegister(offset, (value >>> (8 * i)) & 0xff);
    }
  }

  /**
   * `rep outsb` to THR: the whole string in one call, and at most one sink call for everything up to
   * its last newline (the rest waits in the buffer, as it would byte by byte).
   */
  pioWriteString(port: number, size: number, data: Uint8Array, _host?: DeviceHost): void {
    if (size !== 1 || (port & 7) !== RBR_THR || this.lcr & LCR_DLAB || this.mcr & MCR_LOOP) {
      for (let i = 0; i + size <= data.length; i += size) {
        let value = 0;
        for (let b = 0; b < size; b++) value |= data[i + b]! << (8 * b);
        this.pioWrite(port, size, value >>> 0);
      }
      return;
    }
    this.thrPending = true;
    const lineEnd = data.lastIndexOf(NEWLINE) + 1;
    if (lineEnd > 0) {
      if (this.outLen + lineEnd <= SERIAL_OUTPUT_BUFFER) {
        this.out.set(data.subarray(0, lineEnd), this.outLen);
        this.outLen += lineEnd;
        this.flush();
      } else {
        const bytes = new Uint8Array(this.outLen + lineEnd);
        bytes.set(this.out.subarray(0, this.outLen));
        bytes.set(data.subarray(0, lineEnd), this.outLen);
        this.outLen = 0;
        this.output(bytes);
      }
    }
    for (let i = lineEnd; i < data.length; ) {
      const n = Math.min(SERIAL_OUTPUT_BUFFER - this.outLen, data.length - i);
      this.out.set(data.subarray(i, i + n), this.outLen);
      this.outLen += n;
      i += n;
      if (this.outLen === SERIAL_OUTPUT_BUFFER) this.flush();
    }
  }

  private readRegister(offset: number): number {
    switch (offset) {
      case RBR_THR:
        if (this.lcr & LCR_DLAB) return this.dll;
        this.flush();
        return this.receive();
      case IER:
        return this.lcr & LCR_DLAB ? this.dlm : this.ier;
      case IIR_FCR: {
        const id = this.interruptId();
        if (id === IIR_THRI) this.thrPending = false;
        return (this.fifoEnabled ? IIR_FIFO : 0) | id;
      }
      case LCR:
        return this.lcr;
      case MCR:
        return this.mcr;
      case LSR: {
        this.flush();
        const lsr = (this.dataReady() ? LSR_DR : 0) | (this.overrun ? LSR_OE : 0) | LSR_THRE | LSR_TEMT;
        this.overrun = false;
        return lsr;
      }
      case MSR: {
        const msr = this.modemStatus() | this.msrDelta;
        this.msrDelta = 0;
        return msr;
      }
      case SCR:
        return this.scr;
      default:
        return 0xff;
    }
  }

  private writeRegister(offset: number, value: number): void {
    switch (offset) {
      case RBR_THR:
        if (this.lcr & LCR_DLAB) this.dll = value;
        else this.transmit(value);
        return;
      case IER:
        if (this.lcr & LCR_DLAB) {
          this.dlm = value;
        } else {
          // Enabling THRI while THR is empty (always, here) raises the interrupt at once.
          if ((value ^ this.ier) & IER_THRI) this.thrPending = (value & IER_THRI) !== 0;
          this.ier = value & 0x0f;
        }
        return;
      case IIR_FCR:
        this.fifoEnabled = (value & FCR_ENABLE) !== 0;
        if (value & FCR_CLEAR_RX) this.rxFifo.length = 0;
        return;
      case LCR:
        this.lcr = value;
        return;
      case MCR: {
        const before = this.modemStatus();
        this.mcr = value & 0x1f;
        const after = this.modemStatus();
        const changed = before ^ after;
        // DCTS, DDSR, DDCD flag any change; TERI only RI's falling edge.
        this.msrDelta |= ((changed & 0x30) >> 4) | ((changed & 0x80) >> 4) | ((before & ~after & 0x40) >> 4);
        return;
      }
      case LSR:
      case MSR:
        return; // read-only on a 16550 (factory test registers on some clones)
      case SCR:
        this.scr = value;
    }
  }

  private transmit(byte: number): void {
    this.thrPending = true;
    if (this.mcr & MCR_LOOP) {
      if (this.rxFifo.length < (this.fifoEnabled ? RX_FIFO_DEPTH : 1)) this.rxFifo.push(byte);
      else this.overrun = true;
      return;
    }
    this.out[this.outLen++] = byte;
    if (byte === NEWLINE || this.outLen === SERIAL_OUTPUT_BUFFER) this.flush();
  }

  private receive(): number {
    const queued = this.rxFifo.shift();
    if (queued !== undefined) return queued;
    if (this.mcr & MCR_LOOP || !this.input) return 0;
    const byte = this.input.pop();
    return byte < 0 ? 0 : byte;
  }

  private dataReady(): boolean {
    if (this.rxFifo.length > 0) return true;
    return !(this.mcr & MCR_LOOP) && this.input !== undefined && this.input.available();
  }

  /** MSR bits 4–7. In loopback the outputs feed the inputs: RTS→CTS, DTR→DSR, OUT1→RI, OUT2→DCD. */
  private modemStatus(): number {
    if (!(this.mcr & MCR_LOOP)) return MSR_CONNECTED;
    return ((this.mcr & 0x02) << 3) | ((this.mcr & 0x01) << 5) | ((this.mcr & 0x04) << 4) | ((this.mcr & 0x08) << 4);
  }

  /** IIR bits 0–3 for the highest-priority enabled source, without side effects. */
  private interruptId(): number {
    if (this.ier & IER_RLSI && this.overrun) return IIR_RLS;
    if (this.ier & IER_RDI && this.dataReady()) return IIR_RDI;
    if (this.ier & IER_THRI && this.thrPending) return IIR_THRI;
    if (this.ier & IER_MSI && this.msrDelta !== 0) return IIR_MSI;
    return IIR_NO_INT;
  }
}
