/** Builds the identity-mapped 4-level page tables every long-mode guest starts with. */
import type { GuestMemory } from '../../memory/guest-memory.js';
import { MAX_PD_PAGES, MAX_RAM, MIN_IDENTITY_MAP, PD_BASE, PDPT, PML4, PT_LOW } from './layout.js';

export const PTE_P = 1n;
export const PTE_RW = 2n;
export const PTE_US = 4n;
export const PTE_PS = 0x80n;
const TABLE = PTE_P | PTE_RW | PTE_US;
const GIB = 2 ** 30;
const MIB2 = 2 ** 21;

/**
 * Identity-maps [0, max(RAM, 4 GiB)): 2 MiB pages, except the first 2 MiB in 4 KiB pages with page 0
 * left unmapped so null pointers fault. US is set on every level so CPL3 code can use all of it.
 * @returns the value for CR3
 */
export function buildIdentityMap(mem: GuestMemory, ramSize: number): bigint {
  if (ramSize > MAX_RAM) throw new RangeError(`guest RAM ${ramSize} exceeds the ${MAX_RAM / GIB} GiB kvmtalk maps`);
  const gibs = Math.ceil(Math.max(ramSize, MIN_IDENTITY_MAP) / GIB);
  if (gibs > MAX_PD_PAGES) throw new RangeError('identity map too large');
  mem.fill(PML4, 0x1000);
  mem.fill(PDPT, 0x1000);
  mem.fill(PT_LOW, 0x1000);
  mem.writeU64(PML4, BigInt(PDPT) | TABLE);
  for (let g = 0; g < gibs; g++) {
    const pd = PD_BASE + g * 0x1000;
    mem.writeU64(PDPT + 8 * g, BigInt(pd) | TABLE);
    for (let i = 0; i < 512; i++) {
      const addr = BigInt(g * GIB + i * MIB2);
      mem.writeU64(pd + 8 * i, addr | TABLE | PTE_PS);
    }
  }
  mem.writeU64(PD_BASE, BigInt(PT_LOW) | TABLE);
  for (let i = 1; i < 512; i++) mem.writeU64(PT_LOW + 8 * i, BigInt(i * 4096) | TABLE);
  return BigInt(PML4);
}
