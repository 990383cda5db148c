/*
 * For --cpl 0: loads an empty IDT, then raises #UD. Delivering #UD fails (#GP), delivering
 * that fails (#DF), and so does #DF: a triple fault, i.e. KVM_EXIT_SHUTDOWN. At CPL3 the LIDT
 * itself raises an ordinary #GP.
 */
#include <kvmtalk.h>

int main(void)
{
	static const struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) idtr = { 0, 0 };

	kt_puts("triple-fault: lidt with limit 0, then ud2");
	__asm__ volatile("lidt %0\n\tud2" : : "m"(idtr));
	return 0;
}
