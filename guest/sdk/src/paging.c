/*
 * The guest's own page tables: walk them, print a walk, edit them, and ask the host for the
 * host-physical page behind a GPA. Assumptions (identity-mapped tables, CR3 from the per-CPU
 * block, flushes by hypercall) are in <kvmtalk/paging.h>.
 */
#include <kvmtalk.h>

#define ENTRIES    512
#define POOL_PAGES 128
/* In a 1 GiB or 2 MiB leaf the PAT bit is bit 12; in a 4 KiB PTE it is bit 7 (where PS is). */
#define PTE_PAT_LARGE (1ULL << 12)
#define PTE_PAT_4K    (1ULL << 7)

/* Linux's names for levels 4..1, which the output of the seed's guest module uses. */
static const char *const level_name[5] = { "", "PTE", "PMD", "PUD", "PGD" };

static unsigned shift_of(int level)
{
	return 12 + 9 * (level - 1);
}

static unsigned index_of(uint64_t va, int level)
{
	return (va >> shift_of(level)) & (ENTRIES - 1);
}

/*
 * Tables are identity-mapped, so a table's GPA is a pointer to it. volatile: the CPU reads
 * these entries (and sets A/D in them) behind the compiler's back, so every access must happen.
 */
static volatile uint64_t *table_at(uint64_t gpa)
{
	return (volatile uint64_t *)(uintptr_t)(gpa & KT_PTE_ADDR);
}

static bool canonical(uint64_t va)
{
	return (uint64_t)((int64_t)(va << 16) >> 16) == va;
}

static bool is_leaf(uint64_t e, int level)
{
	return level == 1 || ((level == 2 || level == 3) && (e & KT_PTE_PS));
}

uint64_t kt_cr3(void)
{
	uint64_t cr3;
	__asm__("movq %%gs:16, %0" : "=r"(cr3));
	return cr3;
}

int kt_walk(const void *va, struct kt_walk *w)
{
	uint64_t a = (uint64_t)va, table = kt_cr3() & KT_PTE_ADDR;

	w->steps = 0;
	if (!canonical(a))
		return -KT_EFAULT;
	for (int level = 4;; level--) {
		unsigned i = index_of(a, level);
		uint64_t e = table_at(table)[i];
		int s = w->steps++;

		w->table[s] = table;
		w->index[s] = i;
		w->entry[s] = e;
		if (!(e & KT_PTE_P))
			return -KT_EFAULT;
		if (is_leaf(e, level)) {
			w->page_size = 1ULL << shift_of(level);
			w->gpa = (e & KT_PTE_ADDR & ~(w->page_size - 1)) | (a & (w->page_size - 1));
			return 0;
		}
		table = e & KT_PTE_ADDR;
	}
}

long kt_gva_to_gpa(const void *va)
{
	struct kt_walk w;
	int r = kt_walk(va, &w);

	return r < 0 ? r : (long)w.gpa;
}

/* Writes bits hi..lo of v as '0'/'1' at p and NUL-terminates; returns the end. */
static char *put_bits(char *p, uint64_t v, int hi, int lo)
{
	for (int b = hi; b >= lo; b--)
		*p++ = (char)('0' + ((v >> b) & 1));
	*p = '\0';
	return p;
}

/* The seed's view of a 64-bit entry or address: bits 63:52, 51:12 (the frame), 11:0. */
static void entry_bits(char *buf, uint64_t v)
{
	char *p = put_bits(buf, v, 63, 52);

	*p++ = ' ';
	p = put_bits(p, v, 51, 12);
	*p++ = ' ';
	put_bits(p, v, 11, 0);
}

static void flag_names(char *buf, size_t size, uint64_t e, int level)
{
	static const char *const names[9] = { "P", "RW", "US", "PWT", "PCD", "A", "D", "PS", "G" };
	size_t len = 0;

	buf[0] = '\0';
	for (int b = 0; b < 9 && len < size; b++)
		if ((e >> b) & 1)
			len += kt_snprintf(buf + len, size - len, " %s",
					   b == 7 && level == 1 ? "PAT" : names[b]);
	if (len < size && level > 1 && is_leaf(e, level) && (e & PTE_PAT_LARGE))
		len += kt_snprintf(buf + len, size - len, " PAT");
	if (len < size && (e & KT_PTE_NX))
		kt_snprintf(buf + len, size - len, " NX");
}

void kt_print_walk(const void *va)
{
	uint64_t a = (uint64_t)va;
	struct kt_walk w;
	int r = kt_walk(va, &w);
	char bits[80], flags[48], *p = bits;

	kt_printf("GVA 0x%016lx = [PGD %u] [PUD %u] [PMD %u] [PTE %u] [Offset 0x%lx]\n", a,
		  index_of(a, 4), index_of(a, 3), index_of(a, 2), index_of(a, 1), a & 0xfff);
	kt_printf("GVA [PGD IDX] [PUD IDX] [PMD IDX] [PTE IDX] [  Offset  ]\n");
	for (int level = 4; level >= 1; level--) {
		p = put_bits(p, a, shift_of(level) + 8, shift_of(level));
		*p++ = ' ';
	}
	put_bits(p, a, 11, 0);
	kt_printf("GVA %s\n", bits);
	if (w.steps == 0) {
		kt_printf("GVA 0x%016lx is not canonical\n", a);
		return;
	}
	for (int s = 0; s < w.steps; s++) {
		int level = 4 - s;

		flag_names(flags, sizeof(flags), w.entry[s], level);
		kt_printf("level %d (%s) table 0x%lx index %u entry 0x%lx flags%s\n", level,
			  level_name[level], w.table[s], w.index[s], w.entry[s], flags);
		entry_bits(bits, w.entry[s]);
		kt_printf("%u: %s %s\n", w.index[s], level_name[level], bits);
	}
	int leaf = 4 - (w.steps - 1);
	if (r < 0) {
		kt_printf("level %d (%s) entry not present: GVA 0x%016lx is not mapped\n", leaf,
			  level_name[leaf], a);
		return;
	}
	if (leaf == 1)
		kt_printf("Normal Page (4k) at level 1 detected!\n");
	else
		kt_printf("Huge Page (%s) at level %d detected!\n", leaf == 2 ? "2M" : "1G", leaf);
	entry_bits(bits, w.gpa);
	kt_printf("GPA 0x%016lx\nGPA %s\n", w.gpa, bits);
}

int kt_gpa_to_hpa(uint64_t gpa, struct kt_hpa_info *out)
{
	unsigned long pfn, flags;
	long r = kt_hypercall1_out2(KT_HC_GPA_TO_HPA, gpa, &pfn, &flags);

	if (r < 0) {
		*out = (struct kt_hpa_info){ 0 };
		return (int)r;
	}
	out->pfn = pfn;
	out->flags = flags;
	/* The host answers with the base of the 4 KiB host page; the byte is at the same offset. */
	out->hpa = (flags & KT_HPA_MAPPED) ? (uint64_t)r | (gpa & 0xfff) : 0;
	return 0;
}

int kt_va_to_hpa(const void *va, struct kt_hpa_info *out)
{
	long gpa = kt_gva_to_gpa(va);

	if (gpa < 0) {
		*out = (struct kt_hpa_info){ 0 };
		return (int)gpa;
	}
	return kt_gpa_to_hpa((uint64_t)gpa, out);
}

/*
 * Page-table pages. They live in the image, which the identity map covers, so each page's
 * address is its GPA. Already zero: the VMM zeroes guest RAM and a page is handed out once.
 */
static uint64_t pool[POOL_PAGES][ENTRIES] __attribute__((aligned(4096)));
static unsigned pool_next;

void *kt_alloc_page(void)
{
	unsigned i = __atomic_load_n(&pool_next, __ATOMIC_RELAXED);

	do {
		if (i >= POOL_PAGES)
			return NULL;
	} while (!__atomic_compare_exchange_n(&pool_next, &i, i + 1, true, __ATOMIC_RELAXED,
					      __ATOMIC_RELAXED));
	return pool[i];
}

/* Fills t with what the entry e at `level` maps, one level down: nothing, or its leaf split. */
static void fill_table(uint64_t *t, uint64_t e, int level)
{
	uint64_t child = 1ULL << shift_of(level - 1);
	uint64_t base = e & KT_PTE_ADDR & ~(child * ENTRIES - 1);
	uint64_t attrs = e & ~KT_PTE_ADDR; /* flags 11:0 (PS too) and 63:52 (NX, key) */

	if (level == 2) {
		attrs &= ~KT_PTE_PS;
		if (e & PTE_PAT_LARGE)
			attrs |= PTE_PAT_4K;
	} else {
		attrs |= e & PTE_PAT_LARGE;
	}
	for (int i = 0; i < ENTRIES; i++)
		t[i] = (e & KT_PTE_P) ? (base + i * child) | attrs : 0;
}

/*
 * The table below the entry *slot at `level`, installing one first when the entry is empty or
 * a leaf (split so it keeps mapping what it mapped). Returns its GPA, or 0 when out of pages.
 */
static uint64_t next_table(volatile uint64_t *slot, int level)
{
	uint64_t *t = NULL;

	for (;;) {
		uint64_t e = __atomic_load_n(slot, __ATOMIC_ACQUIRE);

		if ((e & KT_PTE_P) && !is_leaf(e, level))
			return e & KT_PTE_ADDR; /* (a page we took in a lost race stays unused) */
		if (!t && !(t = kt_alloc_page()))
			return 0;
		fill_table(t, e, level);
		/*
		 * The release orders the fill before the table becomes reachable. The directory entry
		 * grants RW and US because x86 ANDs them over all levels: the leaves alone decide.
		 * The exchange fails if the CPU set A/D in a leaf meanwhile: then split it again.
		 */
		uint64_t table = (uint64_t)(uintptr_t)t;
		if (__atomic_compare_exchange_n(slot, &e, table | KT_PTE_P | KT_PTE_RW | KT_PTE_US, false,
						__ATOMIC_RELEASE, __ATOMIC_RELAXED))
			return table;
	}
}

int kt_map_page(const void *va, uint64_t gpa, uint64_t size, uint64_t flags)
{
	uint64_t a = (uint64_t)va, table = kt_cr3() & KT_PTE_ADDR;
	int leaf = size == KT_PAGE_4K ? 1 : size == KT_PAGE_2M ? 2 : 0;

	if (!leaf || ((a | gpa) & (size - 1)) || !canonical(a) || (gpa & ~KT_PTE_ADDR) ||
	    (flags & (KT_PTE_ADDR | KT_PTE_PS)))
		return -KT_EINVAL;
	for (int level = 4; level > leaf; level--) {
		table = next_table(&table_at(table)[index_of(a, level)], level);
		if (!table)
			return -KT_ENOMEM;
	}
	/* A page table this 2 MiB leaf replaces stays allocated: the pool never frees. */
	__atomic_store_n(&table_at(table)[index_of(a, leaf)],
			 gpa | flags | KT_PTE_P | (leaf == 2 ? KT_PTE_PS : 0), __ATOMIC_RELEASE);
	kt_flush_tlb();
	return 0;
}

int kt_unmap_page(const void *va)
{
	struct kt_walk w;
	int r = kt_walk(va, &w);

	if (r < 0)
		return r;
	__atomic_store_n(&table_at(w.table[w.steps - 1])[w.index[w.steps - 1]], 0, __ATOMIC_RELEASE);
	kt_flush_tlb();
	return 0;
}

void kt_flush_tlb(void)
{
	kt_hypercall0(KT_HC_FLUSH_TLB);
}
