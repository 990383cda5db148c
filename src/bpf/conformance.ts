/**
 * The plugin side of the bpf_conformance test suite (github.com/Alan-Jowett/bpf_conformance).
 *
 * The suite starts the plugin with argv[1] = the input memory as hex bytes ("00  01  ...", empty
 * when the test has none) and argv[2] = its plugin options (often empty), writes the program as
 * hex bytes on one line of stdin and closes it, then parses stdout as a hex number (r0) when the
 * exit status is 0. Like uBPF's plugin, a `--program <hex>` option supplies the program instead
 * of stdin. Output is r0 in lowercase hex without a 0x prefix, newline-terminated.
 *
 * The helper table mirrors the suite's reference plugins: 0 gather_bytes, 1 memfrob, 2 no_op,
 * 3 sqrti, 4 strcmp_ext, 5 unwind (returning 0 ends the program with r0 = 0).
 */
import { BpfRuntimeError, runProgram, type BpfHelper } from './interpreter.js';

/** Bad plugin input (hex, arguments): reported as one line. */
export class ConformanceInputError extends Error {}

/**
 * Hex bytes separated by whitespace ("b7 00 01" or "b7  00  01  "), or a run of hex digit pairs
 * ("b70001"), or any mix; an optional 0x prefix per token is accepted.
 */
export function parseHexBytes(text: string, what: string): Uint8Array {
  const out: number[] = [];
  for (let tok of text.trim().split(/\s+/)) {
    if (tok === '') continue;
    if (/^0x/i.test(tok)) tok = tok.slice(2);
    if (!/^[0-9a-f]+$/i.test(tok)) throw new ConformanceInputError(`bad ${what} hex: ${JSON.stringify(tok.slice(0, 20))} is not hexadecimal`);
    if (tok.length <= 2) out.push(parseInt(tok, 16));
    else {
      if (tok.length % 2 !== 0) throw new ConformanceInputError(`bad ${what} hex: ${JSON.stringify(tok.slice(0, 20))} has an odd number of digits`);
      for (let i = 0; i < tok.length; i += 2) out.push(parseInt(tok.slice(i, i + 2), 16));
    }
  }
  return Uint8Array.from(out);
}

/** The helpers the suite's tests call. */
export function conformanceHelpers(): Map<number, BpfHelper> {
  const cstr = (ctx: Parameters<BpfHelper>[5], addr: bigint): Uint8Array => {
    const bytes: number[] = [];
    for (let a = addr; ; a++) {
      const b = ctx.read(a, 1)[0]!;
      if (b === 0) return Uint8Array.from(bytes);
      bytes.push(b);
    }
  };
  return new Map<number, BpfHelper>([
    [0, (a, b, c, d, e) => ((a & 0xffn) << 32n) | ((b & 0xffn) << 24n) | ((c & 0xffn) << 16n) | ((d & 0xffn) << 8n) | (e & 0xffn)],
    [1, (a, b, _c, _d, _e, ctx) => {
      if (b > 0n) {
        const v = ctx.writable(a, Number(b));
        for (let i = 0; i < v.length; i++) v[i] ^= 42;
      }
      return 0n;
    }],
    [2, () => 0n],
    [3, (a) => {
      // floor(sqrt(a)) exactly, for all 64-bit a
      if (a < 2n) return a;
      let x = BigInt(Math.floor(Math.sqrt(Number(a))));
      while (x * x > a) x--;
      while ((x + 1n) * (x + 1n) <= a) x++;
      return x;
    }],
    [4, (a, b, _c, _d, _e, ctx) => {
      const x = cstr(ctx, a);
      const y = cstr(ctx, b);
      for (let i = 0; ; i++) {
        const p = x[i] ?? 0;
        const q = y[i] ?? 0;
        if (p !== q) return BigInt.asUintN(64, BigInt(p - q));
        if (p === 0) return 0n;
      }
    }],
    [5, (a, _b, _c, _d, _e, ctx) => {
      if (a === 0n) ctx.exit();
      return a;
    }],
  ]);
}

export interface PluginOutcome {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface PluginInput {
  /** argv[1]: memory hex (may be empty). */
  memoryHex?: string;
  /** --program: program hex; when absent, `stdin` is used. */
  programHex?: string;
  stdin?: string;
  maxInstructions?: number;
}

/** Runs one conformance test case and says what the plugin process should print and return. */
export function conformancePlugin(input: PluginInput): PluginOutcome {
  try {
    const memory = parseHexBytes(input.memoryHex ?? '', 'memory');
    const programText = input.programHex ?? input.stdin ?? '';
    const program = parseHexBytes(programText, 'program');
    if (program.length === 0) throw new ConformanceInputError('empty program (expected hex bytes on stdin or --program)');
    if (program.length % 8 !== 0) throw new ConformanceInputError(`program is ${program.length} bytes, not a multiple of 8`);
    const { r0 } = runProgram(program, { memory, helpers: conformanceHelpers(), maxInstructions: input.maxInstructions });
    return { stdout: `${r0.toString(16)}\n`, stderr: '', exitCode: 0 };
  } catch (e) {
    if (e instanceof ConformanceInputError || e instanceof BpfRuntimeError) {
      return { stdout: '', stderr: `${e.message.split('\n')[0]}\n`, exitCode: 1 };
    }
    throw e;
  }
}
