/* Writes to port 0x80, which no kvmtalk device claims: the VM ends with "unhandled I/O". */
#include <kvmtalk.h>

int main(void)
{
	kt_puts("unhandled-port: outb to port 0x80");
	kt_outb(0x80, 0x42);
	return 0;
}
