/**
 * The device model: devices claim ranges of I/O ports or guest-physical MMIO addresses on a
 * {@link Bus}; the vCPU run loop dispatches exits to them and knows nothing else about them.
 *
 * Devices run inside the vCPU worker thread that takes the exit (one instance per vCPU thread), so a
 * device with state shared across vCPUs keeps it in a SharedArrayBuffer or talks to the main thread.
 */

/** What a device can do to the running VM from inside an exit handler. */
export interface DeviceHost {
  /** Index of the vCPU taking this exit. */
  readonly cpu: number;
  /** Ends the whole VM with `status` as the exit status (e.g. the debug-exit port). */
  exitVm(status: number): void;
  /** Stops only this vCPU; the VM continues while another runs. */
  parkVcpu(): void;
  /** Sends an event to the main thread (non-blocking), where `Vm` emits it. */
  emit(event: string, payload: unknown): void;
}

/** A device on the port-I/O bus. `size` is 1, 2 or 4 bytes. */
export interface PioDevice {
  readonly name: string;
  pioRead(port: number, size: number, host: DeviceHost): number;
  pioWrite(port: number, size: number, value: number, host: DeviceHost): void;
  /**
   * Optional fast path for string I/O (`rep outsb`): all `count` items at once.
   * Without it the bus calls {@link pioWrite} per item.
   */
  pioWriteString?(port: number, size: number, data: Uint8Array, host: DeviceHost): void;
}

/** What reading `size` bytes from a port nothing drives gives: all ones (0xff, 0xffff, 0xffffffff). */
export function undrivenPortValue(size: number): number {
  return size >= 4 ? 0xffffffff : (1 << (8 * size)) - 1;
}

/** A device on the MMIO bus. `data` is the 1–8 byte access buffer (little endian). */
export interface MmioDevice {
  readonly name: string;
  mmioRead(addr: bigint, data: Uint8Array, host: DeviceHost): void;
  mmioWrite(addr: bigint, data: Uint8Array, host: DeviceHost): void;
}
