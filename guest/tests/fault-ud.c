/* Executes ud2: #UD. */
#include <kvmtalk.h>

int main(void)
{
	kt_puts("fault-ud: executing ud2");
	__asm__ volatile("ud2");
	return 0;
}
