/* Reads address 0, which the VMM leaves unmapped: #PF. */
#include <kvmtalk.h>

int main(void)
{
	/* The pointer itself is volatile so gcc cannot see it is null and replace the load
	   with a trap instruction. */
	volatile int *volatile p = 0;

	kt_puts("fault-null: reading address 0");
	return *p;
}
