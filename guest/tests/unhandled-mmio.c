/*
 * Writes to 0xC0000000: mapped by the VMM's page tables (identity map up to 4 GiB) but above
 * RAM when RAM < 3 GiB, so the VM ends with "unhandled MMIO".
 */
#include <kvmtalk.h>

int main(void)
{
	kt_puts("unhandled-mmio: writing 0x12345678 to 0xc0000000");
	*(volatile uint32_t *)0xC0000000UL = 0x12345678;
	return 0;
}
