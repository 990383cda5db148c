/*
 * Parsing with branches: an Ethernet + IPv4 + UDP header check (ethertype, version, header
 * length, protocol, destination port), then a classification of every payload byte (digit,
 * letter, space, other) folded into a 32-bit FNV-style checksum of the classes. Returns the
 * checksum, or 0 when the headers do not match.
 *
 * The hash covers the sequence of classes. (Counting them on their branches would verify too:
 * both kvmtalk verifiers widen counters that only feed the result, as Linux's does.)
 */
#include "bench-bpf.h"

#define ETH_LEN 14
#define UDP_PAYLOAD (ETH_LEN + 20 + 8)

INLINE u32 parse(const u8 *pkt)
{
	if (pkt[12] != 0x08 || pkt[13] != 0x00)  /* ethertype IPv4 */
		return 0;
	if (pkt[ETH_LEN] != 0x45)  /* version 4, 20-byte header */
		return 0;
	if (pkt[ETH_LEN + 9] != 17)  /* UDP */
		return 0;
	u32 dport = (u32)pkt[ETH_LEN + 22] << 8 | pkt[ETH_LEN + 23];
	if (dport == 0)
		return 0;
	u32 h = 2166136261u ^ dport;

#pragma clang loop unroll(disable)
	for (u32 i = UDP_PAYLOAD; i < BENCH_PKT_LEN; i++) {
		u8 c = pkt[i];
		u32 class;
		if (c >= '0' && c <= '9')
			class = 1;
		else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
			class = 2;
		else if (c == ' ' || c == '\n' || c == '\t')
			class = 3;
		else
			class = 4;
		h = (h ^ class) * 16777619u;
	}
	return h;
}

BENCH_PROGRAM(parse)
