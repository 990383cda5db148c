/* The smallest kvmtalk guest: one line on the serial console, exit code 0. */
#include <kvmtalk.h>

int main(void)
{
	kt_puts("Hello, world!");
	return 0;
}
