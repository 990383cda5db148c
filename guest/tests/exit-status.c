/* Exit code plumbing: main's return value on vCPU 0 becomes the VM's exit status. */
#include <kvmtalk.h>

int main(void)
{
	kt_puts("exit-status: returning 42");
	return 42;
}
