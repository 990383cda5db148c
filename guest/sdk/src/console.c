/*
 * Console output. Each chunk goes to the host in one KT_HC_CONSOLE_WRITE hypercall (one exit),
 * because KVM emulates `rep outsb` one byte per exit. Where that hypercall is missing (another
 * VMM), it falls back to the COM1 THR without polling LSR: kvmtalk's UART accepts every byte.
 */
#include <kvmtalk.h>

/*
 * Serialises chunks from concurrent vCPUs so that lines up to one printf buffer long come out
 * whole. KVM emulates `rep outsb` one element per exit, so without it bytes from different
 * vCPUs would interleave.
 */
static volatile int console_lock;

void kt_write(const char *s, size_t len)
{
	if (len == 0)
		return;
	if (kt_hypercall2(KT_HC_CONSOLE_WRITE, (unsigned long)s, len) >= 0)
		return;
	while (__atomic_exchange_n(&console_lock, 1, __ATOMIC_ACQUIRE))
		while (console_lock)
			kt_pause();
	__asm__ volatile("rep outsb"
			 : "+S"(s), "+c"(len)
			 : "d"((uint16_t)KT_PORT_COM1)
			 : "memory");
	__atomic_store_n(&console_lock, 0, __ATOMIC_RELEASE);
}

void kt_putc(char c)
{
	kt_write(&c, 1);
}

void kt_puts(const char *s)
{
	char buf[256];
	size_t len = strlen(s);

	/* Keep short lines in one chunk so the newline cannot be separated from its text. */
	if (len < sizeof(buf)) {
		memcpy(buf, s, len);
		buf[len] = '\n';
		kt_write(buf, len + 1);
	} else {
		kt_write(s, len);
		kt_write("\n", 1);
	}
}
