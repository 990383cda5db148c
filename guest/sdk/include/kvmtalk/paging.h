/*
 * kvmtalk guest SDK: the guest's own page tables and address translation (GVA → GPA → HPA).
 * Included by <kvmtalk.h>; include that, not this file.
 *
 * The VMM starts every guest with 4-level paging whose tables are identity-mapped (the PML4 at
 * 0x5000, see docs/guest-abi.md), so a table's guest-physical address is also a pointer to it.
 * Everything here relies on that: tables this file allocates come from a pool in the program's
 * image, which the identity map covers too. CPL3 code can neither read CR3 nor run INVLPG, so
 * CR3 comes from the per-CPU block and TLB flushes from the KT_HC_FLUSH_TLB hypercall.
 *
 * Not for concurrent editing of one mapping from several vCPUs: a flush reaches only the
 * calling vCPU's TLB (there is no shootdown).
 */
#ifndef KVMTALK_PAGING_H
#define KVMTALK_PAGING_H

#include <kvmtalk.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Returned by kt_map_page when the table pool is used up (a guest-side code: no hypercall uses it). */
#define KT_ENOMEM 12

/* KT_HC_GPA_TO_HPA flags (RSI), as in EvCache's gpa_hpa. */
#define KT_HPA_HUGE          1 /* the host page is huge or part of a compound page */
#define KT_HPA_MAPPED        2 /* a host page backs the GPA (the host has touched it) */
#define KT_HPA_ORDER(flags)  (((flags) >> 2) & 0x1f) /* folio order: 9 for a 2 MiB page */

/* Paging-structure entry bits (x86-64, SDM vol. 3 §4.5). */
#define KT_PTE_P    (1ULL << 0)
#define KT_PTE_RW   (1ULL << 1)
#define KT_PTE_US   (1ULL << 2)
#define KT_PTE_PWT  (1ULL << 3)
#define KT_PTE_PCD  (1ULL << 4)
#define KT_PTE_A    (1ULL << 5)
#define KT_PTE_D    (1ULL << 6)
#define KT_PTE_PS   (1ULL << 7)  /* in a PDPTE or PDE: the entry maps a 1 GiB / 2 MiB page */
#define KT_PTE_G    (1ULL << 8)
#define KT_PTE_NX   (1ULL << 63) /* reserved (the entry faults) unless EFER.NXE; the VMM leaves it clear */
#define KT_PTE_ADDR 0x000ffffffffff000ULL /* physical address bits 51:12 */

#define KT_PAGE_4K 0x1000ULL
#define KT_PAGE_2M 0x200000ULL
#define KT_PAGE_1G 0x40000000ULL

/** What the host reports for one guest-physical address (KT_HC_GPA_TO_HPA). */
struct kt_hpa_info {
	uint64_t hpa;   /* host-physical address of the byte; 0 when not mapped */
	uint64_t pfn;   /* host page frame number of its 4 KiB page; 0 when not mapped */
	uint64_t flags; /* KT_HPA_* */
};

/** One walk of the guest's page tables, level 4 (PML4/PGD) first. */
struct kt_walk {
	uint64_t gpa;       /* the translation (valid when kt_walk returned 0) */
	uint64_t page_size; /* KT_PAGE_4K, KT_PAGE_2M or KT_PAGE_1G */
	int steps;          /* entries read: step i is level 4 - i */
	uint64_t table[4];  /* GPA of the table read at each step */
	unsigned index[4];  /* index into that table */
	uint64_t entry[4];  /* the entry read */
};

/**
 * KVM's register convention with two extra outputs: RBX = a0 in, RAX = result, and RDX / RSI
 * come back in *rdx / *rsi (the host leaves them unchanged, here 0, unless it sets them).
 */
static inline long kt_hypercall1_out2(unsigned long nr, unsigned long a0, unsigned long *rdx,
				      unsigned long *rsi)
{
	long ret;
	unsigned long d = 0, s = 0;
	__asm__ volatile("outb %%al, $0xe0" : "=a"(ret), "+d"(d), "+S"(s) : "a"(nr), "b"(a0)
			 : "memory");
	*rdx = d;
	*rsi = s;
	return ret;
}

/** The PML4's GPA (CR3 as the VMM set it), from the per-CPU block: CPL3 cannot read CR3. */
uint64_t kt_cr3(void);

/** Walks the page tables for va into *w. Returns 0, or -KT_EFAULT (non-canonical, not present). */
int kt_walk(const void *va, struct kt_walk *w);

/** The GPA va maps to, or -KT_EFAULT when it is not mapped. Handles 4 KiB, 2 MiB, 1 GiB leaves. */
long kt_gva_to_gpa(const void *va);

/** Prints va's walk to the console: indices, each entry in hex and bits, the page size, the GPA. */
void kt_print_walk(const void *va);

/** The host page behind gpa (KT_HC_GPA_TO_HPA). Returns 0, -KT_EFAULT or -KT_EPERM. */
int kt_gpa_to_hpa(uint64_t gpa, struct kt_hpa_info *out);

/** kt_gva_to_gpa, then kt_gpa_to_hpa. Returns 0 or the first negative error. */
int kt_va_to_hpa(const void *va, struct kt_hpa_info *out);

/** A zeroed 4 KiB page (identity-mapped, so its address is its GPA), or NULL when none is left. */
void *kt_alloc_page(void);

/**
 * Maps the page at va (size KT_PAGE_4K or KT_PAGE_2M, va and gpa aligned to it) to gpa with the
 * leaf flags `flags` (P is implied; PS and address bits are refused). Missing tables are
 * allocated with kt_alloc_page; a larger leaf in the way is split into smaller ones that keep
 * its mapping; a 2 MiB mapping replaces a page table that was in its place. Flushes the TLB.
 * Returns 0, -KT_EINVAL (bad size, alignment or flags) or -KT_ENOMEM (out of table pages).
 */
int kt_map_page(const void *va, uint64_t gpa, uint64_t size, uint64_t flags);

/** Removes the leaf (of any size) that maps va and flushes the TLB. Returns 0 or -KT_EFAULT. */
int kt_unmap_page(const void *va);

/** Flushes this vCPU's TLB, global entries included (KT_HC_FLUSH_TLB). */
void kt_flush_tlb(void);

#ifdef __cplusplus
}
#endif

#endif /* KVMTALK_PAGING_H */
