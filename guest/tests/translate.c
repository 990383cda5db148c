/*
 * Address translation from the guest's side (checked by test/integration/translate-guest.test.ts).
 *
 * Maps pages of both sizes at chosen GVAs, proves each mapping by writing through it and reading
 * through the identity map at its GPA, prints the walk of each probed address, and reports every
 * probe to the host (which compares with KVM_TRANSLATE, its own walker and pagemap). Then remaps
 * the 4 KiB page and checks that reads through the GVA see the new page, which needs the TLB
 * flush to work. Exit status = number of failed checks. Assumes the default 64 MiB of RAM.
 */
#include <kvmtalk.h>

#define HC_PROBE_GPA (KT_HC_USER_BASE + 1) /* gva, GPA from our own walk, page size */
#define HC_PROBE_HPA (KT_HC_USER_BASE + 2) /* gva, HPA, PFN, flags from KT_HC_GPA_TO_HPA */

/* Above RAM, inside a 2 MiB identity leaf: a 4 KiB mapping here splits that leaf. */
#define GVA_4K 0x40000000UL
/* The next identity leaf (also above RAM), replaced by a 2 MiB page of RAM. */
#define GVA_2M 0x40200000UL
/* 18 MiB: free RAM between the image (4 MiB + a little) and the stacks (top of 64 MiB). */
#define GPA_2M 0x1200000UL
/* 1 TiB: PML4 slot 2 is empty, so mapping here allocates a PDPT, a PD and a page table. */
#define GVA_FAR 0x10000000000UL

#define WORDS (KT_PAGE_4K / 8)

static int failures;
/* Lives in .data, i.e. in the image's 2 MiB identity page. */
static volatile uint64_t image_marker = 0x1de4f00d;

static void check(bool ok, const char *what)
{
	kt_printf("%s %s\n", ok ? "ok  " : "FAIL", what);
	failures += !ok;
}

static volatile uint64_t *words(uint64_t addr)
{
	return (volatile uint64_t *)addr;
}

static void fill(uint64_t addr, uint64_t tag)
{
	for (unsigned i = 0; i < WORDS; i++)
		words(addr)[i] = tag | i;
}

static bool holds(uint64_t addr, uint64_t tag)
{
	for (unsigned i = 0; i < WORDS; i++)
		if (words(addr)[i] != (tag | i))
			return false;
	return true;
}

/* Prints gva's walk and reports it to the host; in_ram: its GPA is backed by guest RAM. */
static void probe(uint64_t gva, uint64_t want_gpa, uint64_t want_size, bool in_ram)
{
	struct kt_walk w;
	struct kt_hpa_info h;

	kt_print_walk((const void *)gva);
	if (kt_walk((const void *)gva, &w) < 0) {
		check(false, "probe: walk");
		return;
	}
	check(w.gpa == want_gpa && w.page_size == want_size, "probe: GPA and page size");
	kt_hypercall3(HC_PROBE_GPA, gva, w.gpa, w.page_size);
	int r = kt_va_to_hpa((const void *)gva, &h);
	if (!in_ram) {
		check(r == -KT_EFAULT, "probe: no host page above RAM");
		return;
	}
	if (r == -KT_EPERM) {
		kt_printf("HPA unknown: the VMM cannot read PFNs (not root)\n");
		return;
	}
	check(r == 0 && (h.flags & KT_HPA_MAPPED), "probe: host page mapped");
	kt_printf("HPA 0x%016lx pfn 0x%lx flags 0x%lx (%s, order %lu)\n", h.hpa, h.pfn, h.flags,
		  (h.flags & KT_HPA_HUGE) ? "huge" : "small", KT_HPA_ORDER(h.flags));
	kt_hypercall4(HC_PROBE_HPA, gva, h.hpa, h.pfn, h.flags);
}

int main(void)
{
	const uint64_t rw = KT_PTE_RW | KT_PTE_US;
	uint64_t page_a = (uint64_t)kt_alloc_page(), page_b = (uint64_t)kt_alloc_page();
	uint64_t page_c = (uint64_t)kt_alloc_page();

	check(page_a && page_b && page_c && kt_gva_to_gpa((void *)page_a) == (long)page_a,
	      "kt_alloc_page gives identity-mapped pages");
	kt_printf("cr3 0x%lx, pages A 0x%lx B 0x%lx C 0x%lx\n", kt_cr3(), page_a, page_b, page_c);

	check(kt_map_page((void *)(GVA_4K + 0x800), page_a, KT_PAGE_4K, rw) == -KT_EINVAL,
	      "misaligned GVA refused");
	check(kt_map_page((void *)GVA_2M, GPA_2M + KT_PAGE_4K, KT_PAGE_2M, rw) == -KT_EINVAL,
	      "misaligned GPA refused");
	check(kt_map_page((void *)GVA_4K, page_a, 8192, rw) == -KT_EINVAL, "bad size refused");
	check(kt_map_page((void *)GVA_4K, page_a, KT_PAGE_4K, KT_PTE_PS) == -KT_EINVAL,
	      "PS in flags refused");

	/* Each mapping is written through its GVA and read back at its GPA through the identity map. */
	check(kt_map_page((void *)GVA_4K, page_a, KT_PAGE_4K, rw) == 0, "map 4 KiB (splits a 2 MiB leaf)");
	fill(GVA_4K, 0xa4a4UL << 48);
	check(holds(page_a, 0xa4a4UL << 48), "4 KiB mapping reaches page A");
	/* The split must keep what the old leaf mapped around the new page. */
	check(kt_gva_to_gpa((void *)(GVA_4K + 0x1000)) == (long)(GVA_4K + 0x1000) &&
		      kt_gva_to_gpa((void *)(GVA_4K + 0x1ff000)) == (long)(GVA_4K + 0x1ff000),
	      "split keeps the rest of the 2 MiB identity mapping");

	check(kt_map_page((void *)GVA_2M, GPA_2M, KT_PAGE_2M, rw) == 0, "map 2 MiB");
	for (unsigned p = 0; p < 512; p++)
		words(GVA_2M + p * KT_PAGE_4K)[p] = (0x2b2bUL << 48) | p;
	bool ok2m = true;
	for (unsigned p = 0; p < 512; p++)
		ok2m &= words(GPA_2M + p * KT_PAGE_4K)[p] == ((0x2b2bUL << 48) | p);
	check(ok2m, "2 MiB mapping reaches GPA 18 MiB in every 4 KiB page");

	check(kt_map_page((void *)GVA_FAR, page_c, KT_PAGE_4K, rw) == 0, "map 4 KiB at 1 TiB (new tables)");
	fill(GVA_FAR, 0xc4c4UL << 48);
	check(holds(page_c, 0xc4c4UL << 48), "1 TiB mapping reaches page C");

	check(image_marker == 0x1de4f00d, "image marker");
	probe(0x1234, 0x1234, KT_PAGE_4K, true);
	probe((uint64_t)&image_marker, (uint64_t)&image_marker, KT_PAGE_2M, true);
	probe(GVA_4K + 0x123, page_a + 0x123, KT_PAGE_4K, true);
	probe(GVA_4K + 0x1000, GVA_4K + 0x1000, KT_PAGE_4K, false);
	probe(GVA_2M + 0x12345, GPA_2M + 0x12345, KT_PAGE_2M, true);
	probe(GVA_FAR + 0x678, page_c + 0x678, KT_PAGE_4K, true);

	/* Remap the 4 KiB GVA while the TLB holds its old translation (the fill above used it). */
	fill(page_b, 0xb4b4UL << 48);
	check(words(GVA_4K)[0] == (0xa4a4UL << 48), "GVA reads page A before the remap");
	check(kt_map_page((void *)GVA_4K, page_b, KT_PAGE_4K, rw) == 0, "remap 4 KiB to page B");
	check(holds(GVA_4K, 0xb4b4UL << 48), "after the remap the GVA reads page B");
	words(GVA_4K)[1] = 0x5eed;
	check(words(page_b)[1] == 0x5eed && holds(page_a, 0xa4a4UL << 48),
	      "writes through the GVA reach page B, page A unchanged");
	probe(GVA_4K + 0x123, page_b + 0x123, KT_PAGE_4K, true);

	check(kt_unmap_page((void *)GVA_FAR) == 0 && kt_gva_to_gpa((void *)GVA_FAR) == -KT_EFAULT,
	      "unmap: the walk finds nothing");
	check(kt_unmap_page((void *)GVA_FAR) == -KT_EFAULT, "unmap of an unmapped GVA: -EFAULT");

	kt_printf("translate: %d failures\n", failures);
	return failures;
}
