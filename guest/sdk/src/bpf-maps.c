/*
 * eBPF maps in guest memory, in the layout the host reads and updates on its own
 * (docs/bpf-runtime.md, "Maps in guest memory"): an append-only directory of 64-byte entries,
 * array and open-addressing hash storage carved from one static arena. Maps are never freed:
 * they outlive programs, so a replaced program keeps its state.
 */
#include "bpf-internal.h"

#define STORAGE_BYTES (4u << 20)

static struct {
	uint32_t magic, version, capacity, count;
	uint8_t zero[48];
	struct kt_bpf_map entries[KT_BPF_MAPDIR_CAPACITY];
} dir __attribute__((aligned(64))) = { .magic = KT_BPF_MAPDIR_MAGIC, .version = KT_BPF_MAPDIR_VERSION, .capacity = KT_BPF_MAPDIR_CAPACITY };
_Static_assert(sizeof(dir) == 64 + 64 * KT_BPF_MAPDIR_CAPACITY, "directory header is 64 bytes");

static uint8_t storage[STORAGE_BYTES] __attribute__((aligned(4096)));
static uint32_t storage_used;

static uint32_t round8(uint32_t n)
{
	return (n + 7) & ~7u;
}

uint64_t kt_bpf_map_directory(void)
{
	return (uint64_t)(uintptr_t)&dir;
}

struct kt_bpf_map *kt_bpf_map_find(const char *name)
{
	uint32_t n = __atomic_load_n(&dir.count, __ATOMIC_ACQUIRE);
	if (!name)
		return NULL;
	for (uint32_t i = 0; i < n; i++)
		if (strncmp(dir.entries[i].name, name, KT_BPF_MAP_NAME_MAX) == 0 && strlen(name) < KT_BPF_MAP_NAME_MAX)
			return &dir.entries[i];
	return NULL;
}

/* Callers serialise creation (bpf-prog.c's load lock); readers only see entries below count. */
int kt_bpf__map_get(struct kt_bpf_map **out, const struct kt_bpf_map_def *def)
{
	struct kt_bpf_map *m = kt_bpf_map_find(def->name);
	if (m) {
		if (m->type != def->type || m->key_size != def->key_size || m->value_size != def->value_size ||
		    m->max_entries != def->max_entries)
			return -KT_EINVAL;
		*out = m;
		return 0;
	}
	if (dir.count == KT_BPF_MAPDIR_CAPACITY)
		return -KT_ENOMEM;
	uint64_t bytes, buckets = 0;
	if (def->type == KT_BPF_MAP_ARRAY) {
		bytes = (uint64_t)def->max_entries * round8(def->value_size);
	} else {
		buckets = 2;
		while (buckets < 2ull * def->max_entries)
			buckets <<= 1;
		bytes = buckets * (8 + round8(def->key_size) + round8(def->value_size));
	}
	if (bytes > STORAGE_BYTES - storage_used)
		return -KT_ENOMEM;
	m = &dir.entries[dir.count];
	memset(m, 0, sizeof *m);
	memcpy(m->name, def->name, KT_BPF_MAP_NAME_MAX);
	m->type = def->type;
	m->key_size = def->key_size;
	m->value_size = def->value_size;
	m->max_entries = def->max_entries;
	m->data = (uint64_t)(uintptr_t)(storage + storage_used);
	m->bytes = bytes;
	m->buckets = (uint32_t)buckets;
	memset(storage + storage_used, 0, bytes);
	storage_used += (uint32_t)((bytes + 63) & ~63ull);
	__atomic_store_n(&dir.count, dir.count + 1, __ATOMIC_RELEASE);
	*out = m;
	return 0;
}

/* ---- hash maps: linear probing from FNV-1a(key) & (buckets - 1) ---- */

static uint32_t fnv1a(const uint8_t *p, uint32_t n)
{
	uint32_t h = 0x811c9dc5u;
	for (uint32_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x01000193u;
	return h;
}

static uint8_t *slot_at(const struct kt_bpf_map *m, uint32_t i)
{
	uint32_t size = 8 + round8(m->key_size) + round8(m->value_size);
	return (uint8_t *)(uintptr_t)m->data + (uint64_t)i * size;
}

static uint8_t *slot_value(const struct kt_bpf_map *m, uint8_t *slot)
{
	return slot + 8 + round8(m->key_size);
}

/*
 * The used slot holding key, or NULL; *free_slot (if asked) = the first deleted or empty slot on
 * the probe path. The probe stops at an empty slot, or after visiting every bucket (a table full
 * of deleted slots has no empty one).
 */
static uint8_t *hash_find(const struct kt_bpf_map *m, const void *key, uint32_t h, uint8_t **free_slot)
{
	uint32_t mask = m->buckets - 1;
	if (free_slot)
		*free_slot = NULL;
	for (uint32_t n = 0, i = h & mask; n < m->buckets; n++, i = (i + 1) & mask) {
		uint8_t *s = slot_at(m, i);
		uint32_t state;
		memcpy(&state, s, 4);
		if (state == KT_BPF_HASH_EMPTY) {
			if (free_slot && !*free_slot)
				*free_slot = s;
			return NULL;
		}
		if (state == KT_BPF_HASH_DELETED) {
			if (free_slot && !*free_slot)
				*free_slot = s;
			continue;
		}
		uint32_t sh;
		memcpy(&sh, s + 4, 4);
		if (sh == h && memcmp(s + 8, key, m->key_size) == 0)
			return s;
	}
	return NULL;
}

void *kt_bpf_map_lookup(struct kt_bpf_map *m, const void *key)
{
	if (!m || !key)
		return NULL;
	if (m->type == KT_BPF_MAP_ARRAY) {
		uint32_t i;
		memcpy(&i, key, 4);
		return i < m->max_entries ? (uint8_t *)(uintptr_t)m->data + (uint64_t)i * round8(m->value_size) : NULL;
	}
	kt_bpf__lock(&m->lock);
	uint8_t *s = hash_find(m, key, fnv1a(key, m->key_size), NULL);
	kt_bpf__unlock(&m->lock);
	return s ? slot_value(m, s) : NULL;
}

int kt_bpf_map_update(struct kt_bpf_map *m, const void *key, const void *value, uint64_t flags)
{
	if (!m || !key || !value || flags > 2)
		return -KT_EINVAL;
	if (m->type == KT_BPF_MAP_ARRAY) {
		uint32_t i;
		memcpy(&i, key, 4);
		if (i >= m->max_entries)
			return -KT_E2BIG;
		if (flags == 1)
			return -KT_EEXIST; /* array elements always exist, as in Linux */
		memcpy((uint8_t *)(uintptr_t)m->data + (uint64_t)i * round8(m->value_size), value, m->value_size);
		return 0;
	}
	uint32_t h = fnv1a(key, m->key_size);
	int ret = 0;
	uint8_t *free_slot;
	kt_bpf__lock(&m->lock);
	uint8_t *s = hash_find(m, key, h, &free_slot);
	if (s) {
		if (flags == 1)
			ret = -KT_EEXIST;
		else
			memcpy(slot_value(m, s), value, m->value_size);
	} else if (flags == 2) {
		ret = -KT_ENOENT;
	} else if (m->live >= m->max_entries || !free_slot) {
		ret = -KT_E2BIG;
	} else {
		uint32_t used = KT_BPF_HASH_USED;
		memcpy(free_slot + 4, &h, 4);
		memcpy(free_slot + 8, key, m->key_size);
		memcpy(slot_value(m, free_slot), value, m->value_size);
		__atomic_store_n((uint32_t *)free_slot, used, __ATOMIC_RELEASE);
		m->live++;
	}
	kt_bpf__unlock(&m->lock);
	return ret;
}

int kt_bpf_map_delete(struct kt_bpf_map *m, const void *key)
{
	if (!m || !key || m->type == KT_BPF_MAP_ARRAY)
		return -KT_EINVAL;
	int ret = -KT_ENOENT;
	kt_bpf__lock(&m->lock);
	uint8_t *s = hash_find(m, key, fnv1a(key, m->key_size), NULL);
	if (s) {
		__atomic_store_n((uint32_t *)s, (uint32_t)KT_BPF_HASH_DELETED, __ATOMIC_RELEASE);
		m->live--;
		ret = 0;
	}
	kt_bpf__unlock(&m->lock);
	return ret;
}

/* ---- helpers 1-3: results as programs see them (negative errors as u64) ---- */

uint64_t kt_bpf__helper_map_lookup(uint64_t map, uint64_t key, uint64_t a3, uint64_t a4, uint64_t a5)
{
	(void)a3, (void)a4, (void)a5;
	return (uint64_t)(uintptr_t)kt_bpf_map_lookup((struct kt_bpf_map *)(uintptr_t)map, (const void *)(uintptr_t)key);
}

uint64_t kt_bpf__helper_map_update(uint64_t map, uint64_t key, uint64_t value, uint64_t flags, uint64_t a5)
{
	(void)a5;
	return (uint64_t)(int64_t)kt_bpf_map_update((struct kt_bpf_map *)(uintptr_t)map, (const void *)(uintptr_t)key,
						    (const void *)(uintptr_t)value, flags);
}

uint64_t kt_bpf__helper_map_delete(uint64_t map, uint64_t key, uint64_t a3, uint64_t a4, uint64_t a5)
{
	(void)a3, (void)a4, (void)a5;
	return (uint64_t)(int64_t)kt_bpf_map_delete((struct kt_bpf_map *)(uintptr_t)map, (const void *)(uintptr_t)key);
}
