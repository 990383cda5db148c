/**
 * A static eBPF verifier: abstract interpretation over all paths, tracking register and stack
 * types (uninit, scalar with an unsigned [lo, hi] range, pointers to stack / context / map value
 * (possibly null) with offset ranges, map pointers), with state pruning at jump targets.
 *
 * Scalar ranges follow 64- and 32-bit arithmetic (shifts, masks, div/mod, zero extension,
 * JMP32 conditions) closely enough for clang's output; whatever cannot be bounded becomes unknown.
 *
 * Loops: back-edges are allowed only when exploration terminates within the budget
 * (`maxStates` processed instructions, default 1M like Linux). Revisiting a loop head with a
 * state identical (on live registers) to one still being explored on the same path is reported
 * as an unbounded loop. Pruning against completed states uses range subsumption.
 *
 * Precision: a backward analysis finds, per instruction, the registers whose range can still
 * matter — it reaches a memory address, a jump condition, a helper's pointer argument or a
 * stack store. At jump targets the other scalars are widened to unknown, so counters that only
 * feed the return value do not multiply states (what Linux gets from precision tracking).
 *
 * Program counters are slot indices (lddw occupies two), as in the interpreter.
 * @module
 */
import { InvalidInstructionError, decodeProgram, describe, slotCount, type AluOp, type BpfInsn, type InsnInfo } from './isa.js';
import { formatInsn } from './disasm.js';

export type HelperArg = 'ctx' | 'map' | 'stack-ptr' | 'scalar' | 'map-key' | 'map-value';
export interface HelperSpec {
  id: number;
  name: string;
  args: HelperArg[];
  ret: 'scalar' | 'map-value-or-null';
}
export interface MapSpec {
  index: number;
  keySize: number;
  valueSize: number;
}
export interface VerifyOptions {
  /** Bytes of context reachable through r1 at entry. */
  contextSize: number;
  helpers: HelperSpec[];
  maps?: MapSpec[];
  /** Budget of processed instructions over all paths (default 1,000,000). */
  maxStates?: number;
}
export interface VerifierError {
  /** Slot index of the offending instruction. */
  pc: number;
  /** Its disassembly (or a placeholder when it cannot be decoded). */
  insn: string;
  reason: string;
}
export interface VerifierStats {
  /** Program length in slots. */
  insns: number;
  /** Instructions processed over all explored paths. */
  processed: number;
  /** States recorded at prune points. */
  states: number;
  /** Paths cut short because a recorded state covered them. */
  pruned: number;
}
export type VerifyResult = { ok: true; stats: VerifierStats } | { ok: false; errors: VerifierError[] };

export const DEFAULT_MAX_STATES = 1_000_000;
const STACK = 512;
const SAFE = Number.MAX_SAFE_INTEGER;
const U32MAX = 0xffff_ffff;
/**
 * Pointer offsets stay within ±2^29 (Linux's BPF_MAX_VAR_OFF): pointer arithmetic that could
 * leave this window is refused, so offset ranges are always small exact integers.
 */
const MAX_OFF = 2 ** 29;
/** lddw sources that name a map by its index in `maps`. */
const MAP_LDDW = new Set(['map_by_fd', 'map_by_idx', 'map_val_by_fd', 'map_val_by_idx']);

// ------------------------------------------------------------------ abstract values
type Reg =
  | { t: 'u' }
  | { t: 's'; lo: number; hi: number } // unsigned range; hi = Infinity: unknown upper bits
  | { t: 'fp'; lo: number; hi: number }
  | { t: 'ctx'; lo: number; hi: number }
  | { t: 'mv'; map: number; lo: number; hi: number; nul: boolean; id: number }
  | { t: 'map'; map: number };

type SReg = Extract<Reg, { t: 's' }>;

const UNINIT: Reg = { t: 'u' };
const UNKNOWN: SReg = { t: 's', lo: 0, hi: Infinity };
const U32: SReg = { t: 's', lo: 0, hi: U32MAX };
const scalar = (lo: number, hi: number): Reg => (lo >= 0 && hi <= SAFE && lo <= hi ? { t: 's', lo, hi } : UNKNOWN);
const konst = (v: number): Reg => scalar(v, v);

function regKey(r: Reg): string {
  switch (r.t) {
    case 'u': return 'u';
    case 's': return `s${r.lo},${r.hi}`;
    case 'fp': case 'ctx': return `${r.t}${r.lo},${r.hi}`;
    case 'mv': return `m${r.map},${r.lo},${r.hi},${r.nul ? r.id : 'n'}`;
    case 'map': return `M${r.map}`;
  }
}
/** Whether every concrete value of `b` is described by `a`. */
function covers(a: Reg, b: Reg): boolean {
  if (a.t === 'u') return true;
  if (a.t !== b.t) return false;
  switch (a.t) {
    case 's': case 'fp': case 'ctx': {
      const o = b as { lo: number; hi: number };
      return a.lo <= o.lo && o.hi <= a.hi;
    }
    case 'mv': {
      const o = b as Extract<Reg, { t: 'mv' }>;
      return a.map === o.map && a.nul === o.nul && (!a.nul || a.id === o.id) && a.lo <= o.lo && o.hi <= a.hi;
    }
    case 'map': return a.map === (b as Extract<Reg, { t: 'map' }>).map;
    default: return false;
  }
}
const typeName = (r: Reg): string =>
  ({ u: 'uninitialized', s: 'scalar', fp: 'stack pointer', ctx: 'context pointer', mv: 'map value pointer', map: 'map pointer' })[r.t] +
  (r.t === 'mv' && r.nul ? ' (or null)' : '');

interface Node {
  parent: Node | null;
  branches: number;
  regs: Reg[];
  init: Uint8Array;
  spill: (Reg | null)[];
}
interface State {
  regs: Reg[];
  /** 1 per written stack byte; index = offset + 512. */
  init: Uint8Array;
  /** Register spilled by an aligned 8-byte store, per 8-byte slot. */
  spill: (Reg | null)[];
  node: Node | null;
}
const cloneState = (s: State): State => ({ regs: s.regs.slice(), init: s.init.slice(), spill: s.spill.slice(), node: s.node });

class Fail extends Error {
  constructor(readonly pc: number, readonly reason: string) {
    super(reason);
  }
}

// ------------------------------------------------------------------ entry point
/** Statically verify a program; never throws for bad programs (only for bad options). */
export function verify(program: Uint8Array | readonly BpfInsn[], opts: VerifyOptions): VerifyResult {
  let insns: readonly BpfInsn[];
  if (program instanceof Uint8Array) {
    try {
      insns = decodeProgram(program);
    } catch (e) {
      if (e instanceof InvalidInstructionError) return { ok: false, errors: [{ pc: e.index, insn: '<undecodable>', reason: e.reason }] };
      throw e;
    }
  } else insns = program;
  return new Verifier(insns, opts).run();
}

class Verifier {
  private readonly n: number;
  private readonly at: (BpfInsn | undefined)[] = [];
  private readonly info: (InsnInfo | undefined)[] = [];
  private readonly second: boolean[] = [];
  private readonly prune: boolean[] = [];
  private readonly live: Uint16Array;
  /** Per pc, the registers whose scalar range can still matter (a subset of `live`). */
  private readonly relevant: Uint16Array;
  private readonly helpers = new Map<number, HelperSpec>();
  private readonly maps = new Map<number, MapSpec>();
  private readonly budget: number;
  private readonly exact: Map<string, Node>[] = [];
  private readonly recent: Node[][] = [];
  private processed = 0;
  private states = 0;
  private pruned = 0;

  constructor(insns: readonly BpfInsn[], private readonly opts: VerifyOptions) {
    let slot = 0;
    for (const insn of insns) {
      this.at[slot] = insn;
      this.second[slot] = false;
      if (slotCount(insn) === 2) {
        this.at[slot + 1] = undefined;
        this.second[slot + 1] = true;
      }
      slot += slotCount(insn);
    }
    this.n = slot;
    this.live = new Uint16Array(slot);
    this.relevant = new Uint16Array(slot);
    for (const h of opts.helpers) this.helpers.set(h.id, h);
    for (const m of opts.maps ?? []) this.maps.set(m.index, m);
    this.budget = opts.maxStates ?? DEFAULT_MAX_STATES;
  }

  private text(pc: number): string {
    const insn = this.at[pc];
    if (!insn) return this.second[pc] ? '<second slot of lddw>' : '<none>';
    try {
      return formatInsn(insn, pc);
    } catch {
      return `<invalid opcode 0x${(insn.opcode & 0xff).toString(16).padStart(2, '0')}>`;
    }
  }
  private err(pc: number, reason: string): VerifierError {
    return { pc, insn: this.text(pc), reason };
  }

  run(): VerifyResult {
    if (this.n === 0) return { ok: false, errors: [{ pc: 0, insn: '<none>', reason: 'empty program' }] };
    const errors = this.staticChecks();
    if (errors.length) return { ok: false, errors };
    this.liveness();
    try {
      this.explore();
    } catch (e) {
      if (e instanceof Fail) return { ok: false, errors: [this.err(e.pc, e.reason)] };
      throw e;
    }
    return { ok: true, stats: { insns: this.n, processed: this.processed, states: this.states, pruned: this.pruned } };
  }

  /** Decode/validate every instruction and every jump target (also in unreachable code). */
  private staticChecks(): VerifierError[] {
    const errors: VerifierError[] = [];
    for (let pc = 0; pc < this.n; pc++) {
      const insn = this.at[pc];
      if (!insn) continue;
      let d: InsnInfo;
      try {
        d = describe(insn, pc);
      } catch (e) {
        if (e instanceof InvalidInstructionError) {
          errors.push(this.err(pc, `invalid instruction: ${e.reason}`));
          continue;
        }
        throw e;
      }
      this.info[pc] = d;
      // also in unreachable code: the loader resolves every map reference
      if (d.kind === 'lddw' && MAP_LDDW.has(d.op) && !this.maps.has(insn.imm)) errors.push(this.err(pc, `unknown map ${insn.imm}`));
      const t = this.target(pc);
      if (t !== undefined) {
        if (t < 0 || t >= this.n) errors.push(this.err(pc, `jump out of range: target ${t} outside [0, ${this.n})`));
        else if (this.second[t]) errors.push(this.err(pc, `jump into the middle of lddw at ${t - 1}`));
        else {
          this.prune[t] = true;
          if (pc + 1 < this.n) this.prune[pc + 1] = true;
        }
      }
    }
    return errors;
  }

  private target(pc: number): number | undefined {
    const d = this.info[pc]!;
    const insn = this.at[pc]!;
    if (d.kind === 'jmp') return pc + 1 + insn.off;
    if (d.kind === 'ja') return pc + 1 + (d.width === 32 ? insn.imm : insn.off);
    return undefined;
  }

  /**
   * Backward analyses over r0..r9: liveness, so pruning ignores dead registers, and relevance,
   * so it can widen scalars whose range no longer matters. Relevance flows into what an
   * instruction reads only when the register it computes is relevant (`cond` → `condGen`),
   * except for addresses, jump operands, pointer arguments and stored values (`gen`), which
   * always matter; what an instruction writes (`kill`) is not relevant before it.
   */
  private liveness(): void {
    const n = this.n;
    const use = new Uint16Array(n);
    const def = new Uint16Array(n);
    const kill = new Uint16Array(n);
    const gen = new Uint16Array(n);
    const cond = new Uint16Array(n);
    const condGen = new Uint16Array(n);
    const succ: number[][] = [];
    for (let pc = 0; pc < n; pc++) {
      const d = this.info[pc];
      const insn = this.at[pc];
      succ[pc] = [];
      if (!d || !insn) continue;
      const b = (r: number) => (r < 10 ? 1 << r : 0);
      let u = 0;
      let df = 0;
      let g = 0;
      let c = 0;
      let cg = 0;
      const next = pc + slotCount(insn);
      let fall = true;
      switch (d.kind) {
        case 'alu':
          if (d.source === 'reg') u |= b(insn.src);
          if (d.op !== 'mov' && d.op !== 'movsx') u |= b(insn.dst);
          df |= b(insn.dst);
          c = b(insn.dst);
          cg = u;
          break;
        case 'end': u |= b(insn.dst); df |= b(insn.dst); c = cg = b(insn.dst); break;
        case 'jmp': u |= b(insn.dst); if (d.source === 'reg') u |= b(insn.src); g = u; succ[pc]!.push(this.target(pc)!); break;
        case 'ja': fall = false; succ[pc]!.push(this.target(pc)!); break;
        case 'call': {
          const h = d.op === 'helper' ? this.helpers.get(insn.imm) : undefined;
          for (let i = 1; i <= (h ? h.args.length : 5); i++) {
            u |= b(i);
            if (h?.args[i - 1] !== 'scalar') g |= b(i);
          }
          df |= 0x3f;
          break;
        }
        case 'exit': u |= 1; fall = false; break;
        case 'lddw': df |= b(insn.dst); break;
        case 'ld': u |= b(insn.src) | b(6); df |= 0x3f; g = u; break;
        case 'ldx': u |= b(insn.src); df |= b(insn.dst); g = b(insn.src); break;
        case 'st': u |= b(insn.dst); g = u; break;
        case 'stx': u |= b(insn.dst) | b(insn.src); g = u; break;
        case 'atomic':
          u |= b(insn.dst) | b(insn.src);
          if (d.op === 'cmpxchg') { u |= 1; df |= 1; } else if (d.fetch) df |= b(insn.src);
          g = u;
          break;
      }
      // A register both used and defined is used first.
      use[pc] = u;
      def[pc] = df & ~u;
      kill[pc] = df;
      gen[pc] = g;
      cond[pc] = c;
      condGen[pc] = cg;
      if (fall && next < n) succ[pc]!.push(next);
    }
    const { live, relevant } = this;
    for (let changed = true; changed; ) {
      changed = false;
      for (let pc = n - 1; pc >= 0; pc--) {
        let out = 0;
        let rout = 0;
        for (const s of succ[pc]!) {
          if (s >= 0 && s < n) {
            out |= live[s]!;
            rout |= relevant[s]!;
          }
        }
        const v = use[pc]! | (out & ~def[pc]!);
        const r = gen[pc]! | (rout & ~kill[pc]!) | (rout & cond[pc]! ? condGen[pc]! : 0);
        if (v !== live[pc] || r !== relevant[pc]) {
          live[pc] = v;
          relevant[pc] = r;
          changed = true;
        }
      }
    }
  }

  // ---------------------------------------------------------------- exploration
  private explore(): void {
    const regs: Reg[] = new Array<Reg>(11).fill(UNINIT);
    regs[1] = { t: 'ctx', lo: 0, hi: 0 };
    regs[10] = { t: 'fp', lo: 0, hi: 0 };
    const root: State = { regs, init: new Uint8Array(STACK), spill: new Array<Reg | null>(STACK / 8).fill(null), node: null };
    const work: { pc: number; st: State; back: number }[] = [{ pc: 0, st: root, back: -1 }];
    while (work.length) {
      const item = work.pop()!;
      let { pc, st, back } = item;
      for (;;) {
        if (++this.processed > this.budget) {
          throw new Fail(back >= 0 ? back : pc, `program too complex: exceeded ${this.budget} processed instructions` + (back >= 0 ? ' (loop not provably bounded)' : ''));
        }
        if (this.prune[pc]) {
          const v = this.visit(pc, st);
          if (v === 'loop') throw new Fail(back >= 0 ? back : pc, `unbounded loop: back-edge to ${pc} reaches an identical state again (infinite loop)`);
          if (v === 'prune') {
            this.pruned++;
            this.endPath(st.node);
            break;
          }
        }
        const r = this.step(pc, st);
        if (r === 'exit') {
          this.endPath(st.node);
          break;
        }
        if (typeof r === 'number') {
          if (r <= pc) back = pc;
          pc = r;
        } else {
          // two feasible successors: continue with the fallthrough, queue the jump
          if (st.node) st.node.branches++;
          work.push({ pc: r.jump, st: r.jumpState, back: r.jump <= pc ? pc : back });
          pc = r.fall;
        }
        if (pc >= this.n) throw new Fail(pc - 1 - (this.second[pc - 1] ? 1 : 0), 'falls off the end of the program (last instruction must be exit or a jump)');
      }
    }
  }

  private endPath(node: Node | null): void {
    for (let p = node; p; p = p.parent) if (--p.branches > 0) break;
  }

  private stateKey(pc: number, st: State): string {
    const live = this.live[pc]!;
    let k = '';
    for (let i = 0; i < 10; i++) k += (live & (1 << i) ? regKey(st.regs[i]!) : 'u') + '|';
    let bits = '';
    for (let i = 0; i < STACK; i += 16) {
      let w = 0;
      for (let j = 0; j < 16; j++) if (st.init[i + j]) w |= 1 << j;
      bits += String.fromCharCode(w);
    }
    k += bits;
    for (let i = 0; i < st.spill.length; i++) if (st.spill[i]) k += `|${i}:${regKey(st.spill[i]!)}`;
    return k;
  }

  private visit(pc: number, st: State): 'loop' | 'prune' | 'new' {
    // scalars whose range cannot matter any more: forget it (sound, and states then coincide)
    const loose = this.live[pc]! & ~this.relevant[pc]!;
    for (let i = 0; i < 10; i++) if (loose & (1 << i) && st.regs[i]!.t === 's') st.regs[i] = UNKNOWN;
    const key = this.stateKey(pc, st);
    const map = (this.exact[pc] ??= new Map());
    const hit = map.get(key);
    if (hit) return hit.branches > 0 ? 'loop' : 'prune';
    const live = this.live[pc]!;
    const list = (this.recent[pc] ??= []);
    for (let i = list.length - 1; i >= Math.max(0, list.length - 16); i--) {
      const old = list[i]!;
      if (old.branches === 0 && this.subsumes(old, st, live)) return 'prune';
    }
    const regs = st.regs.map((r, i) => (i < 10 && !(live & (1 << i)) ? UNINIT : r));
    const node: Node = { parent: st.node, branches: 1, regs, init: st.init.slice(), spill: st.spill.slice() };
    map.set(key, node);
    list.push(node);
    if (list.length > 64) list.splice(0, list.length - 16);
    st.node = node;
    this.states++;
    return 'new';
  }

  private subsumes(old: Node, st: State, live: number): boolean {
    for (let i = 0; i < 10; i++) if (live & (1 << i) && !covers(old.regs[i]!, st.regs[i]!)) return false;
    for (let i = 0; i < STACK; i++) if (old.init[i] && !st.init[i]) return false;
    for (let i = 0; i < old.spill.length; i++) {
      const o = old.spill[i];
      const s = st.spill[i];
      if (s && !(o && covers(o, s))) {
        // a pointer spill where old had plain data is not covered; a scalar spill is covered by data
        if (!o && s.t === 's') continue;
        return false;
      }
      if (o && !s && o.t !== 's' && o.t !== 'u') return false;
      if (o && !s && o.t === 's' && (o.lo !== 0 || o.hi !== Infinity)) return false;
    }
    return true;
  }

  // ---------------------------------------------------------------- transfer functions
  private read(st: State, pc: number, r: number): Reg {
    const v = st.regs[r]!;
    if (v.t === 'u') throw new Fail(pc, `r${r} is read before it is initialized` + (r >= 1 && r <= 5 ? ' (r1-r5 are clobbered by calls)' : ''));
    return v;
  }
  private write(st: State, pc: number, r: number, v: Reg): void {
    if (r === 10) throw new Fail(pc, 'r10 (frame pointer) is read-only');
    st.regs[r] = v;
  }

  /** Execute one instruction; returns the next pc, 'exit', or two successors. */
  private step(pc: number, st: State): number | 'exit' | { fall: number; jump: number; jumpState: State } {
    const d = this.info[pc]!;
    const insn = this.at[pc]!;
    switch (d.kind) {
      case 'alu':
        this.alu(pc, st, insn, d);
        return pc + 1;
      case 'end': {
        // le is a truncation on this little-endian machine; a swap keeps only the width
        const v = this.read(st, pc, insn.dst);
        let r: Reg = d.width === 64 ? UNKNOWN : scalar(0, 2 ** d.width - 1);
        if (v.t === 's' && d.op === 'le') r = d.width === 64 ? v : d.width === 32 ? trunc32(v) : v.hi < 2 ** 16 ? v : r;
        this.write(st, pc, insn.dst, r);
        return pc + 1;
      }
      case 'lddw':
        this.write(st, pc, insn.dst, this.lddw(pc, insn, d.op));
        return pc + 2;
      case 'ld':
        throw new Fail(pc, 'legacy packet access (LD ABS/IND) is not supported');
      case 'ldx': {
        const v = this.access(st, pc, insn.src, insn.off, d.width / 8, 'read');
        this.write(st, pc, insn.dst, d.op === 'memsx' ? UNKNOWN : v);
        return pc + 1;
      }
      case 'st':
        this.access(st, pc, insn.dst, insn.off, d.width / 8, 'write', d.width === 64 && insn.imm >= 0 ? konst(insn.imm) : UNKNOWN);
        return pc + 1;
      case 'stx':
        this.access(st, pc, insn.dst, insn.off, d.width / 8, 'write', this.read(st, pc, insn.src));
        return pc + 1;
      case 'atomic': {
        const src = this.read(st, pc, insn.src);
        if (src.t !== 's') throw new Fail(pc, `atomic operand r${insn.src} must be a scalar, not a ${typeName(src)}`);
        if (d.op === 'cmpxchg') this.read(st, pc, 0);
        this.access(st, pc, insn.dst, insn.off, d.width / 8, 'read');
        // contexts, map values and the stack are 8-byte aligned, so the offset decides; a
        // misaligned atomic can split a cache line (a bus lock, fatal under split-lock detection)
        const p = st.regs[insn.dst] as { lo: number; hi: number };
        if (p.lo !== p.hi || (p.lo + insn.off) % (d.width / 8) !== 0) {
          throw new Fail(pc, `misaligned atomic access: offset ${rangeText(p.lo + insn.off, p.hi + insn.off)} is not ${d.width / 8}-byte aligned`);
        }
        this.access(st, pc, insn.dst, insn.off, d.width / 8, 'write', UNKNOWN);
        const res = d.width === 32 ? U32 : UNKNOWN;
        if (d.op === 'cmpxchg') this.write(st, pc, 0, res);
        else if (d.fetch) this.write(st, pc, insn.src, res);
        return pc + 1;
      }
      case 'call':
        if (d.op !== 'helper') throw new Fail(pc, `${d.op === 'local' ? 'BPF-to-BPF calls' : 'kfunc calls'} are not supported`);
        this.call(pc, st, insn.imm);
        return pc + 1;
      case 'exit':
        this.read(st, pc, 0);
        return 'exit';
      case 'ja':
        return this.target(pc)!;
      case 'jmp':
        return this.branch(pc, st, insn, d);
    }
  }

  private lddw(pc: number, insn: BpfInsn, op: string): Reg {
    if (op === 'imm64') {
      const v = insn.imm64 === undefined ? BigInt(insn.imm) : BigInt.asUintN(64, insn.imm64);
      return v >= 0n && v <= BigInt(SAFE) ? konst(Number(v)) : UNKNOWN;
    }
    const hi = insn.imm64 === undefined ? 0 : Number(BigInt.asIntN(32, BigInt.asUintN(64, insn.imm64) >> 32n));
    if (MAP_LDDW.has(op)) {
      // the static checks made sure the map exists
      if (op === 'map_by_fd' || op === 'map_by_idx') return { t: 'map', map: insn.imm };
      return { t: 'mv', map: insn.imm, lo: hi, hi, nul: false, id: 0 };
    }
    throw new Fail(pc, `lddw ${op} is not supported`);
  }

  private alu(pc: number, st: State, insn: BpfInsn, d: Extract<InsnInfo, { kind: 'alu' }>): void {
    const w32 = d.width === 32;
    const shift = d.op === 'lsh' || d.op === 'rsh' || d.op === 'arsh';
    // immediates: ALU32 uses the low 32 bits, shifts mask the amount, ALU64 sign-extends
    let src: Reg;
    let negImm: number | undefined;
    if (d.source === 'reg') src = this.read(st, pc, insn.src);
    else if (shift) src = konst(insn.imm & (w32 ? 31 : 63));
    else if (w32) src = konst(insn.imm >>> 0);
    else if (insn.imm >= 0) src = konst(insn.imm);
    else [src, negImm] = [UNKNOWN, insn.imm];
    if (d.op === 'mov') {
      this.write(st, pc, insn.dst, w32 ? (src.t === 's' ? trunc32(src) : U32) : src);
      return;
    }
    if (d.op === 'movsx') {
      // sign extension from `from` bits changes nothing when that sign bit is clear
      const v = src.t === 's' ? (w32 ? trunc32(src) : src) : undefined;
      this.write(st, pc, insn.dst, v && v.hi < 2 ** (d.from! - 1) ? v : w32 ? U32 : UNKNOWN);
      return;
    }
    const dst = this.read(st, pc, insn.dst);
    if ((dst.t === 'mv' && dst.nul) || (src.t === 'mv' && src.nul)) {
      throw new Fail(pc, 'arithmetic on a map value pointer that may be null: null-check it first');
    }
    if (dst.t === 'map' || src.t === 'map') throw new Fail(pc, 'arithmetic on a map pointer is not allowed');
    if (w32) {
      const a = dst.t === 's' ? trunc32(dst) : U32;
      const b = src.t === 's' ? trunc32(src) : U32;
      this.write(st, pc, insn.dst, scalarOp(d.op, a, b, true, undefined));
      return;
    }
    const isPtr = (r: Reg): r is Extract<Reg, { lo: number }> & { t: 'fp' | 'ctx' | 'mv' } => r.t === 'fp' || r.t === 'ctx' || r.t === 'mv';
    if (isPtr(dst) || isPtr(src)) {
      // pointer +/- scalar keeps the pointer with an adjusted offset range; anything else is a scalar
      if (isPtr(dst) && src.t === 's' && (d.op === 'add' || d.op === 'sub')) {
        const [lo, hi] = d.source === 'imm' ? [insn.imm, insn.imm] : [src.lo, src.hi];
        this.write(st, pc, insn.dst, movePointer(pc, dst, d.op === 'add' ? lo : -hi, d.op === 'add' ? hi : -lo));
        return;
      }
      if (isPtr(src) && dst.t === 's' && d.op === 'add') {
        this.write(st, pc, insn.dst, movePointer(pc, src, dst.lo, dst.hi));
        return;
      }
      this.write(st, pc, insn.dst, UNKNOWN);
      return;
    }
    this.write(st, pc, insn.dst, scalarOp(d.op, dst as SReg, src as SReg, false, negImm));
  }

  private branch(pc: number, st: State, insn: BpfInsn, d: Extract<InsnInfo, { kind: 'jmp' }>): number | { fall: number; jump: number; jumpState: State } {
    const a = this.read(st, pc, insn.dst);
    // JMP32 compares the low 32 bits with the immediate's 32 bits; ALU64 sign-extends it
    const b: Reg = d.source === 'reg' ? this.read(st, pc, insn.src) : d.width === 32 ? konst(insn.imm >>> 0) : insn.imm >= 0 ? konst(insn.imm) : UNKNOWN;
    const fall = pc + 1;
    const jump = this.target(pc)!;
    const both = (): { fall: number; jump: number; jumpState: State } => ({ fall, jump, jumpState: cloneState(st) });
    // null check on a map-value-or-null pointer
    if (a.t === 'mv' && a.nul && d.source === 'imm' && insn.imm === 0 && d.width === 64 && (d.op === 'jeq' || d.op === 'jne')) {
      const js = cloneState(st);
      const [isNull, nonNull] = d.op === 'jeq' ? [js, st] : [st, js];
      markNull(isNull, a.id, true);
      markNull(nonNull, a.id, false);
      return { fall, jump, jumpState: js };
    }
    if (a.t !== 's' || b.t !== 's' || d.op === 'jset') return both();
    // signed = unsigned while both sign bits are clear; a 32-bit comparison is the 64-bit one
    // when both values fit in 32 bits
    const signed = d.op.startsWith('js');
    const limit = d.width === 32 ? (signed ? 2 ** 31 - 1 : U32MAX) : signed ? SAFE : Infinity;
    if (a.hi > limit || b.hi > limit) return both();
    const op = (signed ? 'j' + d.op.slice(2) : d.op) as 'jeq' | 'jne' | 'jgt' | 'jge' | 'jlt' | 'jle';
    const t = refine(op, a, b);
    const f = refine(NEGATE[op], a, b);
    if (!t) return fall; // never taken
    if (!f) return jump; // always taken
    const js = cloneState(st);
    applyRefine(js, insn, d.source === 'reg', t);
    applyRefine(st, insn, d.source === 'reg', f);
    return { fall, jump, jumpState: js };
  }

  private call(pc: number, st: State, id: number): void {
    const h = this.helpers.get(id);
    if (!h) throw new Fail(pc, `unknown helper ${id}`);
    let map: MapSpec | undefined;
    h.args.forEach((kind, i) => {
      const r = i + 1;
      const v = st.regs[r]!;
      const bad = (want: string): never => {
        throw new Fail(pc, `helper ${h.name} arg${r} (r${r}): expected ${want}, got ${typeName(v)}`);
      };
      if (v.t === 'u') bad(kind === 'scalar' ? 'an initialized scalar' : kind);
      switch (kind) {
        case 'ctx':
          if (v.t !== 'ctx') bad('context pointer');
          break;
        case 'map':
          if (v.t !== 'map') bad('map pointer');
          map = this.maps.get((v as Extract<Reg, { t: 'map' }>).map);
          break;
        case 'scalar':
          if (v.t !== 's') bad('scalar');
          break;
        case 'stack-ptr': {
          if (v.t !== 'fp') bad('stack pointer');
          const p = v as Extract<Reg, { t: 'fp' }>;
          if (p.lo !== p.hi || p.lo < -STACK || p.lo >= 0) throw new Fail(pc, `helper ${h.name} arg${r} (r${r}): stack pointer offset ${p.lo}..${p.hi} outside [-512, 0)`);
          break;
        }
        case 'map-key':
        case 'map-value': {
          if (!map) throw new Fail(pc, `helper ${h.name} arg${r} (r${r}): ${kind} without a preceding map argument`);
          if (v.t !== 'fp') bad(`stack pointer to the ${kind === 'map-key' ? 'key' : 'value'}`);
          const size = kind === 'map-key' ? map.keySize : map.valueSize;
          this.checkStack(st, pc, v as Extract<Reg, { t: 'fp' }>, 0, size, true, `helper ${h.name} arg${r} (r${r}) ${kind}`);
          break;
        }
      }
    });
    for (let r = 1; r <= 5; r++) st.regs[r] = UNINIT;
    if (h.ret === 'scalar') st.regs[0] = UNKNOWN;
    else {
      if (!map) throw new Fail(pc, `helper ${h.name} returns a map value but has no map argument`);
      // an older unchecked result of this same call site can no longer be told apart: demote it
      const stale = (r: Reg | null): Reg | null => (r && r.t === 'mv' && r.nul && r.id === pc + 1 ? UNKNOWN : r);
      for (let i = 0; i < 10; i++) st.regs[i] = stale(st.regs[i]!)!;
      for (let i = 0; i < st.spill.length; i++) st.spill[i] = stale(st.spill[i]!);
      st.regs[0] = { t: 'mv', map: map.index, lo: 0, hi: 0, nul: true, id: pc + 1 };
    }
  }

  /** Bounds/initialization check of [ptr+off, +size) on the stack; returns the start offset. */
  private checkStack(st: State, pc: number, p: { lo: number; hi: number }, off: number, size: number, read: boolean, what: string): number {
    if (p.lo !== p.hi) throw new Fail(pc, `${what}: variable-offset stack access (offset ${p.lo}..${p.hi})`);
    const a = p.lo + off;
    if (a < -STACK || a + size > 0) throw new Fail(pc, `${what}: stack access out of bounds: offset ${a} size ${size} outside [-512, 0)`);
    if (read) {
      for (let i = 0; i < size; i++) {
        if (!st.init[a + i + STACK]) throw new Fail(pc, `${what}: read of uninitialized stack at offset ${a + i} (slot never written)`);
      }
    }
    return a;
  }

  private access(st: State, pc: number, r: number, off: number, size: number, mode: 'read' | 'write', value?: Reg): Reg {
    const p = st.regs[r]!;
    const what = `invalid ${mode} via r${r}${off < 0 ? '' : '+'}${off}`;
    switch (p.t) {
      case 'u':
        throw new Fail(pc, `r${r} is read before it is initialized` + (r >= 1 && r <= 5 ? ' (r1-r5 are clobbered by calls)' : ''));
      case 's':
        throw new Fail(pc, `${what}: r${r} is a scalar, not a pointer`);
      case 'map':
        throw new Fail(pc, `${what}: cannot dereference a map pointer`);
      case 'fp': {
        const a = this.checkStack(st, pc, p, off, size, mode === 'read', what);
        const slot = (a + STACK) >> 3;
        if (mode === 'read') {
          const s = st.spill[slot];
          if (size === 8 && a % 8 === 0 && s) return s;
          return size === 8 ? UNKNOWN : scalar(0, 2 ** (size * 8) - 1);
        }
        for (let i = 0; i < size; i++) st.init[a + i + STACK] = 1;
        const last = (a + size - 1 + STACK) >> 3;
        for (let s = slot; s <= last; s++) st.spill[s] = null;
        if (size === 8 && a % 8 === 0 && value && value.t !== 'u' && !(value.t === 's' && value.hi === Infinity)) st.spill[slot] = value;
        return UNKNOWN;
      }
      case 'ctx':
      case 'mv': {
        if (p.t === 'mv' && p.nul) throw new Fail(pc, `${what}: possibly NULL map value pointer, a null check is required before dereference`);
        const limit = p.t === 'ctx' ? this.opts.contextSize : this.maps.get(p.map)!.valueSize;
        const lo = p.lo + off;
        const hi = p.hi + off;
        if (!(lo >= 0 && hi + size <= limit)) {
          const range = lo === hi ? `offset ${lo}` : `offset ${lo}..${hi}`;
          throw new Fail(pc, `${what}: ${p.t === 'ctx' ? 'context' : `map ${p.map} value`} access out of bounds: ${range} size ${size} (${p.t === 'ctx' ? 'context' : 'value'} is ${limit} bytes)`);
        }
        return size === 8 ? UNKNOWN : scalar(0, 2 ** (size * 8) - 1);
      }
    }
  }
}

// ------------------------------------------------------------------ pointer and scalar helpers
const bound = (x: number): string => (Math.abs(x) === Infinity ? (x < 0 ? '-inf' : 'inf') : `${x}`);
const rangeText = (lo: number, hi: number): string => (lo === hi ? bound(lo) : `${bound(lo)}..${bound(hi)}`);

/**
 * Pointer `p` moved by a scalar in [lo, hi] (negated for a subtraction); refused when the scalar
 * or the resulting offsets leave ±MAX_OFF. Both checks keep every sum here exact: without
 * them, offsets beyond 2^53 would round and a far excursion could come back "in bounds".
 */
function movePointer<P extends { lo: number; hi: number }>(pc: number, p: P, lo: number, hi: number): P {
  if (lo < -MAX_OFF || hi > MAX_OFF) throw new Fail(pc, `pointer arithmetic: the offset moves by ${rangeText(lo, hi)}, beyond ±${MAX_OFF} (bound the scalar first)`);
  const moved = { ...p, lo: p.lo + lo, hi: p.hi + hi };
  if (moved.lo < -MAX_OFF || moved.hi > MAX_OFF) throw new Fail(pc, `pointer arithmetic out of range: offset ${rangeText(moved.lo, moved.hi)} leaves ±${MAX_OFF}`);
  return moved;
}

const TWO32 = 2 ** 32;

/** The low 32 bits of a scalar: exact when its range lies within one 2^32-aligned window. */
function trunc32(r: SReg): SReg {
  return (r.hi === Infinity ? U32 : wrap(r.lo, r.hi, true)) as SReg;
}

/** The result of an operation whose exact (unwrapped) integer result lies in [lo, hi]. */
function wrap(lo: number, hi: number, w32: boolean): Reg {
  if (!w32) return lo >= 0 && hi <= SAFE ? scalar(lo, hi) : UNKNOWN;
  if (lo < -SAFE || hi > SAFE) return U32;
  const k = Math.floor(lo / TWO32);
  return Math.floor(hi / TWO32) === k ? scalar(lo - k * TWO32, hi - k * TWO32) : U32;
}

/** The smallest 2^k - 1 that is >= x (x <= 2^53 - 1): every bit a value <= x can have. */
function bitsOf(x: number): number {
  let m = 0;
  while (m < x) m = m * 2 + 1;
  return m;
}

/** Bitwise and/or/xor of two integers in [0, 2^53). */
function bitwise(op: 'and' | 'or' | 'xor', a: number, b: number): number {
  const f = op === 'and' ? (x: number, y: number) => x & y : op === 'or' ? (x: number, y: number) => x | y : (x: number, y: number) => x ^ y;
  return (f(Math.floor(a / TWO32), Math.floor(b / TWO32)) >>> 0) * TWO32 + (f(a >>> 0, b >>> 0) >>> 0);
}

/**
 * The range of `a op b` for scalars. In 32-bit operations `a` and `b` are the operands' low
 * 32 bits and the result is zero-extended; `negImm` is an ALU64 immediate below zero (`b` is
 * then unknown: sign-extended, it is ≥ 2^63).
 */
function scalarOp(op: AluOp, a: SReg, b: SReg, w32: boolean, negImm: number | undefined): Reg {
  const full = w32 ? U32 : UNKNOWN;
  const fin = a.hi !== Infinity && b.hi !== Infinity;
  const bits = w32 ? 32 : 64;
  switch (op) {
    case 'add':
      if (negImm !== undefined) return a.hi === Infinity ? UNKNOWN : wrap(a.lo + negImm, a.hi + negImm, false);
      return fin ? wrap(a.lo + b.lo, a.hi + b.hi, w32) : full;
    case 'sub':
      if (negImm !== undefined) return a.hi === Infinity ? UNKNOWN : wrap(a.lo - negImm, a.hi - negImm, false);
      return fin ? wrap(a.lo - b.hi, a.hi - b.lo, w32) : full;
    case 'mul':
      return fin && a.hi * b.hi <= SAFE ? wrap(a.lo * b.lo, a.hi * b.hi, w32) : full;
    case 'div': // x / 0 = 0, and never more than x
      if (a.hi === Infinity) return full;
      return b.lo > 0 ? scalar(Math.floor(a.lo / b.hi), Math.floor(a.hi / b.lo)) : scalar(0, a.hi);
    case 'mod': // x % 0 = x, x % y = x when x < y, and never more than x or y - 1
      if (a.hi < b.lo) return a;
      if (b.lo > 0 && b.hi !== Infinity) return scalar(0, Math.min(a.hi, b.hi - 1));
      return a.hi === Infinity ? full : scalar(0, a.hi);
    case 'sdiv': case 'smod': // signed = unsigned when both sign bits are clear
      return fin && a.hi < 2 ** (bits - 1) && b.hi < 2 ** (bits - 1) ? scalarOp(op === 'sdiv' ? 'div' : 'mod', a, b, w32, undefined) : full;
    case 'and':
      if (negImm !== undefined) return a.hi === Infinity ? UNKNOWN : scalar(0, a.hi);
      if (a.lo === a.hi && b.lo === b.hi) return konst(bitwise('and', a.lo, b.lo));
      // a mask that keeps every bit the other side can have changes nothing
      if (b.lo === b.hi && a.hi !== Infinity && bitwise('and', b.lo, bitsOf(a.hi)) === bitsOf(a.hi)) return a;
      if (a.lo === a.hi && b.hi !== Infinity && bitwise('and', a.lo, bitsOf(b.hi)) === bitsOf(b.hi)) return b;
      return scalar(0, Math.min(a.hi, b.hi));
    case 'or': case 'xor':
      if (!fin) return full;
      if (a.lo === a.hi && b.lo === b.hi) return konst(bitwise(op, a.lo, b.lo));
      return scalar(op === 'or' ? Math.max(a.lo, b.lo) : 0, bitsOf(Math.max(a.hi, b.hi)));
    case 'lsh':
      if (a.hi === 0) return a;
      if (!fin || b.hi >= bits || a.hi * 2 ** b.hi > SAFE) return full;
      return wrap(a.lo * 2 ** b.lo, a.hi * 2 ** b.hi, w32);
    case 'rsh': case 'arsh': {
      // arsh is a logical shift while the sign bit is clear
      if (op === 'arsh' && a.hi >= 2 ** (bits - 1)) return full;
      // the amount is taken modulo the width: unknown amounts still never grow the value
      const [slo, shi] = b.hi < bits ? [b.lo, b.hi] : [0, bits - 1];
      if (a.hi === Infinity) return slo === 0 ? UNKNOWN : scalar(0, 2 ** (64 - slo) - 1);
      return scalar(Math.floor(a.lo / 2 ** shi), Math.floor(a.hi / 2 ** slo));
    }
    case 'neg':
      if (a.hi === 0) return a;
      return w32 && a.lo > 0 ? scalar(TWO32 - a.hi, TWO32 - a.lo) : full;
    default:
      return full;
  }
}

const NEGATE = { jeq: 'jne', jne: 'jeq', jgt: 'jle', jle: 'jgt', jge: 'jlt', jlt: 'jge' } as const;

/** Ranges of (dst, src) when `dst op src` holds, or null when it cannot hold. */
function refine(op: keyof typeof NEGATE, a: SReg, b: SReg): [SReg, SReg] | null {
  let [alo, ahi, blo, bhi] = [a.lo, a.hi, b.lo, b.hi];
  switch (op) {
    case 'jeq':
      alo = blo = Math.max(alo, blo);
      ahi = bhi = Math.min(ahi, bhi);
      break;
    case 'jne':
      if (alo === ahi && blo === bhi && alo === blo) return null;
      if (blo === bhi) { if (alo === blo) alo++; if (ahi === blo) ahi--; }
      if (alo === ahi) { if (blo === alo) blo++; if (bhi === alo) bhi--; }
      break;
    case 'jgt': alo = Math.max(alo, blo + 1); bhi = Math.min(bhi, ahi - 1); break;
    case 'jge': alo = Math.max(alo, blo); bhi = Math.min(bhi, ahi); break;
    case 'jlt': ahi = Math.min(ahi, bhi - 1); blo = Math.max(blo, alo + 1); break;
    case 'jle': ahi = Math.min(ahi, bhi); blo = Math.max(blo, alo); break;
  }
  if (alo > ahi || blo > bhi) return null;
  const mk = (lo: number, hi: number): SReg => ({ t: 's', lo, hi: hi > SAFE ? Infinity : hi });
  return [mk(alo, ahi), mk(blo, bhi)];
}

function applyRefine(st: State, insn: BpfInsn, reg: boolean, [a, b]: [SReg, SReg]): void {
  st.regs[insn.dst] = a;
  if (reg && insn.src !== insn.dst) st.regs[insn.src] = b;
}

function markNull(st: State, id: number, isNull: boolean): void {
  const fix = (r: Reg | null): Reg | null =>
    r && r.t === 'mv' && r.nul && r.id === id ? (isNull ? konst(0) : { ...r, nul: false, id: 0 }) : r;
  for (let i = 0; i < 10; i++) st.regs[i] = fix(st.regs[i]!)!;
  for (let i = 0; i < st.spill.length; i++) st.spill[i] = fix(st.spill[i]!);
}

