/* Never ends by itself: the host test stops it from outside. */
#include <kvmtalk.h>

int main(void)
{
	kt_puts("spinning");
	for (;;)
		kt_pause();
}
