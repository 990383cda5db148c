/*
 * kvmtalk guest SDK: channels, the message API on top of the rings (docs/channels.md).
 * Included by <kvmtalk.h>; include that, not this file.
 *
 * A channel is a pair of rings in the channel area (guest-physical 0x200000-0x3fffff, reached
 * through the identity map): "to host" (this guest produces) and "to guest" (it consumes). The
 * VMM lists every channel in the directory at KT_CHAN_DIR (64-byte entries from offset 64).
 *
 *   struct kt_chan ch;
 *   if (kt_chan_open(&ch, "demo", 0, KT_CHAN_MODE_HYPERCALL) == 0)   // or kt_chan_find
 *           kt_chan_send(&ch, &value, sizeof(value));
 *
 * Trust: the guest checks what the host wrote (directory entry, channel header, rings) just as
 * the host checks the guest: a bad entry or ring is -KT_EPROTO, never a crash.
 *
 * Notification (docs/channels.md, "Notification"): after writing a message the guest rings the
 * host only when the host's consumer asked for it (its want_data flag), and after reading only
 * when the host's producer waits for space (want_space): mode 0 with KT_HC_CHAN_NOTIFY, mode 1
 * with a write to the doorbell port (an ioeventfd: no exit to userspace), mode 2 never (the host
 * polls). A guest that must wait (empty ring in recv, full ring in send) sets its own want flag
 * and sleeps in KT_HC_WAIT on the peer's index word when it can: the channel has an interrupt
 * vector and the VM was created with interrupts on (the host raises the vector for a waiting
 * guest whatever the mode; the mode only says how the guest notifies the host). Otherwise, or
 * after kt_chan_set_spin(ch, true), it spins on the word with PAUSE: lowest latency, but a host
 * CPU stays busy (CPL3 code runs natively).
 *
 * Sleeping needs a handler for the channel's vector: an interrupt on a vector without one ends
 * the VM ("unexpected interrupt"). kt_chan_open and kt_chan_find therefore install a handler
 * that does nothing for the channel's vector, unless a kvmtalk handler (kt_irq_set_handler) is
 * already installed there; kt_chan_set_irq replaces it with one of your own.
 *
 * Concurrency: struct kt_chan is private to the guest. One vCPU at a time may send and one at a
 * time may receive on a channel (each ring is single-producer/single-consumer); sending and
 * receiving may happen on different vCPUs. The struct points into itself: do not copy it after
 * opening.
 *
 * Return codes (negative KT_E*): -KT_EINVAL bad arguments; -KT_ENOENT no such channel (find);
 * -KT_E2BIG the host has no room for another channel (open), or the receive buffer is smaller
 * than the next message (it stays in the ring); -KT_EMSGSIZE a message larger than the ring's
 * maximum (kt_chan_max_send); -KT_EAGAIN nothing to read / no room now (try_*); -KT_EPROTO the
 * host's directory entry, channel header or ring is corrupt (the ring is then closed);
 * -KT_EPIPE the channel was closed (by the host, or by kt_chan_close); -KT_EOPNOTSUPP another
 * channel or ring version; -KT_ENOSYS a VMM without channels.
 */
/*
 * kvmtalk.h includes this file at its end; it is included here outside the guard (it has its
 * own). When ring.h is the first header a file includes (ring.c does), kvmtalk.h reaches this
 * point before struct kt_ring exists: then this file defines nothing and leaves its guard unset
 * (KT_CHANNEL_MAGIC, defined after struct kt_ring, tells the two cases apart).
 */
#include <kvmtalk.h>

#if !defined(KVMTALK_CHANNEL_H) && defined(KT_CHANNEL_MAGIC)
#define KVMTALK_CHANNEL_H

#ifdef __cplusplus
extern "C" {
#endif

#ifndef KT_ENOENT
#define KT_ENOENT 2 /* no channel of that name */
#endif

/* Hypercalls (docs/channels.md). */
#define KT_HC_CHAN_OPEN   30 /* a0 = GPA of name, a1 = length, a2 = capacity, a3 = mode → id */
#define KT_HC_CHAN_NOTIFY 31 /* a0 = id: "I wrote (or consumed) something" */
#define KT_HC_CHAN_CLOSE  32 /* a0 = id */

/* Notification modes. */
#define KT_CHAN_MODE_HYPERCALL 0 /* guest → host: KT_HC_CHAN_NOTIFY (one exit) */
#define KT_CHAN_MODE_IOEVENTFD 1 /* guest → host: outb to the doorbell port (no userspace exit) */
#define KT_CHAN_MODE_POLLING   2 /* no notifications: the host polls, the guest spins */

/* Ring capacities KT_HC_CHAN_OPEN accepts (0 picks the default). */
#define KT_CHAN_DEFAULT_CAPACITY (64u << 10)
#define KT_CHAN_MIN_CAPACITY     (4u << 10)
#define KT_CHAN_MAX_CAPACITY     (1u << 20)
#define KT_CHAN_NAME_MAX         31

/* The channel area and its directory. */
#define KT_CHAN_AREA       0x200000UL
#define KT_CHAN_AREA_END   0x400000UL
#define KT_CHAN_DIR        KT_CHAN_AREA
#define KT_CHAN_DIR_SIZE   0x1000u
#define KT_CHAN_DIR_MAGIC  0x5244544bu /* "KTDR" little-endian */
#define KT_CHAN_DIR_VERSION 1u
#define KT_CHAN_DIR_ENTRY0 64u
#define KT_CHAN_DIR_MAX    63u
#define KT_CHAN_PORT_BASE  0x100u

/* Directory entry states. */
#define KT_CHAN_STATE_FREE   0u
#define KT_CHAN_STATE_OPEN   1u
#define KT_CHAN_STATE_CLOSED 2u

/* The directory header (offset 0 of the directory). Only the VMM writes the directory. */
struct kt_chan_dir {
	uint32_t magic;   /* KT_CHAN_DIR_MAGIC */
	uint32_t version; /* KT_CHAN_DIR_VERSION */
	uint32_t count;   /* entries in use */
	uint32_t max;     /* entries that fit: KT_CHAN_DIR_MAX */
};

/* One directory entry (64 bytes, entry i at KT_CHAN_DIR + 64 + 64 * i). */
struct kt_chan_dir_entry {
	uint32_t id;       /* 0x00 = the entry's index */
	uint32_t state;    /* 0x04 KT_CHAN_STATE_* */
	uint64_t gpa;      /* 0x08 channel header */
	uint32_t size;     /* 0x10 bytes of the channel region */
	uint32_t mode;     /* 0x14 KT_CHAN_MODE_* */
	uint16_t port;     /* 0x18 doorbell port: KT_CHAN_PORT_BASE + id */
	uint8_t vector;    /* 0x1a host → guest interrupt vector, 0 = none */
	uint8_t reserved;  /* 0x1b 0 */
	uint32_t flags;    /* 0x1c 0 */
	char name[32];     /* 0x20 NUL-padded, at most 31 bytes */
};

_Static_assert(sizeof(struct kt_chan_dir_entry) == 64, "directory entry size");
_Static_assert(__builtin_offsetof(struct kt_chan_dir_entry, name) == 32, "entry name offset");

/* One open channel, in the guest's private memory. Fields are read-only for users. */
struct kt_chan {
	uint32_t id;            /* the host's channel id (directory index) */
	uint32_t mode;          /* KT_CHAN_MODE_* (the host's choice for an existing channel) */
	uint16_t port;          /* doorbell port */
	uint8_t vector;         /* host → guest interrupt vector, 0 = none */
	uint8_t no_irq;         /* KT_HC_WAIT said the VM has no interrupts: spin instead */
	uint8_t spin;           /* kt_chan_set_spin: never sleep, always spin */
	uint8_t closed;         /* kt_chan_close was called */
	uint8_t _pad[2];
	struct kt_ring *tx;     /* → to_host: the guest produces */
	struct kt_ring *rx;     /* → to_guest: the guest consumes */
	void *base;             /* the channel header (its GPA) */
	uint32_t size;          /* bytes of the channel region */
	char name[KT_CHAN_NAME_MAX + 1];
	struct kt_ring to_host, to_guest;
	/* Statistics: how often send / recv waited (one KT_HC_WAIT or one spin round each). */
	uint64_t send_waits, recv_waits;
	uint64_t received;      /* messages kt_chan_recv / kt_chan_try_recv returned */
};

/**
 * Called with every message kt_chan_recv / kt_chan_try_recv return (after ch->received is
 * counted), when set. The eBPF runtime's channel-rx hook sets it (kvmtalk/bpf-upcall.h); a plain
 * function pointer keeps programs that never use eBPF from linking the runtime.
 */
extern void (*kt_chan_rx_observer)(const struct kt_chan *ch, const void *msg, size_t len);

/**
 * Opens (creates, or gets the existing) channel name with KT_HC_CHAN_OPEN, validates its
 * directory entry and channel header, and attaches to both rings. capacity: ring bytes, a power
 * of two from 4 KiB to 1 MiB, or 0 for 64 KiB; mode: KT_CHAN_MODE_*. An existing channel keeps
 * its own capacity and mode (ch->mode tells). Returns 0 or a negative KT_E* (see above).
 */
int kt_chan_open(struct kt_chan *ch, const char *name, size_t capacity, int mode);

/**
 * Finds a channel the host created (vm.createChannel) by name in the directory, without a
 * hypercall, and attaches to it. Returns 0, -KT_ENOENT (not there, or no directory yet: the
 * host may create it later), or an attach error.
 */
int kt_chan_find(struct kt_chan *ch, const char *name);

/**
 * Sends len bytes, waiting while the ring is full (backpressure: the host's reader rings back
 * after it made room). Returns 0, -KT_EMSGSIZE, -KT_EPROTO or -KT_EPIPE.
 */
int kt_chan_send(struct kt_chan *ch, const void *msg, size_t len);

/** Like kt_chan_send, but returns -KT_EAGAIN at once when the ring has no room now. */
int kt_chan_try_send(struct kt_chan *ch, const void *msg, size_t len);

/**
 * Receives the next message into buf (cap bytes), waiting while there is none. Returns its
 * length, -KT_E2BIG (cap too small; size buf to kt_chan_max_msg(ch)), -KT_EPROTO or -KT_EPIPE.
 */
long kt_chan_recv(struct kt_chan *ch, void *buf, size_t cap);

/** Like kt_chan_recv, but returns -KT_EAGAIN at once when there is no message. */
long kt_chan_try_recv(struct kt_chan *ch, void *buf, size_t cap);

/** Largest message the host → guest ring carries (size receive buffers to this). */
static inline size_t kt_chan_max_msg(const struct kt_chan *ch)
{
	return ch->to_guest.max_msg;
}

/** Largest message kt_chan_send accepts. */
static inline size_t kt_chan_max_send(const struct kt_chan *ch)
{
	return ch->to_host.max_msg;
}

/**
 * Installs fn as the interrupt handler for the channel's vector (kt_irq_set_handler; the IDT is
 * shared by all vCPUs). fn == NULL puts back the channel's default handler, which does nothing
 * (blocking calls re-check their ring after every interrupt anyway). Returns 0, -KT_EINVAL for
 * a channel without a vector.
 */
int kt_chan_set_irq(struct kt_chan *ch, void (*fn)(unsigned vector));

/**
 * spin = true: waiting send/recv always spin with PAUSE instead of sleeping in KT_HC_WAIT (lower
 * latency, a busy host CPU); false (the default): sleep when the channel has a vector and the VM
 * has interrupts.
 */
void kt_chan_set_spin(struct kt_chan *ch, bool spin);

/**
 * Rings the host's doorbell for this channel per its mode (what send and recv do when the host
 * asked for it). Useful after kt_ring_* calls on ch->tx / ch->rx directly. Returns 0.
 */
int kt_chan_notify(struct kt_chan *ch);

/**
 * Closes the channel: KT_HC_CHAN_CLOSE (the host then closes both rings, so the peer sees it),
 * and every later call on ch returns -KT_EPIPE. A host that does not know the hypercall gets the
 * rings' close words instead. Returns 0 or the hypercall's error.
 */
int kt_chan_close(struct kt_chan *ch);

#ifdef __cplusplus
}
#endif

#endif /* !KVMTALK_CHANNEL_H && KT_CHANNEL_MAGIC */
