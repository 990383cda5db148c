/** The debug-exit port (docs/guest-abi.md): how a guest ends the VM with an exit status. */
import { undrivenPortValue, type DeviceHost, type PioDevice } from './device.js';

/** The port the guest SDK writes its exit status to. */
export const DEBUG_EXIT_PORT = 0xf4;

/**
 * Port 0xf4. A write of any size ends the VM with status `value & 0xff`, which becomes the exit
 * code of `kvmtalk run` (a process exit code only has 8 bits). Reads return all ones for the access
 * size (0xff, 0xffff, 0xffffffff), like a port nothing drives, so probing it has no effect.
 */
export class DebugExit implements PioDevice {
  readonly name = 'debug-exit';

  pioRead(_port: number, size: number, _host?: DeviceHost): number {
    return undrivenPortValue(size);
  }

  pioWrite(_port: number, _size: number, value: number, host: DeviceHost): void {
    host.exitVm(value & 0xff);
  }
}
