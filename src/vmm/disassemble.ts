/** x86 disassembly for crash reports and tracing, via iced-x86 (WebAssembly), in GAS/AT&T syntax. */
import { createRequire } from 'node:module';
import type * as Iced from 'iced-x86';

// Loaded on first use: the wasm module takes ~100 ms to compile, and every vCPU thread imports this
// file for crash reports it will usually never write.
let iced: typeof Iced | undefined;
const loadIced = () => (iced ??= createRequire(import.meta.url)('iced-x86') as typeof Iced);

/** One decoded instruction. */
export interface DisassembledInstruction {
  /** Address of the first byte, as passed in (no segment arithmetic). */
  ip: bigint;
  /** The instruction's bytes (a copy: guest memory may change after the report is taken). */
  bytes: Uint8Array;
  /** AT&T text, or `(bad)` when `invalid`. */
  text: string;
  /** The bytes do not form a valid instruction, or the buffer ended mid-instruction. */
  invalid: boolean;
}

// iced objects live in wasm memory the GC never frees; one formatter and one instruction buffer are
// reused for the process lifetime, and each call's decoder is freed before returning.
let formatter: Iced.Formatter | undefined;
let scratch: Iced.Instruction | undefined;

function getFormatter(): Iced.Formatter {
  if (!formatter) {
    const { Formatter, FormatterSyntax } = loadIced();
    formatter = new Formatter(FormatterSyntax.Gas);
    formatter.uppercaseHex = false;
    formatter.branchLeadingZeros = false;
    formatter.smallHexNumbersInDecimal = false; // objdump style: $0x1, never $1
  }
  return formatter;
}

/**
 * Decodes up to `maxInstructions` instructions from `bytes`, the first at `ip`.
 *
 * Each invalid byte yields a one-byte `(bad)` entry and decoding resumes at the next byte; an instruction
 * cut off by the end of the buffer is reported the same way rather than dropped, so a crash report always
 * shows what was there. Bitness is validated at runtime because callers derive it from guest CPU state.
 */
export function disassemble(bytes: Uint8Array, ip: bigint, bitness: 16 | 32 | 64, maxInstructions = 1): DisassembledInstruction[] {
  if (bitness !== 16 && bitness !== 32 && bitness !== 64) throw new RangeError(`bitness must be 16, 32 or 64, got ${String(bitness)}`);
  const out: DisassembledInstruction[] = [];
  if (bytes.length === 0 || maxInstructions <= 0) return out;
  const { Decoder, DecoderOptions, Instruction } = loadIced();
  const fmt = getFormatter();
  const instr = (scratch ??= new Instruction());
  const decoder = new Decoder(bitness, bytes, DecoderOptions.None);
  try {
    while (decoder.canDecode && out.length < maxInstructions) {
      const start = decoder.position;
      const at = BigInt.asUintN(64, ip + BigInt(start));
      decoder.ip = at; // repositioning below doesn't move ip, and relative branch targets depend on it
      decoder.decodeOut(instr);
      const invalid = instr.isInvalid;
      // Like objdump, resync one byte past garbage: iced may swallow the start of the next valid instruction.
      const len = invalid ? 1 : Math.max(1, decoder.position - start);
      decoder.position = start + len;
      out.push({
        ip: at,
        bytes: bytes.slice(start, start + len),
        text: invalid ? '(bad)' : fmt.format(instr),
        invalid,
      });
    }
  } finally {
    decoder.free();
  }
  return out;
}

/** One listing line, e.g. `0x401000: 0f 0b             ud2`; byte column sized for six bytes, longer ones push the text right. */
export function formatInstruction(insn: DisassembledInstruction): string {
  const hexBytes = Array.from(insn.bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
  return `0x${insn.ip.toString(16)}: ${hexBytes.padEnd(17)} ${insn.text}`;
}

/** Disassembles and formats in one step: one line per instruction, joined with newlines. */
export function disassembleToString(bytes: Uint8Array, ip: bigint, bitness: 16 | 32 | 64, maxInstructions = 1): string {
  return disassemble(bytes, ip, bitness, maxInstructions).map(formatInstruction).join('\n');
}
