/*
 * Channels, the guest end (docs/channels.md): finding a channel in the VMM's directory, opening
 * one with KT_HC_CHAN_OPEN, and blocking send/receive with doorbells and KT_HC_WAIT on top of
 * the rings (ring.c).
 *
 * The directory and channel headers are written by the VMM, but the guest does not trust them
 * blindly either: a directory entry is copied into private memory once and validated there
 * (id, state, placement inside the channel area, mode, port, vector, reserved words, name), and
 * kt_channel_attach validates the channel header and both rings.
 */
#include <kvmtalk.h>

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)

/* How many PAUSEs a spinning waiter does before it re-checks the whole ring. */
#define SPIN_ROUNDS 256

/* The handler installed for a channel's vector when nobody else installed one. */
static void chan_default_irq(unsigned vector)
{
	(void)vector;
}

/* irq-entry.S: the SDK's entry stubs, one per vector (irq.c installs gates pointing there). */
extern const char kt__irq_stubs[];
#define KT_IDT 0x2000UL
#define KT_IRQ_STUB_SIZE 16

/* Whether the IDT gate for vector already points at a kvmtalk SDK handler stub. */
static bool gate_is_sdk(unsigned vector)
{
	volatile uint64_t *gate = (volatile uint64_t *)(KT_IDT + 16 * (unsigned long)vector);
	uint64_t lo = gate[0], hi = gate[1];
	uint64_t target = (lo & 0xffff) | ((lo >> 48) << 16) | (hi << 32);
	uint64_t stubs = (uint64_t)kt__irq_stubs;

	return target >= stubs &&
	       target < stubs + KT_IRQ_STUB_SIZE * (KT_IRQ_LAST_VECTOR - KT_IRQ_FIRST_VECTOR + 1);
}

static size_t name_len(const char *name)
{
	size_t n = 0;

	while (n <= KT_CHAN_NAME_MAX && name[n])
		n++;
	return n;
}

/*
 * Validates a private copy of directory entry `index`. Returns 0 or -KT_EPROTO. The checks are
 * everything the guest relies on later: the channel lies inside the channel area after the
 * directory, the doorbell port and vector are the ones the ABI defines, the name is terminated.
 */
static int entry_valid(const struct kt_chan_dir_entry *e, uint32_t index)
{
	if (e->id != index || e->state != KT_CHAN_STATE_OPEN)
		return -KT_EPROTO;
	if (e->gpa < KT_CHAN_DIR + KT_CHAN_DIR_SIZE || e->gpa >= KT_CHAN_AREA_END ||
	    (e->gpa & 0xfff) || e->size < KT_CHANNEL_HEADER_SIZE ||
	    e->size > KT_CHAN_AREA_END - e->gpa)
		return -KT_EPROTO;
	if (e->mode > KT_CHAN_MODE_POLLING || e->port != KT_CHAN_PORT_BASE + index)
		return -KT_EPROTO;
	if (e->vector != 0 && (e->vector < KT_IRQ_FIRST_VECTOR || e->vector > KT_IRQ_LAST_VECTOR))
		return -KT_EPROTO;
	if (e->reserved != 0 || e->flags != 0 || e->name[KT_CHAN_NAME_MAX] != 0 || e->name[0] == 0)
		return -KT_EPROTO;
	return 0;
}

/*
 * Reads the directory header once. Returns the number of entries in use (the VMM publishes the
 * entries first and the count last, so every entry below the count is complete), -KT_ENOENT
 * when there is no directory (yet), or -KT_EPROTO for a corrupt one.
 */
static long dir_entries(void)
{
	const struct kt_chan_dir *d = (const struct kt_chan_dir *)KT_CHAN_DIR;
	uint32_t count = __atomic_load_n(&d->count, __ATOMIC_ACQUIRE);
	uint32_t magic = LOAD(&d->magic), version = LOAD(&d->version), max = LOAD(&d->max);

	if (magic == 0)
		return -KT_ENOENT;
	if (magic != KT_CHAN_DIR_MAGIC || version != KT_CHAN_DIR_VERSION || max > KT_CHAN_DIR_MAX ||
	    count > max)
		return -KT_EPROTO;
	return count;
}

/* Copies entry index out of shared memory (one read of each byte; then only the copy is used). */
static void entry_copy(struct kt_chan_dir_entry *e, uint32_t index)
{
	const volatile uint8_t *src =
		(const volatile uint8_t *)(KT_CHAN_DIR + KT_CHAN_DIR_ENTRY0 + 64 * (unsigned long)index);
	uint8_t *dst = (uint8_t *)e;

	/* The state word first, with acquire: the VMM publishes an entry by writing it last. */
	uint32_t state = __atomic_load_n((const uint32_t *)(src + 4), __ATOMIC_ACQUIRE);

	for (unsigned i = 0; i < sizeof(*e); i++)
		dst[i] = src[i];
	e->state = state;
}

/* Attaches ch to a validated directory entry. */
static int chan_attach(struct kt_chan *ch, const struct kt_chan_dir_entry *e)
{
	uint32_t id = ~0u;
	int err;

	memset(ch, 0, sizeof(*ch));
	err = kt_channel_attach((void *)(uintptr_t)e->gpa, e->size, &ch->to_host, &ch->to_guest, &id);
	if (err)
		/* A bad header or ring from the VMM is a protocol error, not the caller's fault. */
		return err == -KT_EINVAL ? -KT_EPROTO : err;
	if (id != e->id) {
		kt_ring_close(&ch->to_host, KT_RING_FAULT_BAD_CONFIG);
		return -KT_EPROTO;
	}
	ch->id = e->id;
	ch->mode = e->mode;
	ch->port = e->port;
	ch->vector = e->vector;
	ch->tx = &ch->to_host;
	ch->rx = &ch->to_guest;
	ch->base = (void *)(uintptr_t)e->gpa;
	ch->size = e->size;
	memcpy(ch->name, e->name, sizeof(ch->name));
	/* Sleeping in recv/send needs a handler for the vector, or the interrupt ends the VM. */
	if (ch->vector && !gate_is_sdk(ch->vector))
		kt_irq_set_handler(ch->vector, chan_default_irq);
	return 0;
}

static bool valid_capacity(size_t cap)
{
	return cap == 0 || (cap >= KT_CHAN_MIN_CAPACITY && cap <= KT_CHAN_MAX_CAPACITY &&
			    (cap & (cap - 1)) == 0);
}

int kt_chan_open(struct kt_chan *ch, const char *name, size_t capacity, int mode)
{
	struct kt_chan_dir_entry e;
	size_t len;
	long id, count;
	int err;

	if (!ch || !name)
		return -KT_EINVAL;
	len = name_len(name);
	if (len == 0 || len > KT_CHAN_NAME_MAX || !valid_capacity(capacity) || mode < 0 ||
	    mode > KT_CHAN_MODE_POLLING)
		return -KT_EINVAL;
	id = kt_hypercall4(KT_HC_CHAN_OPEN, (unsigned long)name, len, capacity, (unsigned long)mode);
	if (id < 0)
		return (int)id;
	count = dir_entries();
	if (count < 0)
		return -KT_EPROTO; /* the VMM answered but there is no (valid) directory */
	if (id >= count)
		return -KT_EPROTO; /* an id the directory does not have */
	entry_copy(&e, (uint32_t)id);
	err = entry_valid(&e, (uint32_t)id);
	if (err)
		return err;
	if (memcmp(e.name, name, len) != 0 || e.name[len] != 0)
		return -KT_EPROTO; /* the VMM returned someone else's channel */
	return chan_attach(ch, &e);
}

int kt_chan_find(struct kt_chan *ch, const char *name)
{
	struct kt_chan_dir_entry e;
	size_t len;
	long count;

	if (!ch || !name)
		return -KT_EINVAL;
	len = name_len(name);
	if (len == 0 || len > KT_CHAN_NAME_MAX)
		return -KT_EINVAL;
	count = dir_entries();
	if (count < 0)
		return (int)count;
	for (uint32_t i = 0; i < (uint32_t)count; i++) {
		entry_copy(&e, i);
		/* Skip free and closed entries, and any entry while it is still being written. */
		if (e.state != KT_CHAN_STATE_OPEN)
			continue;
		if (memcmp(e.name, name, len) != 0 || e.name[len] != 0)
			continue;
		int err = entry_valid(&e, i);

		return err ? err : chan_attach(ch, &e);
	}
	return -KT_ENOENT;
}

int kt_chan_notify(struct kt_chan *ch)
{
	switch (ch->mode) {
	case KT_CHAN_MODE_HYPERCALL:
		kt_hypercall1(KT_HC_CHAN_NOTIFY, ch->id);
		break;
	case KT_CHAN_MODE_IOEVENTFD:
		kt_outb(ch->port, 1);
		break;
	default: /* polling: the host looks by itself */
		break;
	}
	return 0;
}

/*
 * Whether this end may sleep in KT_HC_WAIT: only if an interrupt can end the sleep. The mode
 * does not matter: it says how the guest notifies the host; the host raises the channel's vector
 * for a waiting guest in every mode.
 */
static bool can_sleep(const struct kt_chan *ch)
{
	return ch->vector != 0 && !ch->no_irq && !ch->spin;
}

/*
 * Waits until *word (the peer's index in ring r) differs from seen, or an interrupt arrived, or
 * a while passed: callers re-check the ring after every return. Returns 0 or a KT_HC_WAIT error.
 */
static int chan_wait(struct kt_chan *ch, struct kt_ring *r, uint32_t *word, uint32_t seen)
{
	if (can_sleep(ch)) {
		long w = kt_wait((volatile uint32_t *)word, seen);

		if (w >= 0)
			return 0;
		if (w != -KT_EOPNOTSUPP)
			return (int)w;
		ch->no_irq = 1; /* a VM without interrupts: spin from now on */
	}
	for (unsigned i = 0; i < SPIN_ROUNDS; i++) {
		if (LOAD(word) != seen || LOAD(&r->hdr->close) != 0)
			break;
		kt_pause();
	}
	return 0;
}

/*
 * After a write: ring the host if its reader is waiting (never in polling mode, which also
 * saves the fence). Returns 0 or the ring's error.
 */
static int after_write(struct kt_chan *ch)
{
	if (ch->mode == KT_CHAN_MODE_POLLING)
		return 0;
	int n = kt_ring_data_doorbell_needed(ch->tx);

	if (n > 0)
		kt_chan_notify(ch);
	return n < 0 ? n : 0;
}

void (*kt_chan_rx_observer)(const struct kt_chan *ch, const void *msg, size_t len);

/* After a read of len bytes into msg: ring the host if its writer waits for space, then let the
 * observer see the message. */
static void after_read(struct kt_chan *ch, const void *msg, size_t len)
{
	if (ch->mode != KT_CHAN_MODE_POLLING && kt_ring_space_doorbell_needed(ch->rx) > 0)
		kt_chan_notify(ch);
	ch->received++;
	if (kt_chan_rx_observer)
		kt_chan_rx_observer(ch, msg, len);
}

int kt_chan_try_send(struct kt_chan *ch, const void *msg, size_t len)
{
	long r;

	if (ch->closed)
		return -KT_EPIPE;
	r = kt_ring_try_write(ch->tx, msg, len);
	if (r < 0)
		return (int)r;
	return after_write(ch);
}

int kt_chan_send(struct kt_chan *ch, const void *msg, size_t len)
{
	bool flagged = false; /* want_space is set: clear it before returning */
	long r;

	if (ch->closed)
		return -KT_EPIPE;
	for (;;) {
		r = kt_ring_try_write(ch->tx, msg, len);
		if (r != -KT_EAGAIN)
			break;
		/* Full: ask for a doorbell, then re-check (the host may have made room meanwhile). */
		r = kt_ring_prepare_wait_space(ch->tx, len);
		if (r < 0)
			break;
		flagged = true;
		if (r == 1) {
			ch->send_waits++;
			r = chan_wait(ch, ch->tx, &ch->tx->hdr->cons, ch->tx->seen_cons);
			if (r < 0)
				break;
		}
	}
	if (flagged)
		kt_ring_end_wait_space(ch->tx);
	if (r < 0)
		return (int)r;
	return after_write(ch);
}

long kt_chan_try_recv(struct kt_chan *ch, void *buf, size_t cap)
{
	long r;

	if (ch->closed)
		return -KT_EPIPE;
	r = kt_ring_try_read(ch->rx, buf, cap);
	if (r >= 0)
		after_read(ch, buf, (size_t)r);
	return r;
}

long kt_chan_recv(struct kt_chan *ch, void *buf, size_t cap)
{
	bool flagged = false; /* want_data is set: clear it before returning */
	long r;

	if (ch->closed)
		return -KT_EPIPE;
	for (;;) {
		r = kt_ring_try_read(ch->rx, buf, cap);
		if (r != -KT_EAGAIN)
			break;
		/* Empty: ask for a doorbell, re-check, sleep on the producer index. */
		r = kt_ring_prepare_wait_data(ch->rx);
		if (r < 0)
			break;
		flagged = true;
		if (r == 1) {
			ch->recv_waits++;
			r = chan_wait(ch, ch->rx, &ch->rx->hdr->prod, ch->rx->seen_prod);
			if (r < 0)
				break;
		}
	}
	if (flagged)
		kt_ring_end_wait_data(ch->rx);
	if (r >= 0)
		after_read(ch, buf, (size_t)r);
	return r;
}

void kt_chan_set_spin(struct kt_chan *ch, bool spin)
{
	ch->spin = spin;
}

int kt_chan_set_irq(struct kt_chan *ch, void (*fn)(unsigned vector))
{
	if (!ch->vector)
		return -KT_EINVAL;
	return kt_irq_set_handler(ch->vector, fn ? fn : chan_default_irq);
}

int kt_chan_close(struct kt_chan *ch)
{
	long r;

	if (ch->closed)
		return 0;
	ch->closed = 1;
	r = kt_hypercall1(KT_HC_CHAN_CLOSE, ch->id);
	if (r == -KT_ENOSYS) {
		/* No VMM support: tell the host end through the rings themselves. */
		kt_ring_close(ch->tx, KT_RING_FAULT_CLOSED);
		kt_ring_close(ch->rx, KT_RING_FAULT_CLOSED);
		return 0;
	}
	return r < 0 ? (int)r : 0;
}
