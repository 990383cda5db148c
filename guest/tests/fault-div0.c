/* Integer division by zero: #DE. */
#include <kvmtalk.h>

int main(void)
{
	volatile int a = 1, b = 0;

	kt_puts("fault-div0: dividing by zero");
	return a / b;
}
