/* The smallest program: returns a constant. Shows each runtime's fixed cost per run. */
#include "bench-bpf.h"

INLINE u32 nop(const u8 *pkt)
{
	(void)pkt;
	return 2;
}

BENCH_PROGRAM(nop)
