/** Port-I/O and MMIO buses: map an exit's address to the device that claimed it. */
import type { MmioDevice, PioDevice } from '../devices/device.js';

interface MmioRange {
  base: bigint;
  end: bigint;
  device: MmioDevice;
}

/** Thrown when two devices claim overlapping ranges. */
export class BusConflictError extends Error {}

/** Devices by port and by guest-physical range. Port lookup is one array index: it runs on every PIO exit. */
export class Bus {
  private readonly ports: (PioDevice | undefined)[] = new Array(0x10000);
  private readonly mmio: MmioRange[] = [];

  /** Claims ports [base, base+count). */
  addPio(base: number, count: number, device: PioDevice): void {
    if (base < 0 || count <= 0 || base + count > 0x10000) throw new RangeError(`bad port range ${base}+${count} for ${device.name}`);
    for (let p = base; p < base + count; p++) {
      const owner = this.ports[p];
      if (owner) throw new BusConflictError(`port 0x${p.toString(16)}: ${device.name} conflicts with ${owner.name}`);
    }
    for (let p = base; p < base + count; p++) this.ports[p] = device;
  }

  /** Claims guest-physical [base, base+size). */
  addMmio(base: bigint, size: bigint, device: MmioDevice): void {
    const end = base + size;
    const clash = this.mmio.find((r) => base < r.end && r.base < end);
    if (clash) throw new BusConflictError(`MMIO 0x${base.toString(16)}: ${device.name} conflicts with ${clash.device.name}`);
    this.mmio.push({ base, end, device });
  }

  /** The device owning `port`, if any. */
  pio(port: number): PioDevice | undefined {
    return this.ports[port];
  }

  /** The device whose range contains `addr`, if any. */
  mmioAt(addr: bigint): MmioDevice | undefined {
    for (const r of this.mmio) if (addr >= r.base && addr < r.end) return r.device;
    return undefined;
  }
}
