/**
 * The control socket's wire protocol (docs/channels.md, "Attaching from another host process"):
 * newline-delimited JSON, one request object per line, one reply object per request, in order.
 * Shared by the server in the VMM and the client in an attaching process.
 *
 * Requests (`id` is optional and echoed in the reply, so a client may pipeline):
 *
 * | request | reply (besides `ok: true`) |
 * | --- | --- |
 * | `{"op":"describe"}` | {@link DescribeReply} |
 * | `{"op":"list"}` | `channels`: {@link ChannelSummary}[] |
 * | `{"op":"attach","channel":"name"}` | `channel`: {@link AttachInfo} |
 * | `{"op":"detach","channel":"name"}` | — |
 * | `{"op":"kick","channel":"name"}` | `raised`: whether an interrupt was sent |
 * | `{"op":"bpf-maps","max":64}` | `maps`: {@link BpfMapDump}[] (the guest eBPF runtime's maps, docs/bpf-runtime.md) |
 * | `{"op":"bpf-map-update","map":"name","key":"hex","value":"hex","flags":0}` | — |
 * | `{"op":"bpf-map-delete","map":"name","key":"hex"}` | `deleted`: whether the key was there |
 *
 * Every failure is `{"ok":false,"error":"…"}`. Framing errors (a line over {@link MAX_LINE}
 * bytes, bytes that are not UTF-8, text that is not a JSON object) also close the connection:
 * after one, the stream position is meaningless.
 *
 * @module
 */

/** Longest line either side accepts, in bytes, not counting the newline (64 KiB). */
export const MAX_LINE = 64 * 1024;

/** Protocol version reported by `describe`; incompatible changes increment it. */
export const CONTROL_PROTOCOL_VERSION = 1;

/** A line was too long or not UTF-8: the connection cannot continue. */
export class LineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LineError';
  }
}

/**
 * Splits a byte stream into lines with a bounded buffer: at most {@link MAX_LINE} bytes of an
 * unfinished line are ever kept, so a peer that never sends a newline cannot make it grow.
 * After it throws, it stays failed (the stream has lost its framing).
 */
export class LineSplitter {
  #parts: Buffer[] = [];
  #pending = 0;
  #failed: LineError | undefined;
  readonly #decoder = new TextDecoder('utf-8', { fatal: true });

  constructor(readonly maxLine = MAX_LINE) {}

  /** Feeds a chunk; returns the complete lines in it (without newlines; a trailing `\r` is dropped). */
  push(chunk: Uint8Array): string[] {
    if (this.#failed) throw this.#failed;
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      this.#take(chunk.subarray(start, nl));
      lines.push(this.#line());
      start = nl + 1;
    }
    if (start < chunk.length) this.#take(chunk.subarray(start));
    return lines;
  }

  /** Bytes of the unfinished line held now. */
  get pending(): number {
    return this.#pending;
  }

  #take(bytes: Uint8Array): void {
    if (this.#pending + bytes.length > this.maxLine) this.#fail(`line longer than ${this.maxLine} bytes`);
    if (bytes.length) this.#parts.push(Buffer.from(bytes)); // a copy: the socket may reuse its buffer
    this.#pending += bytes.length;
  }

  #line(): string {
    const bytes = this.#parts.length === 1 ? this.#parts[0] : Buffer.concat(this.#parts, this.#pending);
    this.#parts = [];
    this.#pending = 0;
    let text: string;
    try {
      text = this.#decoder.decode(bytes);
    } catch {
      this.#fail('line is not valid UTF-8');
    }
    return text.endsWith('\r') ? text.slice(0, -1) : text;
  }

  #fail(message: string): never {
    this.#parts = [];
    this.#pending = 0;
    this.#failed = new LineError(message);
    throw this.#failed;
  }
}

/** Parses one request line into an object, or throws a {@link LineError} (the connection then closes). */
export function parseMessage(line: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch (e) {
    throw new LineError(`invalid JSON: ${(e as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new LineError('a message must be a JSON object');
  return v as Record<string, unknown>;
}

/** One line of JSON with its newline. Throws a RangeError if it is longer than {@link MAX_LINE}. */
export function encodeMessage(msg: object): string {
  const text = JSON.stringify(msg, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v));
  if (Buffer.byteLength(text) > MAX_LINE) throw new RangeError(`control message of ${Buffer.byteLength(text)} bytes exceeds the ${MAX_LINE}-byte line limit`);
  return text + '\n';
}

/** A request the server understands. */
export type ControlRequest =
  | { op: 'describe'; id?: unknown }
  | { op: 'list'; id?: unknown }
  | { op: 'attach' | 'detach' | 'kick'; channel: string | number; id?: unknown };

/** The operations, for error messages. */
export const CONTROL_OPS = ['describe', 'list', 'attach', 'detach', 'kick', 'bpf-maps', 'bpf-map-update', 'bpf-map-delete'] as const;

/** One guest eBPF map as `bpf-maps` shows it: its definition and entries as hex. */
export interface BpfMapDump {
  name: string;
  /** 1 hash, 2 array. */
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** Live entries (the array's size for an array map). */
  size: number;
  /** [key, value] as lowercase hex, in storage order. */
  entries: [string, string][];
  /** Entries left out (the `max` per map, or the reply's size limit). */
  truncated: number;
}

/** One channel as `describe` and `list` show it. */
export interface ChannelSummary {
  id: number;
  name: string;
  /** Guest-physical address of the channel header. */
  gpa: number;
  /** Bytes of the channel region. */
  size: number;
  /** Notification mode: `hypercall`, `ioeventfd` or `polling`. */
  mode: string;
  /** `open`, `closed`, … as the VMM sees it, plus `attached` while another process holds it. */
  state: string;
  /** Whether another process has attached to the channel. */
  attached: boolean;
}

/** Where a ring sits inside its channel (bytes, relative to the channel's GPA). */
export interface RingInfo {
  offset: number;
  size: number;
  capacity: number;
}

/** The `attach` reply's `channel`: everything an attacher needs to build its ring views. */
export interface AttachInfo extends ChannelSummary {
  /** Guest→host ring (the attacher consumes it). */
  toHost: RingInfo;
  /** Host→guest ring (the attacher produces into it). */
  toGuest: RingInfo;
  /** Interrupt vector the VMM raises on `kick` (0: none, the guest polls). */
  vector: number;
}

/** The `describe` reply. */
export interface DescribeReply {
  ok: true;
  protocol: number;
  pid: number;
  name: string;
  /** The guest RAM memfd's fd number in the VMM (open `/proc/<pid>/fd/<memfd>`), or null if RAM is not shareable. */
  memfd: number | null;
  /** Bytes of guest RAM (the memfd's size). */
  memSize: number;
  /** Page size of the backing: mmap offsets and lengths must be multiples of it (2 MiB for hugetlb). */
  pageSize: number;
  /** The channel directory (docs/channels.md, "The channel area"), if the VM has one. */
  directory: { gpa: number; size: number } | null;
  channels: ChannelSummary[];
}
