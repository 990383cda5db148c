/*
 * translate-baseline: the full GVA -> GPA -> HVA -> HPA chain in C, as the reference the
 * TypeScript FastChain is measured against (src/bench/translate.ts).
 *
 * usage: translate-baseline <ram-path> <ram-size> <cr3> <gva-file> <chain-iterations> <walk-iterations>
 *
 *   <ram-path>   the benchmark VM's guest RAM memfd, opened through /proc/<pid>/fd/<n> of the
 *                TypeScript process: this program maps the very same physical pages, so its
 *                pagemap lookups find the same PFNs (and the same page kinds) as the TS side's
 *   <ram-size>   bytes of guest RAM (one memslot at GPA 0)
 *   <cr3>        the guest page-table root (hex or decimal)
 *   <gva-file>   the GVAs to translate, as little-endian u64s, translated in file order, cycling
 *
 * Per translation it does what src/translate/fast-chain.ts does, step by step:
 *   - the guest walk of FastWalker.translate (fast-walk.ts) for x86 4-level paging without NXE:
 *     the same canonical check, the same fast-path tests on table pointers and 4 KiB leaves, and
 *     for anything else (here: 2 MiB leaves) the same classifier (x86Classify, x86-paging.ts);
 *   - GPA -> HVA by memslot arithmetic;
 *   - HVA -> host page as Pagemap.probe (host-pages.ts): one pread of /proc/self/pagemap, one
 *     of /proc/kpageflags for a present page, and for compound pages the same PAGEMAP_SCAN and
 *     head/order searches.
 *
 * Guest RAM is mapped 2 MiB-aligned like the VMM maps it, and populated, so every page the TS
 * process has is present here too. Before timing, one pass over the GVAs prints checksums that
 * the TS side compares with its own: equal sums mean both did the same translations.
 *
 * Prints one JSON line:
 *   {"chain_per_s", "walk_per_s", "chain_ns", "walk_ns", "gvas", "gpa_sum", "pfn_sum", "present",
 *    "syscalls_per_translation", "sink"}
 *
 * Build, from the repository root: gcc -O2 -Wall -Wextra -I bench/c -o translate-baseline bench/c/translate-baseline.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define BENCH_PROG "translate-baseline"
#include "bench-common.h"

#define HUGE_2M (2UL * 1024 * 1024)

/* ---- Guest stage: FastWalker.translate for x86, 4 levels, NXE clear, MAXPHYADDR 46 ------ */

/* The format as FastWalker.retarget reduces it. */
#define LEVELS 4
#define TOP_SHIFT 15
#define ADDR_HI 0x3fffU                     /* hiAddrMask(46): entry bits 45:32 */
#define RSVD_HI (0xfc000U | 0x80000000U)    /* bits 51:46, and 63 (XD) without NXE */
#define HI_BAD (RSVD_HI | ADDR_HI)          /* a table the fast path follows is below 4 GiB */
#define TABLE_TEST 0x81U
#define GB_PAGES 0                          /* x86FormatOf: this platform has no 1 GiB pages */

enum { ENTRY_TABLE = 0, ENTRY_LEAF = 1, ENTRY_NOT_PRESENT = -1, ENTRY_RESERVED = -2 };

static const uint32_t *words;   /* guest RAM as 32-bit words */
static uint64_t nwords;
static int walk_level;
static uint32_t walk_size;

static inline uint32_t index_at(uint32_t hi, uint32_t lo, int level)
{
	switch (level) {
	case 1: return (lo >> 12) & 511;
	case 2: return (lo >> 21) & 511;
	case 3: return ((lo >> 30) | (hi << 2)) & 511;
	case 4: return (hi >> 7) & 511;
	default: return (hi >> 16) & 511;
	}
}

static int x86_classify(uint32_t lo, uint32_t hi, int level)
{
	if ((lo & 1) == 0)
		return ENTRY_NOT_PRESENT;
	if ((hi & RSVD_HI) != 0)
		return ENTRY_RESERVED;
	if (level == 1)
		return ENTRY_LEAF;
	if ((lo & 0x80) == 0)
		return ENTRY_TABLE;
	if (level == 2)
		return (lo & 0x1fe000) == 0 ? ENTRY_LEAF : ENTRY_RESERVED;
	if (level == 3)
		return GB_PAGES && (lo & 0x3fffe000) == 0 ? ENTRY_LEAF : ENTRY_RESERVED;
	return ENTRY_RESERVED;
}

static inline uint64_t frame_addr(uint32_t lo, uint32_t hi, uint64_t size)
{
	return (uint64_t)(hi & ADDR_HI) << 32 | (lo & ~(uint32_t)(size - 1) & 0xfffff000U);
}

static int64_t walk_fail(int level)
{
	walk_level = level;
	walk_size = 0;
	return -1;
}

static int64_t walk_leaf(uint32_t elo, uint32_t ehi, uint32_t lo, int level)
{
	uint32_t size = level == 1 ? 4096 : level == 2 ? 0x200000 : 0x40000000;

	walk_level = level;
	walk_size = size;
	return (int64_t)(frame_addr(elo, ehi, size) + (lo & (size - 1)));
}

/* The reader path (walkFrom): bounds-checked reads, shared classifier. */
static int64_t walk_from(uint64_t table, uint32_t hi, uint32_t lo, int level)
{
	for (;;) {
		uint64_t addr = table + index_at(hi, lo, level) * 8;
		uint32_t elo, ehi;
		int code;

		if (addr + 8 > nwords * 4)
			return walk_fail(level);
		elo = words[addr / 4];
		ehi = words[addr / 4 + 1];
		code = x86_classify(elo, ehi, level);
		if (code == ENTRY_LEAF)
			return walk_leaf(elo, ehi, lo, level);
		if (code != ENTRY_TABLE)
			return walk_fail(level);
		table = frame_addr(elo, ehi, 4096);
		level--;
	}
}

static int64_t continue_at(uint32_t elo, uint32_t ehi, uint32_t hi, uint32_t lo, int level)
{
	int code = x86_classify(elo, ehi, level);

	if (code == ENTRY_LEAF)
		return walk_leaf(elo, ehi, lo, level);
	if (code != ENTRY_TABLE)
		return walk_fail(level);
	return walk_from(frame_addr(elo, ehi, 4096), hi, lo, level - 1);
}

static inline int64_t walk_translate(uint64_t root, uint32_t hi, uint32_t lo)
{
	int level = LEVELS;
	uint32_t elo = 0, ehi = 0;
	int32_t top = (int32_t)hi >> TOP_SHIFT;

	if ((top != 0 && top != -1) || root >= 0x100000000ULL) {
		if (top != 0 && top != -1)
			return walk_fail(LEVELS);
		return walk_from(root - (root % 4096), hi, lo, LEVELS);
	}
	uint64_t n1 = nwords - 1;
	uint32_t t = ((uint32_t)root >> 12) << 10;
	for (;;) {
		uint32_t e = t + index_at(hi, lo, level) * 2;

		if (e >= n1)
			return walk_from(root - (root % 4096), hi, lo, LEVELS);
		elo = words[e];
		ehi = words[e + 1];
		if (level == 1) {
			if ((elo & 1) == 0 || (ehi & RSVD_HI) != 0)
				break;
			walk_level = 1;
			walk_size = 4096;
			return (int64_t)((uint64_t)(ehi & ADDR_HI) << 32 | (elo & 0xfffff000U)) + (lo & 0xfff);
		}
		if ((elo & TABLE_TEST) != 1 || (ehi & HI_BAD) != 0)
			break;
		t = (elo >> 12) << 10;
		level--;
	}
	return continue_at(elo, ehi, hi, lo, level);
}

/* ---- Host stage: Pagemap.probe ------------------------------------------------------------ */

#define KPF_COMPOUND_HEAD 15
#define KPF_COMPOUND_TAIL 16
#define KPF_HUGE 17
#define KPF_THP 22
#define HEAD (1U << KPF_COMPOUND_HEAD)
#define TAIL (1U << KPF_COMPOUND_TAIL)
#define HUGE (1U << KPF_HUGE)
#define THP (1U << KPF_THP)
#define MAX_ORDER 20
#define PAGEMAP_SCAN_IOCTL 0xc0606610UL
#define PAGE_IS_HUGE (1ULL << 6)

struct host_page {
	int present;
	int64_t pfn;        /* -1 when not present or hidden */
	uint64_t hpa;
	uint32_t page_size;
	int folio_order;    /* -1 when unknown */
};

static int pagemap_fd = -1, kpageflags_fd = -1;
static uint64_t syscalls;
static int scan_supported = 1;
static uint64_t scan_arg[12];
static uint64_t *scan_vec;

static uint32_t page_flags(uint64_t pfn)
{
	uint64_t v;

	syscalls++;
	return pread(kpageflags_fd, &v, 8, (off_t)(pfn * 8)) == 8 ? (uint32_t)v : 0;
}

/* 1: a PMD maps hva; 0: no; -1: the kernel cannot say. */
static int pmd_mapped(uint64_t hva)
{
	uint64_t start = hva & ~0xfffULL;
	int r;

	if (!scan_supported)
		return -1;
	memset(scan_arg, 0, sizeof(scan_arg));
	scan_arg[0] = sizeof(scan_arg);
	scan_arg[2] = start;
	scan_arg[3] = start + 4096;
	scan_arg[5] = (uint64_t)(uintptr_t)scan_vec;
	scan_arg[6] = 1;
	scan_arg[11] = PAGE_IS_HUGE;
	syscalls++;
	r = ioctl(pagemap_fd, PAGEMAP_SCAN_IOCTL, scan_arg);
	if (r < 0) {
		scan_supported = 0;
		return -1;
	}
	return r > 0 && (scan_vec[2] & PAGE_IS_HUGE) != 0;
}

static int64_t folio_head(uint64_t pfn, int is_head, int min_order)
{
	uint64_t last = pfn;

	if (is_head)
		return (int64_t)pfn;
	for (int k = min_order; k <= MAX_ORDER; k++) {
		uint64_t c = pfn - (pfn % (1ULL << k));
		uint32_t f;

		if (c == last)
			continue;
		last = c;
		f = page_flags(c);
		if (f & HEAD)
			return (int64_t)c;
		if (!(f & TAIL))
			return -1;
	}
	return -1;
}

static int folio_order(uint64_t head, uint64_t pfn, int min_order)
{
	uint64_t d = pfn - head;
	int j = d ? 64 - __builtin_clzll(d) : 0;

	if (j < min_order)
		j = min_order;
	if (j < 1)
		j = 1;
	for (; j <= MAX_ORDER; j++)
		if (!(page_flags(head + (1ULL << j)) & TAIL))
			return j;
	return -1;
}

static void lookup(uint64_t hva, struct host_page *out)
{
	uint64_t vpn = hva >> 12, e = 0, pfn;
	uint32_t flags;
	int head_flag, tail_flag, thp, hugetlb, pmd, order, min_order;
	int64_t head;

	out->pfn = -1;
	out->page_size = 4096;
	out->folio_order = -1;
	syscalls++;
	if (pread(pagemap_fd, &e, 8, (off_t)(vpn * 8)) != 8)
		e = 0;
	out->present = (e >> 63) & 1;
	if (!out->present)
		return;
	pfn = e & ((1ULL << 55) - 1);
	if (pfn == 0)
		return; /* hidden: not root */
	out->pfn = (int64_t)pfn;
	out->hpa = pfn << 12 | (hva & 0xfff);
	if (kpageflags_fd < 0)
		return;
	flags = page_flags(pfn);
	head_flag = (flags & HEAD) != 0;
	tail_flag = (flags & TAIL) != 0;
	thp = (flags & THP) != 0;
	hugetlb = (flags & HUGE) != 0;
	if (!head_flag && !tail_flag) {
		out->folio_order = 0;
		return;
	}
	pmd = !thp ? -1 : vpn % 512 != pfn % 512 ? 0 : pmd_mapped(hva);
	head = (int64_t)(pfn - vpn % 512);
	order = 9;
	if (pmd != 1 || head % 512 != 0) {
		min_order = hugetlb ? 9 : 1;
		head = folio_head(pfn, head_flag, min_order);
		order = head < 0 ? -1 : folio_order((uint64_t)head, pfn, min_order);
		if (order < 0)
			return;
	}
	out->folio_order = order;
	if (hugetlb)
		out->page_size = order == 9 ? 0x200000 : order == 18 ? 0x40000000 : 4096;
	else if (pmd == 1 || (pmd == -1 && thp && order == 9 && (int64_t)(vpn % 512) == (int64_t)pfn - head))
		out->page_size = 0x200000;
}

/* ---- The chain ----------------------------------------------------------------------------- */

static uint64_t ram_hva, ram_size;

/* Returns 1 when the GVA reaches guest RAM (out filled), 0 otherwise; as FastChain.translateParts. */
static inline int chain(uint64_t root, uint32_t hi, uint32_t lo, uint64_t *gpa_out, struct host_page *out)
{
	int64_t gpa = walk_translate(root, hi, lo);

	if (gpa < 0 || (uint64_t)gpa >= ram_size)
		return 0;
	*gpa_out = (uint64_t)gpa;
	lookup(ram_hva + (uint64_t)gpa, out);
	return 1;
}

static uint64_t parse_u64(const char *s, const char *what)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || *end || end == s)
		die("bad %s '%s'", what, s);
	return v;
}

int main(int argc, char **argv)
{
	if (argc != 7)
		die("usage: %s <ram-path> <ram-size> <cr3> <gva-file> <chain-iterations> <walk-iterations>", prog);
	ram_size = parse_u64(argv[2], "ram size");
	uint64_t root = parse_u64(argv[3], "cr3") & 0xffffffffff000ULL;
	uint64_t chain_iters = parse_u64(argv[5], "chain iterations");
	uint64_t walk_iters = parse_u64(argv[6], "walk iterations");

	/* Guest RAM: the TS process's memfd, 2 MiB-aligned and populated. */
	int ram_fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (ram_fd < 0)
		die("%s: %s", argv[1], strerror(errno));
	uint8_t *reserve = mmap(NULL, ram_size + HUGE_2M, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (reserve == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	uint8_t *aligned = (uint8_t *)(((uintptr_t)reserve + HUGE_2M - 1) & ~(HUGE_2M - 1));
	uint8_t *ram = mmap(aligned, ram_size, PROT_READ, MAP_SHARED | MAP_FIXED | MAP_POPULATE, ram_fd, 0);
	if (ram == MAP_FAILED)
		die("mmap %s: %s", argv[1], strerror(errno));
	volatile uint8_t touch = 0;
	for (uint64_t off = 0; off < ram_size; off += 4096)
		touch += ram[off];
	ram_hva = (uint64_t)(uintptr_t)ram;
	words = (const uint32_t *)ram;
	nwords = ram_size / 4;

	/* The GVA list. */
	int gfd = open(argv[4], O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (gfd < 0 || fstat(gfd, &st) < 0)
		die("%s: %s", argv[4], strerror(errno));
	uint64_t ngvas = (uint64_t)st.st_size / 8;
	uint32_t *his = malloc(ngvas * 4), *los = malloc(ngvas * 4);
	uint64_t *raw = malloc(ngvas * 8 + 8);
	if (!his || !los || !raw || ngvas == 0)
		die("no GVAs or out of memory");
	if (pread(gfd, raw, ngvas * 8, 0) != (ssize_t)(ngvas * 8))
		die("%s: short read", argv[4]);
	for (uint64_t i = 0; i < ngvas; i++) {
		his[i] = (uint32_t)(raw[i] >> 32);
		los[i] = (uint32_t)raw[i];
	}

	pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap_fd < 0)
		die("/proc/self/pagemap: %s", strerror(errno));
	kpageflags_fd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC); /* -1 without root, like Pagemap */
	scan_vec = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (scan_vec == MAP_FAILED)
		die("mmap: %s", strerror(errno));

	/* Checksum pass (also the warm-up): the TS side computes the same sums. */
	struct host_page hp;
	uint64_t gpa = 0, gpa_sum = 0, pfn_sum = 0, present = 0;
	for (uint64_t i = 0; i < ngvas; i++) {
		if (!chain(root, his[i], los[i], &gpa, &hp))
			continue;
		gpa_sum += gpa;
		if (hp.pfn >= 0) {
			pfn_sum += (uint64_t)hp.pfn;
			present++;
		}
	}

	/* Walk only. */
	uint64_t sink = 0, k = 0;
	uint64_t t0 = now_ns();
	for (uint64_t i = 0; i < walk_iters; i++) {
		sink += (uint64_t)walk_translate(root, his[k], los[k]);
		if (++k == ngvas)
			k = 0;
	}
	uint64_t walk_ns = now_ns() - t0;

	/* The full chain. */
	k = 0;
	syscalls = 0;
	t0 = now_ns();
	for (uint64_t i = 0; i < chain_iters; i++) {
		if (chain(root, his[k], los[k], &gpa, &hp))
			sink += hp.hpa;
		if (++k == ngvas)
			k = 0;
	}
	uint64_t chain_ns = now_ns() - t0;

	printf("{\"chain_per_s\": %.1f, \"walk_per_s\": %.1f, \"chain_ns\": %llu, \"walk_ns\": %llu, \"gvas\": %llu, "
	       "\"gpa_sum\": %llu, \"pfn_sum\": %llu, \"present\": %llu, \"syscalls_per_translation\": %.3f, \"sink\": %llu}\n",
	       chain_iters * 1e9 / (double)(chain_ns ? chain_ns : 1), walk_iters * 1e9 / (double)(walk_ns ? walk_ns : 1),
	       (unsigned long long)chain_ns, (unsigned long long)walk_ns, (unsigned long long)ngvas,
	       (unsigned long long)gpa_sum, (unsigned long long)pfn_sum, (unsigned long long)present,
	       chain_iters ? (double)syscalls / (double)chain_iters : 0.0, (unsigned long long)(sink + touch));
	return 0;
}
