/* KTBP program images: strict parsing (docs/bpf-runtime.md, "Program image"). */
#include "bpf-internal.h"

#define NO_PC 0xffffffffu

int kt_bpf__fail(struct kt_bpf_verify_error *err, int ret, uint32_t pc, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		err->pc = pc;
		va_start(ap, fmt);
		kt_vsnprintf(err->reason, sizeof err->reason, fmt, ap);
		va_end(ap);
	}
	return ret;
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
}

/* 1–15 name characters, then NULs only. */
static int name_ok(const char *name)
{
	unsigned len = 0;
	while (len < KT_BPF_MAP_NAME_MAX && name[len])
		if (!name_char(name[len++]))
			return 0;
	if (len == 0 || len == KT_BPF_MAP_NAME_MAX)
		return 0;
	for (unsigned i = len; i < KT_BPF_MAP_NAME_MAX; i++)
		if (name[i])
			return 0;
	return 1;
}

static int def_check(const struct kt_bpf_map_def *d, uint32_t i, struct kt_bpf_verify_error *err)
{
	if (!name_ok(d->name))
		return kt_bpf__fail(err, -KT_EINVAL, NO_PC, "map %u: name must be 1-15 bytes of [A-Za-z0-9_.], NUL padded", i);
	if (d->type != KT_BPF_MAP_HASH && d->type != KT_BPF_MAP_ARRAY)
		return kt_bpf__fail(err, -KT_EINVAL, NO_PC, "map %s: unknown type %u (1 hash, 2 array)", d->name, d->type);
	if (d->type == KT_BPF_MAP_ARRAY ? d->key_size != 4 : (d->key_size < 1 || d->key_size > 64))
		return kt_bpf__fail(err, -KT_EINVAL, NO_PC, "map %s: bad key_size %u (hash 1-64, array 4)", d->name, d->key_size);
	if (d->value_size < 1 || d->value_size > 1024)
		return kt_bpf__fail(err, -KT_EINVAL, NO_PC, "map %s: bad value_size %u (1-1024)", d->name, d->value_size);
	if (d->max_entries < 1 || d->max_entries > 65536)
		return kt_bpf__fail(err, -KT_EINVAL, NO_PC, "map %s: bad max_entries %u (1-65536)", d->name, d->max_entries);
	return 0;
}

int kt_bpf__image_parse(struct kt_bpf_image *out, const void *image, uint32_t len, struct kt_bpf_verify_error *err)
{
	const uint8_t *p = image;
	if (!p || len < KT_BPF_IMAGE_HEADER)
		return kt_bpf__fail(err, -KT_EINVAL, NO_PC, "image too short: %u bytes", len);
	if (rd32(p) != KT_BPF_IMAGE_MAGIC)
		return kt_bpf__fail(err, -KT_EINVAL, NO_PC, "bad image magic 0x%x (want KTBP)", rd32(p));
	uint32_t vf = rd32(p + 4);
	if ((vf & 0xffff) != KT_BPF_IMAGE_VERSION)
		return kt_bpf__fail(err, -KT_EINVAL, NO_PC, "unsupported image version %u", vf & 0xffff);
	if (vf >> 16)
		return kt_bpf__fail(err, -KT_EINVAL, NO_PC, "unknown image flags 0x%x", vf >> 16);
	uint32_t insns = rd32(p + 8), maps = rd32(p + 12);
	if (insns == 0)
		return kt_bpf__fail(err, -KT_EINVAL, NO_PC, "empty program");
	if (insns > KT_BPF_MAX_INSNS)
		return kt_bpf__fail(err, -KT_E2BIG, NO_PC, "program too long: %u instructions (at most %u)", insns, KT_BPF_MAX_INSNS);
	if (maps > KT_BPF_MAX_MAPS)
		return kt_bpf__fail(err, -KT_EINVAL, NO_PC, "too many maps: %u (at most %u)", maps, KT_BPF_MAX_MAPS);
	uint32_t want = KT_BPF_IMAGE_HEADER + KT_BPF_MAPDEF_SIZE * maps + 8 * insns;
	if (len != want)
		return kt_bpf__fail(err, -KT_EINVAL, NO_PC, "image is %u bytes, its header says %u", len, want);
	out->insn_count = insns;
	out->map_count = maps;
	for (uint32_t i = 0; i < maps; i++) {
		const uint8_t *d = p + KT_BPF_IMAGE_HEADER + KT_BPF_MAPDEF_SIZE * i;
		struct kt_bpf_map_def *m = &out->maps[i];
		memcpy(m->name, d, KT_BPF_MAP_NAME_MAX);
		m->type = rd32(d + 16);
		m->key_size = rd32(d + 20);
		m->value_size = rd32(d + 24);
		m->max_entries = rd32(d + 28);
		int r = def_check(m, i, err);
		if (r)
			return r;
	}
	out->insns = p + KT_BPF_IMAGE_HEADER + KT_BPF_MAPDEF_SIZE * maps;
	return 0;
}
