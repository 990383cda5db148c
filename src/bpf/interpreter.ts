/**
 * An eBPF interpreter for the RFC 9669 instruction set (ALU/ALU64, byte swaps, JMP/JMP32, helper
 * calls, BPF-to-BPF calls, loads/stores incl. MEMSX, lddw incl. pseudo sources, atomics).
 *
 * Registers are 64-bit unsigned BigInts. The interpreter only touches memory it was given: a list
 * of regions (the per-frame 512-byte stacks, the memory argument, anything the embedder adds),
 * and every access is bounds-checked against them. Faults end the run with BpfRuntimeError.
 *
 * The program is decoded once (DataView over the 8-byte slots) into typed arrays; the hot loop is
 * a switch on the opcode byte. Deliberately independent of src/bpf/isa.ts.
 */

/** Bytes of stack per frame. */
export const BPF_STACK_SIZE = 512;
/** Most frames that may be live at once (the main program counts as one), as in Linux. */
export const BPF_MAX_CALL_FRAMES = 8;
/** Default cap on executed instructions. */
export const BPF_DEFAULT_MAX_INSTRUCTIONS = 1_000_000;
/** Where the memory argument (r1) lives in the BPF address space. */
export const BPF_MEMORY_BASE = 0x1_0000_0000n;
/** Where frame 0's stack lives; frame k's is BPF_STACK_BASE + k * BPF_STACK_STRIDE. */
export const BPF_STACK_BASE = 0x7f00_0000_0000n;
const BPF_STACK_STRIDE = 0x1_0000n;
/** Region ends must stay at or below 2^53 so addresses can be compared as plain numbers. */
const MAX_ADDR = 2 ** 53;

/** A fault while running (or loading) a program: `pc` is the instruction (slot) index, -1 if none. */
export class BpfRuntimeError extends Error {
  constructor(readonly pc: number, readonly reason: string) {
    super(pc >= 0 ? `bpf: instruction ${pc}: ${reason}` : `bpf: ${reason}`);
    this.name = 'BpfRuntimeError';
  }
}

/** A piece of memory the program may access at [base, base + bytes.length). */
export interface BpfRegion {
  base: bigint;
  bytes: Uint8Array;
  writable: boolean;
}

/** What a helper gets besides r1..r5. */
export interface HelperContext {
  /** Index of the CALL instruction. */
  readonly pc: number;
  /** A bounds-checked view of `len` bytes at `addr` (throws BpfRuntimeError when out of bounds). */
  read(addr: bigint, len: number): Uint8Array;
  /** Like read, but requires a writable region. */
  writable(addr: bigint, len: number): Uint8Array;
  /** End the program right after this helper returns, with r0 = the helper's return value. */
  exit(): void;
}

export type BpfHelper = (r1: bigint, r2: bigint, r3: bigint, r4: bigint, r5: bigint, ctx: HelperContext) => bigint;

/**
 * Values for lddw with a pseudo source (src 1..6): map_by_fd, map_val(map_by_fd)+off, var_addr,
 * code_addr, map_by_idx, map_val(map_by_idx)+off. Whatever comes back is loaded into dst as is.
 */
export type PseudoResolver = (src: number, imm: number, nextImm: number) => bigint;

export interface BpfRunOptions {
  /** The memory argument: r1 points at it and r2 holds its length (r1 = r2 = 0 when absent). */
  memory?: Uint8Array;
  /** Whether the program may write the memory argument (default true). */
  memoryWritable?: boolean;
  /** Extra regions (map values, ...). */
  regions?: BpfRegion[];
  helpers?: Map<number, BpfHelper>;
  resolvePseudo?: PseudoResolver;
  maxInstructions?: number;
  /** Initial r1..r5 override (after the memory defaults). */
  args?: bigint[];
}

export interface BpfRunResult {
  r0: bigint;
  /** Instructions executed (lddw counts once). */
  instructions: number;
}

const U64 = 0xffff_ffff_ffff_ffffn;
const U32 = 0xffff_ffffn;

function u64(x: bigint): bigint {
  return BigInt.asUintN(64, x);
}
function s64(x: bigint): bigint {
  return BigInt.asIntN(64, x);
}
function lo32(x: bigint): number {
  return Number(x & U32);
}
function bswap16(x: number): number {
  return ((x & 0xff) << 8) | ((x >>> 8) & 0xff);
}
function bswap32(x: number): number {
  return (((x & 0xff) << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24)) >>> 0;
}
function bswap64(x: bigint): bigint {
  const hi = Number(x >> 32n);
  const lo = lo32(x);
  return (BigInt(bswap32(lo)) << 32n) | BigInt(bswap32(hi));
}

interface Frame {
  ret: number;
  r6: bigint;
  r7: bigint;
  r8: bigint;
  r9: bigint;
  r10: bigint;
}

/** A decoded program, runnable many times. */
export class BpfInterpreter {
  readonly length: number;
  private readonly op: Uint8Array;
  private readonly dst: Uint8Array;
  private readonly src: Uint8Array;
  private readonly off: Int16Array;
  private readonly imm: Int32Array;
  /** imm sign-extended to 64 bits, as unsigned. */
  private readonly immU: BigUint64Array;

  constructor(bytes: Uint8Array) {
    if (bytes.length === 0) throw new BpfRuntimeError(-1, 'empty program');
    if (bytes.length % 8 !== 0) throw new BpfRuntimeError(-1, `program length ${bytes.length} is not a multiple of 8`);
    const n = bytes.length / 8;
    this.length = n;
    this.op = new Uint8Array(n);
    this.dst = new Uint8Array(n);
    this.src = new Uint8Array(n);
    this.off = new Int16Array(n);
    this.imm = new Int32Array(n);
    this.immU = new BigUint64Array(n);
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) {
      const p = i * 8;
      this.op[i] = dv.getUint8(p);
      const regs = dv.getUint8(p + 1);
      this.dst[i] = regs & 0x0f;
      this.src[i] = regs >>> 4;
      this.off[i] = dv.getInt16(p + 2, true);
      this.imm[i] = dv.getInt32(p + 4, true);
      this.immU[i] = u64(BigInt(this.imm[i]!));
    }
  }

  run(opts: BpfRunOptions = {}): BpfRunResult {
    const { op, dst: dsts, src: srcs, off: offs, imm: imms, immU } = this;
    const n = this.length;
    const maxInstructions = opts.maxInstructions ?? BPF_DEFAULT_MAX_INSTRUCTIONS;
    const helpers = opts.helpers;

    // ---- memory ----
    const regions: BpfRegion[] = [];
    const views: DataView[] = [];
    const starts: number[] = [];
    const ends: number[] = [];
    const addRegion = (r: BpfRegion): void => {
      const start = Number(r.base);
      if (r.base < 0n || start + r.bytes.length > MAX_ADDR) throw new BpfRuntimeError(-1, `region at 0x${r.base.toString(16)} is outside the supported address range`);
      regions.push(r);
      views.push(new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength));
      starts.push(start);
      ends.push(start + r.bytes.length);
    };
    const popRegion = (): void => {
      regions.pop();
      views.pop();
      starts.pop();
      ends.pop();
    };
    const mem = opts.memory;
    if (mem && mem.length > 0) addRegion({ base: BPF_MEMORY_BASE, bytes: mem, writable: opts.memoryWritable ?? true });
    for (const r of opts.regions ?? []) addRegion(r);
    const stackTop = (depth: number): bigint => BPF_STACK_BASE + BigInt(depth) * BPF_STACK_STRIDE + BigInt(BPF_STACK_SIZE);
    const pushStack = (depth: number): void => {
      addRegion({ base: stackTop(depth) - BigInt(BPF_STACK_SIZE), bytes: new Uint8Array(BPF_STACK_SIZE), writable: true });
    };

    let pc = 0;
    let last = 0;
    /** Index of the region holding [addr, addr+size), else throws. Sets `ra` to the offset in it. */
    let ra = 0;
    const find = (addr: bigint, size: number, write: boolean): number => {
      const a = Number(addr);
      let i = last;
      if (!(i < regions.length && a >= starts[i]! && a + size <= ends[i]!)) {
        i = -1;
        for (let k = regions.length - 1; k >= 0; k--) {
          if (a >= starts[k]! && a + size <= ends[k]!) {
            i = k;
            break;
          }
        }
        if (i < 0) throw new BpfRuntimeError(pc, `out-of-bounds ${write ? 'write' : 'read'} of ${size} bytes at 0x${addr.toString(16)}`);
        last = i;
      }
      if (write && !regions[i]!.writable) throw new BpfRuntimeError(pc, `write of ${size} bytes to read-only memory at 0x${addr.toString(16)}`);
      ra = a - starts[i]!;
      return i;
    };
    const load = (addr: bigint, size: number): bigint => {
      const dv = views[find(addr, size, false)]!;
      switch (size) {
        case 1: return BigInt(dv.getUint8(ra));
        case 2: return BigInt(dv.getUint16(ra, true));
        case 4: return BigInt(dv.getUint32(ra, true));
        default: return dv.getBigUint64(ra, true);
      }
    };
    const loadSx = (addr: bigint, size: number): bigint => {
      const dv = views[find(addr, size, false)]!;
      switch (size) {
        case 1: return u64(BigInt(dv.getInt8(ra)));
        case 2: return u64(BigInt(dv.getInt16(ra, true)));
        case 4: return u64(BigInt(dv.getInt32(ra, true)));
        default: return dv.getBigUint64(ra, true);
      }
    };
    const store = (addr: bigint, size: number, v: bigint): void => {
      const dv = views[find(addr, size, true)]!;
      switch (size) {
        case 1: dv.setUint8(ra, Number(v & 0xffn)); break;
        case 2: dv.setUint16(ra, Number(v & 0xffffn), true); break;
        case 4: dv.setUint32(ra, Number(v & U32), true); break;
        default: dv.setBigUint64(ra, v & U64, true);
      }
    };
    const SIZES = [4, 2, 1, 8] as const;

    // ---- registers ----
    const r: bigint[] = new Array<bigint>(11).fill(0n);
    if (mem && mem.length > 0) {
      r[1] = BPF_MEMORY_BASE;
      r[2] = BigInt(mem.length);
    }
    if (opts.args) opts.args.forEach((v, i) => { if (i < 5) r[i + 1] = u64(v); });
    pushStack(0);
    r[10] = stackTop(0);
    const frames: Frame[] = [];

    let helperExit = false;
    const ctx: HelperContext = {
      get pc() { return pc; },
      read: (addr, len) => {
        const i = find(addr, len, false);
        return regions[i]!.bytes.subarray(ra, ra + len);
      },
      writable: (addr, len) => {
        const i = find(addr, len, true);
        return regions[i]!.bytes.subarray(ra, ra + len);
      },
      exit: () => { helperExit = true; },
    };

    let count = 0;
    for (;;) {
      if (pc < 0 || pc >= n) throw new BpfRuntimeError(pc, `program counter out of range (program has ${n} instructions)`);
      if (++count > maxInstructions) throw new BpfRuntimeError(pc, `instruction limit exceeded (${maxInstructions})`);
      const code = op[pc]!;
      const d = dsts[pc]!;
      const s = srcs[pc]!;
      const o = offs[pc]!;
      if (d > 10 || (s > 10 && (code & 7) !== 0)) throw new BpfRuntimeError(pc, `invalid register (dst r${d}, src r${s})`);
      switch (code) {
        // ---------------- ALU64 ----------------
        case 0x07: r[d] = u64(r[d]! + immU[pc]!); break;
        case 0x0f: r[d] = u64(r[d]! + r[s]!); break;
        case 0x17: r[d] = u64(r[d]! - immU[pc]!); break;
        case 0x1f: r[d] = u64(r[d]! - r[s]!); break;
        case 0x27: r[d] = u64(r[d]! * immU[pc]!); break;
        case 0x2f: r[d] = u64(r[d]! * r[s]!); break;
        case 0x37:
        case 0x3f: {
          const b = code === 0x37 ? immU[pc]! : r[s]!;
          if (o === 0) r[d] = b === 0n ? 0n : r[d]! / b;
          else if (o === 1) r[d] = b === 0n ? 0n : u64(s64(r[d]!) / s64(b));
          else throw bad(pc, code, 'offset');
          break;
        }
        case 0x47: r[d] = r[d]! | immU[pc]!; break;
        case 0x4f: r[d] = r[d]! | r[s]!; break;
        case 0x57: r[d] = r[d]! & immU[pc]!; break;
        case 0x5f: r[d] = r[d]! & r[s]!; break;
        case 0x67: r[d] = u64(r[d]! << BigInt(imms[pc]! & 63)); break;
        case 0x6f: r[d] = u64(r[d]! << (r[s]! & 63n)); break;
        case 0x77: r[d] = r[d]! >> BigInt(imms[pc]! & 63); break;
        case 0x7f: r[d] = r[d]! >> (r[s]! & 63n); break;
        case 0x87: r[d] = u64(-r[d]!); break;
        case 0x97:
        case 0x9f: {
          const b = code === 0x97 ? immU[pc]! : r[s]!;
          if (o === 0) { if (b !== 0n) r[d] = r[d]! % b; }
          else if (o === 1) { if (b !== 0n) r[d] = u64(s64(r[d]!) % s64(b)); }
          else throw bad(pc, code, 'offset');
          break;
        }
        case 0xa7: r[d] = r[d]! ^ immU[pc]!; break;
        case 0xaf: r[d] = r[d]! ^ r[s]!; break;
        case 0xb7: r[d] = immU[pc]!; break;
        case 0xbf:
          switch (o) {
            case 0: r[d] = r[s]!; break;
            case 8: case 16: case 32: r[d] = u64(BigInt.asIntN(o, r[s]!)); break;
            default: throw bad(pc, code, 'offset');
          }
          break;
        case 0xc7: r[d] = u64(s64(r[d]!) >> BigInt(imms[pc]! & 63)); break;
        case 0xcf: r[d] = u64(s64(r[d]!) >> (r[s]! & 63n)); break;
        case 0xd7: // BSWAP
          switch (imms[pc]) {
            case 16: r[d] = BigInt(bswap16(lo32(r[d]!))); break;
            case 32: r[d] = BigInt(bswap32(lo32(r[d]!))); break;
            case 64: r[d] = bswap64(r[d]!); break;
            default: throw bad(pc, code, 'width');
          }
          break;

        // ---------------- ALU (32-bit, results zero-extended) ----------------
        case 0x04: case 0x0c: case 0x14: case 0x1c: case 0x24: case 0x2c: case 0x34: case 0x3c:
        case 0x44: case 0x4c: case 0x54: case 0x5c: case 0x64: case 0x6c: case 0x74: case 0x7c:
        case 0x84: case 0x94: case 0x9c: case 0xa4: case 0xac: case 0xb4: case 0xbc: case 0xc4: case 0xcc: {
          const a = lo32(r[d]!);
          const b = code & 0x08 ? lo32(r[s]!) : imms[pc]! >>> 0;
          let v: number;
          switch (code & 0xf0) {
            case 0x00: v = a + b; break;
            case 0x10: v = a - b; break;
            case 0x20: v = Math.imul(a, b); break;
            case 0x30:
              if (o === 0) v = b === 0 ? 0 : Math.floor(a / b);
              else if (o === 1) v = b === 0 ? 0 : Math.trunc((a | 0) / (b | 0));
              else throw bad(pc, code, 'offset');
              break;
            case 0x40: v = a | b; break;
            case 0x50: v = a & b; break;
            case 0x60: v = a << (b & 31); break;
            case 0x70: v = a >>> (b & 31); break;
            case 0x80: v = -a; break;
            case 0x90:
              if (o === 0) v = b === 0 ? a : a % b;
              else if (o === 1) v = b === 0 ? a : (a | 0) % (b | 0);
              else throw bad(pc, code, 'offset');
              break;
            case 0xa0: v = a ^ b; break;
            case 0xb0:
              if (o === 0) v = b;
              else if (o === 8) v = (b << 24) >> 24;
              else if (o === 16) v = (b << 16) >> 16;
              else throw bad(pc, code, 'offset');
              break;
            default: v = (a | 0) >> (b & 31); break; // 0xc0 ARSH
          }
          r[d] = BigInt(v >>> 0);
          break;
        }
        case 0xd4: // LE: truncate (host order is little-endian in this model)
        case 0xdc: { // BE: swap
          const w = imms[pc]!;
          const be = code === 0xdc;
          if (w === 16) r[d] = BigInt(be ? bswap16(lo32(r[d]!)) : lo32(r[d]!) & 0xffff);
          else if (w === 32) r[d] = BigInt(be ? bswap32(lo32(r[d]!)) : lo32(r[d]!));
          else if (w === 64) { if (be) r[d] = bswap64(r[d]!); }
          else throw bad(pc, code, 'width');
          break;
        }

        // ---------------- loads and stores ----------------
        case 0x18: { // lddw
          if (pc + 1 >= n || op[pc + 1] !== 0) throw new BpfRuntimeError(pc, 'lddw without a valid second slot');
          const lo = BigInt(imms[pc]! >>> 0);
          const hi = BigInt(imms[pc + 1]! >>> 0);
          if (s === 0) r[d] = (hi << 32n) | lo;
          else if (s <= 6) {
            if (!opts.resolvePseudo) throw new BpfRuntimeError(pc, `lddw pseudo source ${s} but no resolver given`);
            r[d] = u64(opts.resolvePseudo(s, imms[pc]!, imms[pc + 1]!));
          } else throw bad(pc, code, 'src');
          pc++;
          break;
        }
        case 0x61: case 0x69: case 0x71: case 0x79:
          r[d] = load(u64(r[s]! + BigInt(o)), SIZES[(code >> 3) & 3]!);
          break;
        case 0x81: case 0x89: case 0x91:
          r[d] = loadSx(u64(r[s]! + BigInt(o)), SIZES[(code >> 3) & 3]!);
          break;
        case 0x62: case 0x6a: case 0x72: case 0x7a:
          store(u64(r[d]! + BigInt(o)), SIZES[(code >> 3) & 3]!, immU[pc]!);
          break;
        case 0x63: case 0x6b: case 0x73: case 0x7b:
          store(u64(r[d]! + BigInt(o)), SIZES[(code >> 3) & 3]!, r[s]!);
          break;
        case 0xc3: case 0xdb: { // atomics, 32 / 64 bit
          const size = code === 0xc3 ? 4 : 8;
          const addr = u64(r[d]! + BigInt(o));
          const mask = size === 4 ? U32 : U64;
          const dv = views[find(addr, size, true)]!;
          const at = ra;
          const old = size === 4 ? BigInt(dv.getUint32(at, true)) : dv.getBigUint64(at, true);
          const sv = r[s]! & mask;
          const aop = imms[pc]!;
          let nv: bigint;
          switch (aop & ~1) {
            case 0x00: nv = (old + sv) & mask; break;
            case 0x40: nv = old | sv; break;
            case 0x50: nv = old & sv; break;
            case 0xa0: nv = old ^ sv; break;
            case 0xe0: nv = sv; break;
            case 0xf0: nv = old === (r[0]! & mask) ? sv : old; break;
            default: throw bad(pc, code, `atomic op 0x${(aop >>> 0).toString(16)}`);
          }
          if (((aop & ~1) >= 0xe0 && !(aop & 1))) throw bad(pc, code, 'atomic op without FETCH');
          if (size === 4) dv.setUint32(at, Number(nv), true);
          else dv.setBigUint64(at, nv, true);
          if ((aop & ~1) === 0xf0) r[0] = old;
          else if (aop & 1) r[s] = old;
          break;
        }

        // ---------------- jumps ----------------
        case 0x05: pc += o; break; // JA
        case 0x06: pc += imms[pc]!; break; // JA32 (gotol)
        case 0x85: { // CALL
          if (s === 1) {
            if (frames.length + 1 >= BPF_MAX_CALL_FRAMES) throw new BpfRuntimeError(pc, `call depth limit exceeded (${BPF_MAX_CALL_FRAMES} frames)`);
            frames.push({ ret: pc + 1, r6: r[6]!, r7: r[7]!, r8: r[8]!, r9: r[9]!, r10: r[10]! });
            pushStack(frames.length);
            r[10] = stackTop(frames.length);
            pc += imms[pc]!;
            break;
          }
          if (s !== 0 && s !== 2) throw bad(pc, code, 'src');
          const id = imms[pc]!;
          const h = helpers?.get(id);
          if (!h) throw new BpfRuntimeError(pc, `unknown helper ${id}`);
          let v: bigint;
          try {
            v = h(r[1]!, r[2]!, r[3]!, r[4]!, r[5]!, ctx);
          } catch (e) {
            if (e instanceof BpfRuntimeError) throw e;
            throw new BpfRuntimeError(pc, `helper ${id} failed: ${e instanceof Error ? e.message : String(e)}`);
          }
          r[0] = u64(v);
          if (helperExit) return { r0: r[0]!, instructions: count };
          break;
        }
        case 0x95: { // EXIT
          const f = frames.pop();
          if (!f) return { r0: r[0]!, instructions: count };
          popRegion();
          if (last >= regions.length) last = 0;
          r[6] = f.r6; r[7] = f.r7; r[8] = f.r8; r[9] = f.r9; r[10] = f.r10;
          pc = f.ret;
          continue;
        }
        default: {
          const cls = code & 7;
          if ((cls === 5 || cls === 6) && (code & 0xf0) !== 0x80 && (code & 0xf0) !== 0x90 && (code & 0xf0) !== 0xe0 && (code & 0xf0) !== 0xf0 && (code & 0xf0) !== 0) {
            if (cond(code, r[d]!, code & 0x08 ? r[s]! : immU[pc]!)) pc += o;
            break;
          }
          throw bad(pc, code, 'opcode');
        }
      }
      pc++;
    }
  }
}

/** Conditional jumps (JMP class 5 / JMP32 class 6): a is dst, b is src or the sign-extended imm. */
function cond(code: number, a: bigint, b: bigint): boolean {
  if ((code & 7) === 6) {
    const x = lo32(a);
    const y = lo32(b);
    switch (code & 0xf0) {
      case 0x10: return x === y;
      case 0x20: return x > y;
      case 0x30: return x >= y;
      case 0x40: return (x & y) !== 0;
      case 0x50: return x !== y;
      case 0x60: return (x | 0) > (y | 0);
      case 0x70: return (x | 0) >= (y | 0);
      case 0xa0: return x < y;
      case 0xb0: return x <= y;
      case 0xc0: return (x | 0) < (y | 0);
      default: return (x | 0) <= (y | 0); // 0xd0
    }
  }
  switch (code & 0xf0) {
    case 0x10: return a === b;
    case 0x20: return a > b;
    case 0x30: return a >= b;
    case 0x40: return (a & b) !== 0n;
    case 0x50: return a !== b;
    case 0x60: return s64(a) > s64(b);
    case 0x70: return s64(a) >= s64(b);
    case 0xa0: return a < b;
    case 0xb0: return a <= b;
    case 0xc0: return s64(a) < s64(b);
    default: return s64(a) <= s64(b);
  }
}

function bad(pc: number, code: number, what: string): BpfRuntimeError {
  return new BpfRuntimeError(pc, `invalid ${what} for opcode 0x${code.toString(16).padStart(2, '0')}`);
}

/** Decodes and runs `bytes` once. */
export function runProgram(bytes: Uint8Array, opts: BpfRunOptions = {}): BpfRunResult {
  return new BpfInterpreter(bytes).run(opts);
}
