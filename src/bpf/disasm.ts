/**
 * eBPF disassembler producing the LLVM (`llvm-objdump -d`) pseudo-C syntax,
 * with these fixed choices so the output is canonical and re-assemblable by
 * {@link ./asm.js}:
 *
 * - immediates and offsets are signed decimal; only the `lddw` 64-bit
 *   immediate is unsigned hex (`r1 = 0x1234567890 ll`);
 * - memory operands are `(rN + off)` / `(rN - off)` with spaces;
 * - jump targets are relative slot counts: `goto +1`, `if r1 > r2 goto -3`,
 *   `gotol +100` (JMP32 JA), pseudo-calls `call pc+3`, kfuncs `call kfunc 42`;
 * - 32-bit ALU/JMP32 operands use `wN`; loads, stores, byte swaps and
 *   non-fetching atomics always use `rN` (as the kernel/LLVM do), while
 *   fetching atomics, xchg and cmpxchg use `wN` for 32-bit widths;
 * - pseudo `lddw` sources use the RFC 9669 names: `r1 = map_by_fd(3) ll`,
 *   `r1 = map_val_by_idx(2) + 16 ll`, `r1 = var_addr(7) ll`, `r1 = code_addr(4) ll`;
 * - legacy packet loads: `r0 = *(u16 *)skb[12]`, `r0 = *(u8 *)skb[r1 + 14]`.
 * @module
 */
import { decodeProgram, describe, lddwHalves, slotCount, type BpfInsn, type InsnInfo } from './isa.js';

/** ALU operator spelled as a compound assignment. */
export const ALU_SYMBOLS = {
  add: '+=', sub: '-=', mul: '*=', div: '/=', sdiv: 's/=', or: '|=', and: '&=', lsh: '<<=', rsh: '>>=',
  mod: '%=', smod: 's%=', xor: '^=', mov: '=', arsh: 's>>=',
} as const;
/** Conditional jump comparison operators. */
export const JMP_SYMBOLS = {
  jeq: '==', jgt: '>', jge: '>=', jset: '&', jne: '!=', jsgt: 's>', jsge: 's>=', jlt: '<', jle: '<=', jslt: 's<', jsle: 's<=',
} as const;
/** Non-fetching atomic operators. */
export const ATOMIC_SYMBOLS = { add: '+=', or: '|=', and: '&=', xor: '^=' } as const;

const rel = (n: number): string => (n < 0 ? `${n}` : `+${n}`);
const addr = (reg: number, off: number): string => `r${reg} ${off < 0 ? '-' : '+'} ${Math.abs(off)}`;

/** Render one (valid) instruction; throws InvalidInstructionError for reserved encodings. `index` is its slot number. */
export function formatInsn(insn: BpfInsn, index = 0): string {
  return render(insn, describe(insn, index));
}

function render(insn: BpfInsn, d: InsnInfo): string {
  const { dst, src, off, imm } = insn;
  switch (d.kind) {
    case 'alu': {
      const p = d.width === 64 ? 'r' : 'w';
      if (d.op === 'neg') return `${p}${dst} = -${p}${dst}`;
      if (d.op === 'movsx') return `${p}${dst} = (s${d.from})${p}${src}`;
      return `${p}${dst} ${ALU_SYMBOLS[d.op]} ${d.source === 'reg' ? `${p}${src}` : imm}`;
    }
    case 'end':
      return `r${dst} = ${d.op}${d.width} r${dst}`;
    case 'jmp': {
      const p = d.width === 64 ? 'r' : 'w';
      return `if ${p}${dst} ${JMP_SYMBOLS[d.op]} ${d.source === 'reg' ? `${p}${src}` : imm} goto ${rel(off)}`;
    }
    case 'ja':
      return d.width === 64 ? `goto ${rel(off)}` : `gotol ${rel(imm)}`;
    case 'call':
      return d.op === 'helper' ? `call ${imm}` : d.op === 'local' ? `call pc${rel(imm)}` : `call kfunc ${imm}`;
    case 'exit':
      return 'exit';
    case 'lddw': {
      const [lo, hi] = lddwHalves(insn);
      if (d.op === 'imm64') {
        const v = BigInt.asUintN(64, (BigInt(hi) << 32n) | BigInt(lo >>> 0));
        return `r${dst} = 0x${v.toString(16)} ll`;
      }
      const extra = d.op === 'map_val_by_fd' || d.op === 'map_val_by_idx' ? ` ${hi < 0 ? '-' : '+'} ${Math.abs(hi)}` : '';
      return `r${dst} = ${d.op}(${lo})${extra} ll`;
    }
    case 'ld':
      return `r0 = *(u${d.width} *)skb[${d.op === 'abs' ? imm : addr(src, imm)}]`;
    case 'ldx':
      return `r${dst} = *(${d.op === 'memsx' ? 's' : 'u'}${d.width} *)(${addr(src, off)})`;
    case 'st':
      return `*(u${d.width} *)(${addr(dst, off)}) = ${imm}`;
    case 'stx':
      return `*(u${d.width} *)(${addr(dst, off)}) = r${src}`;
    case 'atomic': {
      const p = d.width === 64 ? 'r' : 'w';
      if (d.op === 'xchg') return `${p}${src} = xchg${d.width === 64 ? '_64' : '32_32'}(${addr(dst, off)}, ${p}${src})`;
      if (d.op === 'cmpxchg') return `${p}0 = cmpxchg${d.width === 64 ? '_64' : '32_32'}(${addr(dst, off)}, ${p}0, ${p}${src})`;
      if (d.fetch) return `${p}${src} = atomic_fetch_${d.op}((u${d.width} *)(${addr(dst, off)}), ${p}${src})`;
      return `lock *(u${d.width} *)(${addr(dst, off)}) ${ATOMIC_SYMBOLS[d.op]} r${src}`;
    }
  }
}

/**
 * Disassemble a program (raw little-endian bytes or decoded instructions)
 * into one text line per instruction; `lddw` yields a single line although
 * it occupies two slots, so jump offsets count slots, not lines.
 */
export function disassemble(program: Uint8Array | readonly BpfInsn[]): string[] {
  const insns = program instanceof Uint8Array ? decodeProgram(program) : program;
  const out: string[] = [];
  let slot = 0;
  for (const insn of insns) {
    out.push(formatInsn(insn, slot));
    slot += slotCount(insn);
  }
  return out;
}
