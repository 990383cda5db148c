/*
 * kvmtalk guest SDK: shared-memory rings and channels (docs/channel-ring.md).
 * Included by <kvmtalk.h>; including this file directly works too.
 *
 * A ring is a single-producer/single-consumer queue of variable-length messages in memory both
 * the guest and the host can reach (for the guest through the identity map, so a ring's pointer
 * is its guest-physical address). A channel is a small header plus two rings: guest→host
 * ("to host") and host→guest ("to guest"). The host formats channels; the guest attaches.
 *
 * The layout below is the specification's, byte for byte; src/channel/channel-layout.ts is the
 * host's copy and test/unit/ring-c-compat.test.ts runs the two against each other.
 *
 * Trust: the guest checks what the host writes just as the host checks the guest. A violation
 * is never a crash: the call returns -KT_EPROTO, the ring is marked closed (the close word in
 * its header) and every later call returns the same error.
 *
 * Return codes: 0 or a length on success; -KT_EAGAIN when empty (read) or full (write);
 * -KT_E2BIG when the caller's buffer is smaller than the next message (it stays in the ring);
 * -KT_EMSGSIZE for a message above the ring's maximum (never fits); -KT_EPROTO once this end
 * detected a protocol violation; -KT_EPIPE once the other end closed the ring; -KT_EINVAL and
 * -KT_EOPNOTSUPP from attach.
 *
 * Needs no SSE (the SDK builds with -mgeneral-regs-only) and no libc beyond memcpy, so
 * src/ring.c also compiles for the host (the compatibility test does that).
 */
#ifndef KVMTALK_RING_H
#define KVMTALK_RING_H

#include <kvmtalk.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes used by rings, Linux's values like the rest of KT_E*. */
#ifndef KT_EAGAIN
#define KT_EAGAIN 11   /* ring empty (read) or full (write): try again later */
#endif
#ifndef KT_EPIPE
#define KT_EPIPE 32    /* the other end closed the ring */
#endif
#ifndef KT_EPROTO
#define KT_EPROTO 71   /* this end found the ring corrupted and closed it */
#endif
#ifndef KT_EMSGSIZE
#define KT_EMSGSIZE 90 /* message larger than the ring's maximum message size */
#endif

/* ---- Ring layout ------------------------------------------------------------------------- */

#define KT_RING_MAGIC        0x4752544bu /* "KTRG" little-endian */
#define KT_RING_VERSION      1u
#define KT_RING_HEADER_SIZE  0x180u
#define KT_RING_MIN_CAPACITY 64u
#define KT_RING_MAX_CAPACITY (1u << 30)
#define KT_RING_KNOWN_FLAGS  0u          /* version 1 defines no feature flags */
#define KT_RING_FRAME_HEADER 8u
#define KT_RING_WRAP         0xffffffffu /* frame length of a wrap marker */

/* Largest message a ring of capacity cap may carry (and the default maximum). */
#define KT_RING_MAX_MSG(cap)    ((cap) / 2 - KT_RING_FRAME_HEADER)
/* Bytes a message of len bytes occupies: header + payload padded to 8. */
#define KT_RING_FRAME_SIZE(len) (KT_RING_FRAME_HEADER + (((len) + 7) & ~(size_t)7))
/* Bytes of a whole ring region (header + data area). */
#define KT_RING_SIZE(cap)       (KT_RING_HEADER_SIZE + (cap))

/* Why a ring was closed: the close word's low byte (RING_FAULT in channel-layout.ts). */
#define KT_RING_FAULT_BAD_MAGIC         1
#define KT_RING_FAULT_BAD_VERSION       2
#define KT_RING_FAULT_BAD_CONFIG        3
#define KT_RING_FAULT_INDEX_OUT_OF_RANGE 4
#define KT_RING_FAULT_BAD_LENGTH        5
#define KT_RING_FAULT_FRAME_OVERRUN     6
#define KT_RING_FAULT_FRAME_CROSSES_END 7
#define KT_RING_FAULT_BAD_FRAME_HEADER  8
#define KT_RING_FAULT_PEER_CLOSED       9
#define KT_RING_FAULT_CLOSED            10

/* Who closed a ring: the close word's bits 8..15. */
#define KT_RING_CLOSED_BY_HOST  1u
#define KT_RING_CLOSED_BY_GUEST 2u

/*
 * The ring header in shared memory. Three 128-byte blocks with one writer each: configuration
 * (the formatter, then read-only; the close word is the exception), producer, consumer.
 */
struct kt_ring_header {
	uint32_t magic;       /* 0x000 KT_RING_MAGIC */
	uint32_t version;     /* 0x004 KT_RING_VERSION */
	uint32_t capacity;    /* 0x008 data-area bytes, a power of two */
	uint32_t max_msg;     /* 0x00c largest payload, <= KT_RING_MAX_MSG(capacity) */
	uint32_t header_size; /* 0x010 KT_RING_HEADER_SIZE */
	uint32_t flags;       /* 0x014 feature flags, 0 in version 1 */
	uint32_t close;       /* 0x018 0 = open, else (side << 8) | KT_RING_FAULT_* */
	uint8_t _config_pad[0x80 - 0x1c];
	uint32_t prod;        /* 0x080 producer index: free-running byte count, mod 2^32 */
	uint32_t want_space;  /* 0x084 producer waits for space: consumer should ring a doorbell */
	uint8_t _prod_pad[0x100 - 0x88];
	uint32_t cons;        /* 0x100 consumer index */
	uint32_t want_data;   /* 0x104 consumer waits for data: producer should ring a doorbell */
	uint8_t _cons_pad[0x180 - 0x108];
};

_Static_assert(sizeof(struct kt_ring_header) == KT_RING_HEADER_SIZE, "ring header size");
_Static_assert(__builtin_offsetof(struct kt_ring_header, close) == 0x18, "close offset");
_Static_assert(__builtin_offsetof(struct kt_ring_header, prod) == 0x80, "prod offset");
_Static_assert(__builtin_offsetof(struct kt_ring_header, cons) == 0x100, "cons offset");
_Static_assert(__builtin_offsetof(struct kt_ring_header, want_data) == 0x104, "want_data offset");

/* Every frame starts at a multiple of 8 in the data area with this header. */
struct kt_ring_frame {
	uint32_t len;      /* payload bytes, or KT_RING_WRAP */
	uint32_t reserved; /* 0 */
};

/*
 * One end of a ring: lives in the guest's private memory, never in the shared region. The
 * indices here are this end's own (authoritative: only stored to the header, never read back)
 * and the peer's as last validated (it may only move forward).
 */
struct kt_ring {
	struct kt_ring_header *hdr;
	uint8_t *data;
	uint32_t capacity;
	uint32_t max_msg;
	uint32_t flags;
	uint32_t prod, cons;           /* own indices */
	uint32_t seen_prod, seen_cons; /* the peer's index, last validated value */
	uint32_t pending_off;          /* set by a successful peek: payload offset ... */
	uint32_t pending_frame;        /* ... and frame size of the next message */
	int error;                     /* 0, or the negative code every call now returns */
	uint32_t fault;                /* KT_RING_FAULT_* that made this end give up */
};

/**
 * Formats a new, empty ring at mem (size bytes available, 8-aligned; 128-aligned recommended)
 * and attaches r to it. max_msg = 0 picks KT_RING_MAX_MSG(capacity). Returns 0 or -KT_EINVAL.
 * The host normally formats; this is for rings the guest creates itself.
 */
int kt_ring_init(struct kt_ring *r, void *mem, size_t size, uint32_t capacity, uint32_t max_msg);

/**
 * Attaches r to a ring someone formatted at mem, validating its header against size.
 * Returns 0, -KT_EINVAL (misaligned, too small, bad magic or geometry, bad indices),
 * -KT_EOPNOTSUPP (another version or unknown flags) or -KT_EPIPE (already closed).
 */
int kt_ring_attach(struct kt_ring *r, void *mem, size_t size);

/**
 * Appends one message. Returns 0, -KT_EAGAIN (no room now), -KT_EMSGSIZE (len > max_msg),
 * -KT_EPROTO or -KT_EPIPE. Nothing is written unless the whole message fits.
 */
long kt_ring_try_write(struct kt_ring *r, const void *msg, size_t len);

/**
 * Takes the next message into buf. Returns its length, -KT_EAGAIN (empty), -KT_E2BIG (buf
 * smaller than the message, which stays: size buf to r->max_msg to never see this),
 * -KT_EPROTO or -KT_EPIPE.
 */
long kt_ring_try_read(struct kt_ring *r, void *buf, size_t cap);

/** Length of the next message without taking it; -KT_EAGAIN when empty; errors as above. */
long kt_ring_peek_len(struct kt_ring *r);

/** Bytes waiting for this end as consumer (headers and padding included), or an error. */
long kt_ring_available(struct kt_ring *r);

/** Bytes this end as producer could fill now (headers and padding included), or an error. */
long kt_ring_free(struct kt_ring *r);

/** Closes the ring for both ends with fault (usually KT_RING_FAULT_CLOSED). Idempotent. */
void kt_ring_close(struct kt_ring *r, uint32_t fault);

/*
 * Doorbell handshake (for doorbell/interrupt modes; plain polling never needs it). A waiter
 * sets its "want" flag, issues a full barrier and re-checks; the other end issues a full barrier
 * after publishing and reads the flag. One of the two always sees the other's store, so no
 * wake-up is lost. The flags are advisory: a lying peer causes spurious or missing doorbells
 * only. The prepare functions return 1 (still nothing: wait), 0 (go on) or an error.
 */
int kt_ring_prepare_wait_data(struct kt_ring *r);
void kt_ring_end_wait_data(struct kt_ring *r);
/** Producer, after a write: 1 if the consumer asked for a doorbell, 0 if not, or an error. */
int kt_ring_data_doorbell_needed(struct kt_ring *r);
int kt_ring_prepare_wait_space(struct kt_ring *r, size_t len);
void kt_ring_end_wait_space(struct kt_ring *r);
/** Consumer, after a read: 1 if the producer asked for a doorbell, 0 if not, or an error. */
int kt_ring_space_doorbell_needed(struct kt_ring *r);

/* ---- Channels ---------------------------------------------------------------------------- */

#define KT_CHANNEL_MAGIC       0x4843544bu /* "KTCH" little-endian */
#define KT_CHANNEL_VERSION     1u
#define KT_CHANNEL_HEADER_SIZE 0x80u

/* The channel header; ring offsets are relative to the channel's base. */
struct kt_channel_header {
	uint32_t magic;           /* 0x00 */
	uint32_t version;         /* 0x04 */
	uint32_t id;              /* 0x08 chosen by the host */
	uint32_t flags;           /* 0x0c 0 in version 1 */
	uint32_t size;            /* 0x10 bytes of the whole channel */
	uint32_t to_host_offset;  /* 0x14 guest → host ring */
	uint32_t to_host_size;    /* 0x18 */
	uint32_t to_guest_offset; /* 0x1c host → guest ring */
	uint32_t to_guest_size;   /* 0x20 */
	uint8_t _pad[0x80 - 0x24];
};

_Static_assert(sizeof(struct kt_channel_header) == KT_CHANNEL_HEADER_SIZE, "channel header size");

/**
 * Attaches to the channel the host formatted at mem (size bytes): checks the header and
 * attaches to_host (the guest produces) and to_guest (the guest consumes). *id receives the
 * channel id if id is not NULL. Returns 0 or an attach error.
 */
int kt_channel_attach(void *mem, size_t size, struct kt_ring *to_host, struct kt_ring *to_guest,
		      uint32_t *id);

#ifdef __cplusplus
}
#endif

#endif /* KVMTALK_RING_H */
