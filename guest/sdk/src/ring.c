/*
 * Shared-memory rings, the guest end (docs/channel-ring.md; the host end is
 * src/channel/ring.ts). Every word of the shared region may be rewritten by the other side at
 * any moment, so:
 *   - geometry (capacity, max_msg) comes from struct kt_ring, fixed at attach;
 *   - each shared word is loaded exactly once with __atomic_load_n, so the compiler can neither
 *     re-fetch it after the check (a double fetch) nor tear it;
 *   - this end's own index is kept privately and only stored, never read back.
 *
 * Ordering (x86-64, TSO): the producer's payload stores precede the release store of the
 * producer index; the consumer acquire-loads it before reading the payload, and release-stores
 * its own index after copying. On x86 acquire/release are plain MOVs plus compiler barriers;
 * only the doorbell handshake needs a real fence (store then load), see kt__ring_mb.
 */
#include <kvmtalk/ring.h>

#define LOAD(p)         __atomic_load_n((p), __ATOMIC_RELAXED)
#define LOAD_ACQUIRE(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE_RELEASE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/*
 * Full barrier. A locked RMW on the stack rather than MFENCE: it orders everything MFENCE
 * orders for write-back memory, is usually cheaper, and is an integer instruction (the SDK
 * avoids SSE-family instructions, which CPL0 guests cannot run on the project's hosts).
 */
static inline void kt__ring_mb(void)
{
	__asm__ volatile("lock; orl $0, (%%rsp)" ::: "memory", "cc");
}

static int ring_fail(struct kt_ring *r, uint32_t fault)
{
	if (!r->error) {
		r->fault = fault;
		r->error = fault == KT_RING_FAULT_PEER_CLOSED ? -KT_EPIPE : -KT_EPROTO;
		/* Tell the host, unless it is the one that closed (its code is the better record). */
		if (fault != KT_RING_FAULT_PEER_CLOSED)
			STORE_RELEASE(&r->hdr->close, (KT_RING_CLOSED_BY_GUEST << 8) | fault);
	}
	return r->error;
}

/* 0, or the error this call must return: already failed, closed by the peer, header changed. */
static int ring_check(struct kt_ring *r)
{
	struct kt_ring_header *h = r->hdr;

	if (r->error)
		return r->error;
	if (LOAD(&h->close) != 0)
		return ring_fail(r, KT_RING_FAULT_PEER_CLOSED);
	if (LOAD(&h->magic) != KT_RING_MAGIC)
		return ring_fail(r, KT_RING_FAULT_BAD_MAGIC);
	/* Feature flags count as version: both say "a layout this end may not understand". */
	if (LOAD(&h->version) != KT_RING_VERSION || LOAD(&h->flags) != r->flags)
		return ring_fail(r, KT_RING_FAULT_BAD_VERSION);
	if (LOAD(&h->capacity) != r->capacity || LOAD(&h->max_msg) != r->max_msg ||
	    LOAD(&h->header_size) != KT_RING_HEADER_SIZE)
		return ring_fail(r, KT_RING_FAULT_BAD_CONFIG);
	return 0;
}

static int valid_capacity(uint32_t cap)
{
	return cap >= KT_RING_MIN_CAPACITY && cap <= KT_RING_MAX_CAPACITY && (cap & (cap - 1)) == 0;
}

static void ring_bind(struct kt_ring *r, void *mem, uint32_t capacity, uint32_t max_msg,
		      uint32_t flags, uint32_t prod, uint32_t cons)
{
	r->hdr = mem;
	r->data = (uint8_t *)mem + KT_RING_HEADER_SIZE;
	r->capacity = capacity;
	r->max_msg = max_msg;
	r->flags = flags;
	r->prod = r->seen_prod = prod;
	r->cons = r->seen_cons = cons;
	r->pending_off = r->pending_frame = 0;
	r->error = 0;
	r->fault = 0;
}

int kt_ring_init(struct kt_ring *r, void *mem, size_t size, uint32_t capacity, uint32_t max_msg)
{
	struct kt_ring_header *h = mem;

	if (!r || !mem || ((uintptr_t)mem & 7) || !valid_capacity(capacity) ||
	    size < KT_RING_SIZE((size_t)capacity))
		return -KT_EINVAL;
	if (max_msg == 0)
		max_msg = KT_RING_MAX_MSG(capacity);
	if (max_msg > KT_RING_MAX_MSG(capacity))
		return -KT_EINVAL;
	memset(mem, 0, KT_RING_SIZE((size_t)capacity));
	h->version = KT_RING_VERSION;
	h->capacity = capacity;
	h->max_msg = max_msg;
	h->header_size = KT_RING_HEADER_SIZE;
	h->flags = 0;
	STORE_RELEASE(&h->magic, KT_RING_MAGIC); /* last: whoever sees it sees the rest */
	ring_bind(r, mem, capacity, max_msg, 0, 0, 0);
	return 0;
}

int kt_ring_attach(struct kt_ring *r, void *mem, size_t size)
{
	struct kt_ring_header *h = mem;
	uint32_t cap, max_msg, flags, close, prod, cons;

	if (!r || !mem || ((uintptr_t)mem & 7) || size < KT_RING_HEADER_SIZE)
		return -KT_EINVAL;
	if (LOAD_ACQUIRE(&h->magic) != KT_RING_MAGIC)
		return -KT_EINVAL;
	flags = LOAD(&h->flags);
	if (LOAD(&h->version) != KT_RING_VERSION || (flags & ~KT_RING_KNOWN_FLAGS))
		return -KT_EOPNOTSUPP;
	cap = LOAD(&h->capacity);
	max_msg = LOAD(&h->max_msg);
	if (LOAD(&h->header_size) != KT_RING_HEADER_SIZE || !valid_capacity(cap) ||
	    size < KT_RING_SIZE((size_t)cap) || max_msg > KT_RING_MAX_MSG(cap))
		return -KT_EINVAL;
	close = LOAD(&h->close);
	if (close)
		return -KT_EPIPE;
	prod = LOAD(&h->prod);
	cons = LOAD(&h->cons);
	if (((prod | cons) & 7) || prod - cons > cap)
		return -KT_EINVAL;
	/* Bind the values just checked, not a second read of the header. */
	ring_bind(r, mem, cap, max_msg, flags, prod, cons);
	return 0;
}

/*
 * Producer: loads the consumer's index and returns the bytes in use, or a negative error. The
 * index must be 8-aligned and within [last seen, own producer index]: it only moves forward and
 * never past what was produced, which also bounds the result by the capacity.
 */
static long producer_used(struct kt_ring *r)
{
	uint32_t c = LOAD_ACQUIRE(&r->hdr->cons);

	if ((c & 7) || c - r->seen_cons > r->prod - r->seen_cons)
		return ring_fail(r, KT_RING_FAULT_INDEX_OUT_OF_RANGE);
	r->seen_cons = c;
	return (long)(uint32_t)(r->prod - c);
}

/*
 * Consumer: acquire-loads the producer's index and returns the bytes waiting, or a negative
 * error. The index must be 8-aligned and within [last seen, own consumer index + capacity].
 */
static long consumer_used(struct kt_ring *r)
{
	uint32_t p = LOAD_ACQUIRE(&r->hdr->prod);
	uint32_t used = p - r->cons;

	if ((p & 7) || used > r->capacity || used < r->seen_prod - r->cons)
		return ring_fail(r, KT_RING_FAULT_INDEX_OUT_OF_RANGE);
	r->seen_prod = p;
	return (long)used;
}

/* Bytes a len-byte message needs at the producer's position (a wrap marker included). */
static uint32_t space_needed(const struct kt_ring *r, uint32_t len)
{
	uint32_t frame = (uint32_t)KT_RING_FRAME_SIZE(len);
	uint32_t tail = r->capacity - (r->prod & (r->capacity - 1));

	return frame <= tail ? frame : tail + frame;
}

long kt_ring_try_write(struct kt_ring *r, const void *msg, size_t len)
{
	uint32_t off, tail, frame, need;
	struct kt_ring_frame *f;
	long used;
	int err = ring_check(r);

	if (err)
		return err;
	if (len > r->max_msg)
		return -KT_EMSGSIZE;
	used = producer_used(r);
	if (used < 0)
		return used;
	frame = (uint32_t)KT_RING_FRAME_SIZE(len);
	off = r->prod & (r->capacity - 1);
	tail = r->capacity - off;
	/* A frame never straddles the end: pad the tail (always >= 8 bytes) with a wrap marker. */
	need = frame <= tail ? frame : tail + frame;
	if (need > r->capacity - (uint32_t)used)
		return -KT_EAGAIN;
	if (frame > tail) {
		f = (struct kt_ring_frame *)(r->data + off);
		f->len = KT_RING_WRAP;
		f->reserved = 0;
		off = 0;
	}
	f = (struct kt_ring_frame *)(r->data + off);
	f->len = (uint32_t)len;
	f->reserved = 0;
	if (len)
		memcpy(r->data + off + KT_RING_FRAME_HEADER, msg, len);
	/*
	 * Publish. Release: no earlier store may sink below this one (compiler barrier; x86 keeps
	 * stores in order, and a REP MOVSB memcpy is ordered before a later discrete store).
	 */
	r->prod += need;
	STORE_RELEASE(&r->hdr->prod, r->prod);
	return 0;
}

/*
 * Validates the next frame. Returns its length (pending_off/pending_frame set), -KT_EAGAIN, or
 * an error. Skips at most one wrap marker (a second one would sit at offset 0, which is invalid).
 */
static long ring_peek(struct kt_ring *r)
{
	long used;
	int err = ring_check(r);

	if (err)
		return err;
	used = consumer_used(r);
	if (used < 0)
		return used;
	for (;;) {
		uint32_t off, len, reserved, frame;
		const struct kt_ring_frame *f;

		if (used == 0)
			return -KT_EAGAIN;
		off = r->cons & (r->capacity - 1);
		f = (const struct kt_ring_frame *)(r->data + off);
		len = LOAD(&f->len); /* read once: the checks below and the copy use this value */
		reserved = LOAD(&f->reserved);
		if (reserved != 0)
			return ring_fail(r, KT_RING_FAULT_BAD_FRAME_HEADER);
		if (len == KT_RING_WRAP) {
			uint32_t tail = r->capacity - off;

			if (off == 0)
				return ring_fail(r, KT_RING_FAULT_FRAME_CROSSES_END);
			if (tail > (uint32_t)used)
				return ring_fail(r, KT_RING_FAULT_FRAME_OVERRUN);
			r->cons += tail;
			used -= tail;
			STORE_RELEASE(&r->hdr->cons, r->cons); /* give the padding back at once */
			continue;
		}
		if (len > r->max_msg)
			return ring_fail(r, KT_RING_FAULT_BAD_LENGTH);
		frame = (uint32_t)KT_RING_FRAME_SIZE(len);
		if (frame > (uint32_t)used)
			return ring_fail(r, KT_RING_FAULT_FRAME_OVERRUN);
		if (off + frame > r->capacity)
			return ring_fail(r, KT_RING_FAULT_FRAME_CROSSES_END);
		r->pending_off = off + KT_RING_FRAME_HEADER;
		r->pending_frame = frame;
		return (long)len;
	}
}

long kt_ring_try_read(struct kt_ring *r, void *buf, size_t cap)
{
	long len = ring_peek(r);

	if (len < 0)
		return len;
	if ((size_t)len > cap)
		return -KT_E2BIG;
	if (len)
		memcpy(buf, r->data + r->pending_off, (size_t)len);
	/* Release: the copy above completes (loads) before the slot is handed back. */
	r->cons += r->pending_frame;
	STORE_RELEASE(&r->hdr->cons, r->cons);
	return len;
}

long kt_ring_peek_len(struct kt_ring *r)
{
	return ring_peek(r);
}

long kt_ring_available(struct kt_ring *r)
{
	int err = ring_check(r);

	return err ? err : consumer_used(r);
}

long kt_ring_free(struct kt_ring *r)
{
	int err = ring_check(r);
	long used;

	if (err)
		return err;
	used = producer_used(r);
	return used < 0 ? used : (long)r->capacity - used;
}

void kt_ring_close(struct kt_ring *r, uint32_t fault)
{
	if (r->error)
		return;
	r->fault = fault;
	r->error = -KT_EPIPE;
	STORE_RELEASE(&r->hdr->close, (KT_RING_CLOSED_BY_GUEST << 8) | (fault & 0xff));
}

int kt_ring_prepare_wait_data(struct kt_ring *r)
{
	int err = ring_check(r);
	long used;

	if (err)
		return err;
	__atomic_store_n(&r->hdr->want_data, 1, __ATOMIC_RELAXED);
	kt__ring_mb(); /* the flag store must be visible before the index is re-read */
	used = consumer_used(r);
	return used < 0 ? (int)used : used == 0;
}

void kt_ring_end_wait_data(struct kt_ring *r)
{
	__atomic_store_n(&r->hdr->want_data, 0, __ATOMIC_RELAXED);
}

int kt_ring_data_doorbell_needed(struct kt_ring *r)
{
	int err = ring_check(r);

	if (err)
		return err;
	kt__ring_mb(); /* the index store (in try_write) must be visible before the flag is read */
	return LOAD(&r->hdr->want_data) != 0;
}

int kt_ring_prepare_wait_space(struct kt_ring *r, size_t len)
{
	int err = ring_check(r);
	long used;

	if (err)
		return err;
	if (len > r->max_msg)
		return -KT_EMSGSIZE;
	__atomic_store_n(&r->hdr->want_space, 1, __ATOMIC_RELAXED);
	kt__ring_mb();
	used = producer_used(r);
	if (used < 0)
		return (int)used;
	return space_needed(r, (uint32_t)len) > r->capacity - (uint32_t)used;
}

void kt_ring_end_wait_space(struct kt_ring *r)
{
	__atomic_store_n(&r->hdr->want_space, 0, __ATOMIC_RELAXED);
}

int kt_ring_space_doorbell_needed(struct kt_ring *r)
{
	int err = ring_check(r);

	if (err)
		return err;
	kt__ring_mb();
	return LOAD(&r->hdr->want_space) != 0;
}

int kt_channel_attach(void *mem, size_t size, struct kt_ring *to_host, struct kt_ring *to_guest,
		      uint32_t *id)
{
	struct kt_channel_header *ch = mem;
	uint32_t csize, ho, hs, go, gs;
	int err;

	if (!mem || ((uintptr_t)mem & 7) || size < KT_CHANNEL_HEADER_SIZE)
		return -KT_EINVAL;
	if (LOAD_ACQUIRE(&ch->magic) != KT_CHANNEL_MAGIC)
		return -KT_EINVAL;
	if (LOAD(&ch->version) != KT_CHANNEL_VERSION || LOAD(&ch->flags) != 0)
		return -KT_EOPNOTSUPP;
	csize = LOAD(&ch->size);
	ho = LOAD(&ch->to_host_offset);
	hs = LOAD(&ch->to_host_size);
	go = LOAD(&ch->to_guest_offset);
	gs = LOAD(&ch->to_guest_size);
	/* 64-bit sums: no u32 wrap can make an out-of-range ring look inside the channel. */
	if (csize > size || csize < KT_CHANNEL_HEADER_SIZE ||
	    (ho & 7) || ho < KT_CHANNEL_HEADER_SIZE || (uint64_t)ho + hs > csize ||
	    (go & 7) || go < KT_CHANNEL_HEADER_SIZE || (uint64_t)go + gs > csize ||
	    ((uint64_t)ho < (uint64_t)go + gs && (uint64_t)go < (uint64_t)ho + hs))
		return -KT_EINVAL;
	err = kt_ring_attach(to_host, (uint8_t *)mem + ho, hs);
	if (err)
		return err;
	err = kt_ring_attach(to_guest, (uint8_t *)mem + go, gs);
	if (err)
		return err;
	if (id)
		*id = LOAD(&ch->id);
	return 0;
}
