/**
 * Frames of the upcall host endpoint (docs/upcall-device.md, "Host endpoint protocol"): a 16-byte
 * header (magic "KTUC", type, flags, request id, payload length) and at most 64 KiB of payload,
 * all little endian. {@link FrameReader} splits a byte stream into frames, validating each header
 * as soon as it is complete and never holding more than one header plus one payload.
 *
 * @module
 */

/** "KTUC" read as a little-endian u32. */
export const FRAME_MAGIC = 0x4355544b;
export const FRAME_HEADER_BYTES = 16;
/** Largest payload of one frame. */
export const FRAME_MAX_PAYLOAD = 65536;
/** Protocol version in HELLO / HELLO_OK. */
export const ENDPOINT_PROTOCOL_VERSION = 1;
/** Largest program one LOAD carries (the payload also holds the u32 hook). */
export const ENDPOINT_MAX_PROGRAM = 65520;
/** Longest ERROR message, in bytes. */
const MAX_ERROR_TEXT = 1024;

/** Message types. */
export const MSG = {
  HELLO: 1,
  HELLO_OK: 2,
  LOAD: 3,
  UNLOAD: 4,
  RESULT: 5,
  AFFINITY_EVENT: 6,
  ERROR: 7,
} as const;
const MAX_TYPE = 7;

/** One frame. */
export interface Frame {
  type: number;
  /** Request id chosen by the client, echoed in replies; 0 for unsolicited events. */
  id: number;
  payload: Uint8Array;
}

/** The stream broke the framing rules: the connection cannot go on. */
export class FrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FrameError';
  }
}

/** Encodes one frame. */
export function encodeFrame(type: number, id: number, payload: Uint8Array = new Uint8Array(0)): Buffer {
  if (payload.length > FRAME_MAX_PAYLOAD) throw new RangeError(`frame payload of ${payload.length} bytes exceeds ${FRAME_MAX_PAYLOAD}`);
  const out = Buffer.alloc(FRAME_HEADER_BYTES + payload.length);
  out.writeUInt32LE(FRAME_MAGIC, 0);
  out.writeUInt16LE(type, 4);
  out.writeUInt16LE(0, 6);
  out.writeUInt32LE(id >>> 0, 8);
  out.writeUInt32LE(payload.length, 12);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

/**
 * Splits a byte stream into frames. `push` returns the frames a chunk completed and, for a wrong
 * magic, non-zero flags, an unknown type or an oversized length, the {@link FrameError} that
 * ended the stream after them: frames before a bad header are still good, nothing after it is
 * (the stream position means nothing any more), and every later push returns the same error.
 */
export class FrameReader {
  private header = Buffer.alloc(FRAME_HEADER_BYTES);
  private headerFill = 0;
  private payload: Buffer | undefined;
  private payloadFill = 0;
  private type = 0;
  private id = 0;

  /** Whether part of a frame has arrived and the rest has not. */
  get partial(): boolean {
    return this.headerFill > 0;
  }

  private error: FrameError | undefined;

  push(chunk: Uint8Array): { frames: Frame[]; error?: FrameError } {
    const frames: Frame[] = [];
    if (this.error) return { frames, error: this.error };
    try {
      this.split(chunk, frames);
    } catch (e) {
      if (!(e instanceof FrameError)) throw e;
      this.error = e;
    }
    return this.error ? { frames, error: this.error } : { frames };
  }

  private split(chunk: Uint8Array, frames: Frame[]): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.headerFill < FRAME_HEADER_BYTES) {
        const n = Math.min(FRAME_HEADER_BYTES - this.headerFill, chunk.length - at);
        this.header.set(chunk.subarray(at, at + n), this.headerFill);
        this.headerFill += n;
        at += n;
        if (this.headerFill < FRAME_HEADER_BYTES) break;
        const length = this.parseHeader();
        this.payload = Buffer.alloc(length);
        this.payloadFill = 0;
      }
      const payload = this.payload!;
      const n = Math.min(payload.length - this.payloadFill, chunk.length - at);
      payload.set(chunk.subarray(at, at + n), this.payloadFill);
      this.payloadFill += n;
      at += n;
      if (this.payloadFill === payload.length) {
        frames.push({ type: this.type, id: this.id, payload });
        this.headerFill = 0;
        this.payload = undefined;
      }
    }
  }

  private parseHeader(): number {
    const h = this.header;
    const magic = h.readUInt32LE(0);
    if (magic !== FRAME_MAGIC) throw new FrameError(`bad frame magic 0x${magic.toString(16)}`);
    const type = h.readUInt16LE(4);
    const flags = h.readUInt16LE(6);
    const length = h.readUInt32LE(12);
    if (flags !== 0) throw new FrameError(`frame flags must be 0, got 0x${flags.toString(16)}`);
    if (type < 1 || type > MAX_TYPE) throw new FrameError(`unknown frame type ${type}`);
    if (length > FRAME_MAX_PAYLOAD) throw new FrameError(`frame payload of ${length} bytes exceeds ${FRAME_MAX_PAYLOAD}`);
    this.type = type;
    this.id = h.readUInt32LE(8);
    return length;
  }
}

/** u32 fields, little endian. */
function u32s(...values: number[]): Buffer {
  const b = Buffer.alloc(4 * values.length);
  values.forEach((v, i) => b.writeUInt32LE(v >>> 0, 4 * i));
  return b;
}

/** HELLO: version, token length, token. */
export function helloPayload(token: Uint8Array = new Uint8Array(0)): Buffer {
  return Buffer.concat([u32s(ENDPOINT_PROTOCOL_VERSION, token.length), token]);
}

/** Parses HELLO; throws RangeError when malformed. */
export function parseHello(p: Uint8Array): { version: number; token: Uint8Array } {
  const b = Buffer.from(p.buffer, p.byteOffset, p.length);
  if (b.length < 8) throw new RangeError('HELLO payload shorter than 8 bytes');
  const len = b.readUInt32LE(4);
  if (len !== b.length - 8) throw new RangeError(`HELLO token length ${len} does not match the payload`);
  return { version: b.readUInt32LE(0), token: b.subarray(8) };
}

/** What HELLO_OK tells a client. */
export interface HelloOk {
  version: number;
  deviceVersion: number;
  vcpus: number;
  maxProgram: number;
}

export function helloOkPayload(h: HelloOk): Buffer {
  return u32s(h.version, h.deviceVersion, h.vcpus, h.maxProgram);
}

export function parseHelloOk(p: Uint8Array): HelloOk {
  const b = exact(p, 16, 'HELLO_OK');
  return { version: b.readUInt32LE(0), deviceVersion: b.readUInt32LE(4), vcpus: b.readUInt32LE(8), maxProgram: b.readUInt32LE(12) };
}

function checkHook(hook: number): void {
  if (!Number.isInteger(hook) || hook < 0 || hook > 0xffffffff) throw new RangeError(`hook must be a u32, got ${hook}`);
}

/** LOAD: hook, program. */
export function loadPayload(hook: number, program: Uint8Array): Buffer {
  checkHook(hook);
  if (program.length === 0) throw new RangeError('an empty program');
  if (program.length > ENDPOINT_MAX_PROGRAM) throw new RangeError(`program of ${program.length} bytes exceeds ${ENDPOINT_MAX_PROGRAM}`);
  return Buffer.concat([u32s(hook), program]);
}

export function parseLoad(p: Uint8Array): { hook: number; program: Uint8Array } {
  if (p.length < 5) throw new RangeError('LOAD needs a u32 hook and at least one program byte');
  const b = Buffer.from(p.buffer, p.byteOffset, p.length);
  return { hook: b.readUInt32LE(0), program: b.subarray(4) };
}

export function unloadPayload(hook: number): Buffer {
  checkHook(hook);
  return u32s(hook);
}

export function parseUnload(p: Uint8Array): { hook: number } {
  return { hook: exact(p, 4, 'UNLOAD').readUInt32LE(0) };
}

/** RESULT: status, pc (null = none), seq. */
export function resultPayload(r: { status: number; pc: number | null; seq: number }): Buffer {
  return u32s(r.status, r.pc ?? 0xffffffff, r.seq);
}

export function parseResult(p: Uint8Array): { status: number; pc: number | null; seq: number } {
  const b = exact(p, 12, 'RESULT');
  const pc = b.readUInt32LE(4);
  return { status: b.readInt32LE(0), pc: pc === 0xffffffff ? null : pc, seq: b.readUInt32LE(8) };
}

export function affinityPayload(e: { vcpu: number; hostCpu: number; result: number }): Buffer {
  return u32s(e.vcpu, e.hostCpu, e.result);
}

export function parseAffinity(p: Uint8Array): { vcpu: number; hostCpu: number; result: number } {
  const b = exact(p, 12, 'AFFINITY_EVENT');
  return { vcpu: b.readUInt32LE(0), hostCpu: b.readUInt32LE(4), result: b.readInt32LE(8) };
}

/** ERROR: negative errno, UTF-8 message (cut to 1 KiB). */
export function errorPayload(errno: number, message: string): Buffer {
  let text = Buffer.from(message, 'utf8');
  if (text.length > MAX_ERROR_TEXT) text = text.subarray(0, MAX_ERROR_TEXT);
  return Buffer.concat([u32s(errno), text]);
}

export function parseError(p: Uint8Array): { errno: number; message: string } {
  const b = Buffer.from(p.buffer, p.byteOffset, p.length);
  if (b.length < 4) throw new RangeError('ERROR payload shorter than 4 bytes');
  return { errno: b.readInt32LE(0), message: b.subarray(4).toString('utf8') };
}

function exact(p: Uint8Array, n: number, what: string): Buffer {
  if (p.length !== n) throw new RangeError(`${what} payload must be ${n} bytes, got ${p.length}`);
  return Buffer.from(p.buffer, p.byteOffset, p.length);
}
