/* HLT is privileged: at CPL3 (the default) it raises #GP. */
#include <kvmtalk.h>

int main(void)
{
	kt_puts("fault-gp: executing hlt at CPL3");
	__asm__ volatile("hlt");
	return 0;
}
