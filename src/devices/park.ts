/** The park port (docs/guest-abi.md): how one vCPU stops while the others go on. */
import { undrivenPortValue, type DeviceHost, type PioDevice } from './device.js';

/** The port a guest vCPU writes to stop itself. */
export const PARK_PORT = 0xf5;

/**
 * Port 0xf5. A write of any size and value parks the writing vCPU; the VM ends when no vCPU is left
 * running. Reads return all ones for the access size, like a port nothing drives.
 */
export class Park implements PioDevice {
  readonly name = 'park';

  pioRead(_port: number, size: number, _host?: DeviceHost): number {
    return undrivenPortValue(size);
  }

  pioWrite(_port: number, _size: number, _value: number, host: DeviceHost): void {
    host.parkVcpu();
  }
}
