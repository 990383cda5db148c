/** The pure parts of host→guest interrupts: MSI encoding and KVM's default GSI routes. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IRQCHIP_IOAPIC, IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE } from '../../src/kvm/ioctls.js';
import { defaultRoutes, FIRST_IRQFD_GSI, msiMessage } from '../../src/vmm/interrupts.js';

test('msiMessage: physical destination in address bits 12-19, fixed edge delivery of the vector', () => {
  assert.deepEqual(msiMessage(0x40, 0), { addressLo: 0xfee00000, addressHi: 0, data: 0x40 });
  assert.deepEqual(msiMessage(0xef, 3), { addressLo: 0xfee03000, addressHi: 0, data: 0xef });
  // Unsigned although bit 31 is set (koffi and DataView want 0..2^32-1).
  assert.equal(msiMessage(0x20, 0xff).addressLo, 0xfeeff000);
});

test('defaultRoutes: what KVM_CREATE_IRQCHIP installs (IOAPIC 0-23, PICs 0-15)', () => {
  const routes = defaultRoutes();
  assert.equal(routes.length, 40);
  const ioapic = routes.filter((r) => r.type === 'irqchip' && r.irqchip === IRQCHIP_IOAPIC);
  assert.deepEqual(ioapic.map((r) => r.gsi), Array.from({ length: 24 }, (_, i) => i));
  assert.ok(ioapic.every((r) => r.type === 'irqchip' && r.pin === r.gsi));
  const pic = routes.filter((r) => r.type === 'irqchip' && r.irqchip !== IRQCHIP_IOAPIC);
  assert.deepEqual(pic.map((r) => r.type === 'irqchip' && [r.gsi, r.irqchip, r.pin]), Array.from({ length: 16 }, (_, i) => [i, i < 8 ? IRQCHIP_PIC_MASTER : IRQCHIP_PIC_SLAVE, i % 8]));
  assert.ok(routes.every((r) => r.gsi < FIRST_IRQFD_GSI), 'irqfd GSIs start above the defaults');
});
