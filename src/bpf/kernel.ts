/**
 * The host Linux kernel's own eBPF runtime through bpf(2): create maps, load a program as XDP
 * (its verifier, then its JIT when net.core.bpf_jit_enable is on) and run it on a packet with
 * BPF_PROG_TEST_RUN. The eBPF benchmark uses it as the baseline for kvmtalk's runtimes.
 *
 * `union bpf_attr` holds pointers, so every attribute and the buffers it points at live in one
 * anonymous mapping (stable native addresses) that a {@link KernelBpf} owns.
 * @module
 */
import { readFileSync } from 'node:fs';
import * as sys from '../kvm/sys.js';
import type { BpfImage, ImageMap } from './image.js';
import { LDDW_OPCODE, LDDW_PSEUDO, encodeProgram } from './isa.js';

/** bpf(2) commands (include/uapi/linux/bpf.h). */
const CMD = { MAP_CREATE: 0, PROG_LOAD: 5, PROG_TEST_RUN: 10 } as const;
const BPF_PROG_TYPE_XDP = 6;
/** src_reg of an lddw whose imm is a map: an fd for the kernel, an index into the maps in an image. */
const MAP_BY_FD = LDDW_PSEUDO.indexOf('map_by_fd');
/** Bytes passed as the attribute size: more than any command here uses; the tail stays zero. */
const ATTR_SIZE = 160;
const LOG_SIZE = 1 << 20;
const ARENA_SIZE = 4 << 20;
/** Arena layout: [attr][license][packet in][packet out][log][instructions]. */
const OFF = { attr: 0, license: 256, dataIn: 512, dataOut: 8192, log: 16384, insns: 16384 + LOG_SIZE } as const;
const MAX_PACKET = OFF.dataOut - OFF.dataIn;

/** bpf(2) is not allowed for this process (not root, no CAP_BPF, or a sandbox). */
export class KernelBpfUnavailableError extends Error {
  constructor(reason: string) {
    super(`the kernel's eBPF runtime is not available: ${reason}`);
    this.name = 'KernelBpfUnavailableError';
  }
}

/** The kernel refused a program; `log` is the tail of its verifier log. */
export class KernelVerifierError extends Error {
  constructor(readonly program: string, cause: string, readonly log: string) {
    super(`kernel rejected '${program}' (${cause})${log ? `:\n${log}` : ''}`);
    this.name = 'KernelVerifierError';
  }
}

/** A program loaded into the kernel. */
export interface KernelProgram {
  name: string;
  fd: number;
  /** Whether the kernel JIT-compiled it (net.core.bpf_jit_enable). */
  jitted: boolean;
}

/** One BPF_PROG_TEST_RUN. */
export interface KernelTestRun {
  /** The program's return value (32 bits, as the kernel reports it). */
  retval: number;
  /** Mean ns per run as the kernel measured it (integer, truncated). */
  durationNs: number;
  /** Wall-clock ns of the whole bpf(2) call divided by `repeat` (fractional; includes one syscall). */
  wallNsPerRun: number;
}

/** Whether the kernel JIT is on (/proc/sys/net/core/bpf_jit_enable ≠ 0); undefined when unreadable. */
export function kernelJitEnabled(): boolean | undefined {
  try {
    return readFileSync('/proc/sys/net/core/bpf_jit_enable', 'utf8').trim() !== '0';
  } catch {
    return undefined;
  }
}

/** An open session with the kernel's eBPF runtime; {@link close} releases its fds and memory. */
export class KernelBpf {
  private readonly base: bigint;
  private readonly mem: Uint8Array;
  private readonly dv: DataView;
  private readonly fds: number[] = [];
  private closed = false;

  constructor() {
    this.base = sys.mmap(ARENA_SIZE, sys.PROT_READ | sys.PROT_WRITE, sys.MAP_PRIVATE | sys.MAP_ANONYMOUS, -1);
    this.mem = new Uint8Array(sys.view(this.base, ARENA_SIZE));
    this.dv = new DataView(this.mem.buffer);
  }

  /**
   * Loads a KTBP program image as an XDP program, with new kernel maps made from its map
   * definitions (so a program's maps start empty, as in a fresh guest).
   * @throws KernelBpfUnavailableError when bpf(2) is not permitted
   * @throws KernelVerifierError with the verifier's log when the kernel refuses the program
   */
  loadXdp(name: string, image: BpfImage): KernelProgram {
    const fds = image.maps.map((m) => this.createMap(m));
    const patched = image.insns.map((insn) => {
      if (insn.opcode !== LDDW_OPCODE || insn.src !== MAP_BY_FD) return insn;
      const fd = fds[insn.imm];
      if (fd === undefined) throw new RangeError(`program '${name}' refers to map ${insn.imm}, but the image has ${fds.length} map(s)`);
      return { ...insn, imm: fd, imm64: BigInt(fd) };
    });
    const code = encodeProgram(patched);
    if (OFF.insns + code.length > ARENA_SIZE) throw new RangeError(`program '${name}' is too long (${code.length / 8} slots)`);
    this.mem.set(code, OFF.insns);
    this.mem.set(new TextEncoder().encode('GPL\0'), OFF.license);
    this.mem[OFF.log] = 0;
    const a = this.attr();
    this.dv.setUint32(a, BPF_PROG_TYPE_XDP, true);
    this.dv.setUint32(a + 4, code.length / 8, true);
    this.dv.setBigUint64(a + 8, this.base + BigInt(OFF.insns), true);
    this.dv.setBigUint64(a + 16, this.base + BigInt(OFF.license), true);
    this.dv.setUint32(a + 24, 1, true); // log_level: the log on failure
    this.dv.setUint32(a + 28, LOG_SIZE, true);
    this.dv.setBigUint64(a + 32, this.base + BigInt(OFF.log), true);
    this.mem.set(new TextEncoder().encode(name.slice(0, 15).replace(/[^A-Za-z0-9_.]/g, '_')), a + 48); // prog_name
    let fd: number;
    try {
      fd = this.call(CMD.PROG_LOAD, `BPF_PROG_LOAD '${name}'`);
    } catch (e) {
      if (e instanceof sys.SysError && e.code !== 'EPERM') throw new KernelVerifierError(name, e.code, this.logTail());
      throw e;
    }
    return { name, fd: this.keep(fd), jitted: kernelJitEnabled() ?? false };
  }

  /**
   * BPF_PROG_TEST_RUN: runs `prog` `repeat` times on a copy of `packet`.
   * @throws RangeError for a bad repeat or packet size
   */
  testRun(prog: KernelProgram, packet: Uint8Array, repeat: number): KernelTestRun {
    if (!Number.isInteger(repeat) || repeat < 1 || repeat > 0xffffffff) throw new RangeError(`repeat must be 1 … 2^32-1, got ${repeat}`);
    if (packet.length < 14 || packet.length > MAX_PACKET) throw new RangeError(`packet must be 14 … ${MAX_PACKET} bytes for XDP, got ${packet.length}`);
    this.mem.set(packet, OFF.dataIn);
    const a = this.attr();
    this.dv.setUint32(a, prog.fd, true);
    this.dv.setUint32(a + 8, packet.length, true); // data_size_in
    this.dv.setUint32(a + 12, MAX_PACKET, true); // data_size_out
    this.dv.setBigUint64(a + 16, this.base + BigInt(OFF.dataIn), true);
    this.dv.setBigUint64(a + 24, this.base + BigInt(OFF.dataOut), true);
    this.dv.setUint32(a + 32, repeat, true);
    const t0 = process.hrtime.bigint();
    this.call(CMD.PROG_TEST_RUN, `BPF_PROG_TEST_RUN '${prog.name}'`);
    const wall = Number(process.hrtime.bigint() - t0);
    return { retval: this.dv.getUint32(a + 4, true), durationNs: this.dv.getUint32(a + 36, true), wallNsPerRun: wall / repeat };
  }

  /** Closes every map and program fd and unmaps the arena. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of this.fds.splice(0)) sys.close(fd);
    sys.munmap(this.base, ARENA_SIZE);
  }

  /** A new kernel map like `def`. */
  private createMap(def: ImageMap): number {
    const a = this.attr();
    this.dv.setUint32(a, def.type, true);
    this.dv.setUint32(a + 4, def.keySize, true);
    this.dv.setUint32(a + 8, def.valueSize, true);
    this.dv.setUint32(a + 12, def.maxEntries, true);
    this.mem.set(new TextEncoder().encode(def.name.slice(0, 15).replace(/[^A-Za-z0-9_.]/g, '_')), a + 28); // map_name
    return this.keep(this.call(CMD.MAP_CREATE, `BPF_MAP_CREATE '${def.name}'`));
  }

  private attr(): number {
    if (this.closed) throw new Error('KernelBpf is closed');
    this.mem.fill(0, OFF.attr, OFF.attr + ATTR_SIZE);
    return OFF.attr;
  }

  private call(cmd: number, what: string): number {
    try {
      return sys.bpf(cmd, this.base + BigInt(OFF.attr), ATTR_SIZE, what);
    } catch (e) {
      if (e instanceof sys.SysError && (e.code === 'EPERM' || e.code === 'ENOSYS')) {
        throw new KernelBpfUnavailableError(`${what}: ${e.code} (needs root or CAP_BPF + CAP_NET_ADMIN, and a kernel with CONFIG_BPF_SYSCALL)`);
      }
      throw e;
    }
  }

  private keep(fd: number): number {
    this.fds.push(fd);
    return fd;
  }

  /** The last lines of the verifier log (the reason is at the end). */
  private logTail(): string {
    const end = this.mem.indexOf(0, OFF.log);
    const text = new TextDecoder().decode(this.mem.subarray(OFF.log, end < 0 ? OFF.log + LOG_SIZE : end)).trimEnd();
    return text.split('\n').slice(-12).join('\n');
  }
}
