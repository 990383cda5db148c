/*
 * Driver of the upcall device (kvmtalk/upcall.h, docs/upcall-device.md). Every register access
 * is one MMIO exit (tens of microseconds here), so the interrupt handler touches no register:
 * it only counts, and the main loop reads the device in kt_upcall_poll.
 */
#include <kvmtalk/upcall.h>

static volatile uint32_t events;
static kt_upcall_load_fn load_handler;
static kt_upcall_unload_fn unload_handler;
static uint8_t program[KT_UPCALL_MAX_PROGRAM] __attribute__((aligned(8)));
static int has_copy, use_copy;

/* COPY's target: the program buffer (identity-mapped, so its address is its GPA). */
static void point_copy_at_buffer(void)
{
	uint64_t gpa = (uint64_t)(uintptr_t)program;

	kt_upcall_write(KT_UPCALL_COPY_ADDR_LO, (uint32_t)gpa);
	kt_upcall_write(KT_UPCALL_COPY_ADDR_HI, (uint32_t)(gpa >> 32));
	kt_upcall_write(KT_UPCALL_COPY_LEN, sizeof(program));
}

static void on_interrupt(unsigned vector)
{
	(void)vector;
	events++;
}

int kt_upcall_init(unsigned vector)
{
	if (kt_upcall_read(KT_UPCALL_MAGIC) != KT_UPCALL_MAGIC_VALUE)
		return -KT_ENODEV;
	if (kt_upcall_read(KT_UPCALL_VERSION) != KT_UPCALL_VERSION_VALUE)
		return -KT_EOPNOTSUPP;
	if (vector != 0) {
		int r = kt_irq_set_handler(vector, on_interrupt);

		if (r < 0)
			return r;
	}
	uint32_t features = kt_upcall_read(KT_UPCALL_FEATURES);

	has_copy = features != 0xffffffffU && (features & KT_UPCALL_FEATURE_COPY);
	kt_upcall_use_copy(1);
	/* A command posted before this write is interrupted for once the vector is set. */
	kt_upcall_write(KT_UPCALL_IRQ_VECTOR, vector);
	return 0;
}

int kt_upcall_use_copy(int enable)
{
	use_copy = enable && has_copy;
	if (use_copy)
		point_copy_at_buffer();
	return use_copy;
}

void kt_upcall_set_handlers(kt_upcall_load_fn load, kt_upcall_unload_fn unload)
{
	load_handler = load;
	unload_handler = unload;
}

/* Copies len bytes of the current program through the window (len <= KT_UPCALL_MAX_PROGRAM). */
static void read_window(uint32_t len)
{
	for (uint32_t page = 0; page < len; page += 0x800) {
		kt_upcall_write(KT_UPCALL_DATA_OFFSET, page);
		for (uint32_t i = 0; i < 0x800 && page + i < len; i += 4) {
			uint32_t w = kt_upcall_read(KT_UPCALL_WINDOW + i);

			/* The last word may run past len (zero padding): keep only what fits. */
			for (uint32_t b = 0; b < 4 && page + i + b < len; b++)
				program[page + i + b] = (uint8_t)(w >> (8 * b));
		}
	}
}

/*
 * Has the device write command seq's program (len bytes) into the buffer: 0, or COPY_STATUS's
 * error. The buffer registers are shared device state another vCPU may have moved: on -EFAULT or
 * -ENOSPC point them back once and retry.
 */
static int copy_program(uint32_t seq, uint32_t len)
{
	if (!use_copy) {
		read_window(len);
		return 0;
	}
	for (int tries = 0;; tries++) {
		kt_upcall_write(KT_UPCALL_COPY, seq);
		int32_t r = (int32_t)kt_upcall_read(KT_UPCALL_COPY_STATUS);

		if (r >= 0)
			return (uint32_t)r == len ? 0 : -KT_EFAULT;
		if (tries > 0 || (r != -KT_EFAULT && r != -KT_ENOSPC))
			return r;
		point_copy_at_buffer();
	}
}

int kt_upcall_poll(void)
{
	uint32_t cmd = kt_upcall_read(KT_UPCALL_COMMAND);

	if (cmd == KT_UPCALL_CMD_NONE)
		return 0;
	uint32_t seq = kt_upcall_read(KT_UPCALL_COMMAND_SEQ);
	uint32_t hook = kt_upcall_read(KT_UPCALL_COMMAND_ARG);
	uint32_t pc = KT_UPCALL_NO_PC;
	int status;

	kt_upcall_write(KT_UPCALL_IRQ_STATUS, KT_UPCALL_IRQ_CMD_PENDING);
	if (cmd == KT_UPCALL_CMD_LOAD) {
		uint32_t len = kt_upcall_read(KT_UPCALL_DATA_LEN);

		if (len == 0 || len > KT_UPCALL_MAX_PROGRAM) {
			status = -KT_E2BIG;
		} else if (!load_handler) {
			status = -KT_EOPNOTSUPP;
		} else {
			status = copy_program(seq, len);
			if (status == 0)
				status = load_handler(hook, program, len, &pc);
		}
	} else if (cmd == KT_UPCALL_CMD_UNLOAD) {
		status = unload_handler ? unload_handler(hook) : -KT_EOPNOTSUPP;
	} else {
		status = -KT_EOPNOTSUPP;
	}
	kt_upcall_write(KT_UPCALL_STATUS, (uint32_t)status);
	kt_upcall_write(KT_UPCALL_STATUS_PC, pc);
	/* A command the host cancelled meanwhile makes this ACK stale: the device ignores it. */
	kt_upcall_write(KT_UPCALL_ACK, seq);
	return 1;
}

int kt_upcall_wait(void)
{
	uint32_t seen = events;

	/* A command already there (posted before the handler existed, or merged interrupts). */
	int r = kt_upcall_poll();

	if (r)
		return r;
	long w = kt_wait_until_changed(&events, seen);

	if (w < 0)
		return (int)w;
	return kt_upcall_poll();
}

uint32_t kt_upcall_events(void)
{
	return events;
}

long kt_upcall_set_affinity(uint32_t vcpu, uint32_t host_cpu)
{
	kt_upcall_write(KT_UPCALL_AFFINITY, (vcpu << 16) | (host_cpu & 0xffff));
	/* Answered within the write's exit: the status is already there. */
	return (int32_t)kt_upcall_read(KT_UPCALL_AFFINITY_STATUS);
}

void kt_upcall_publish_maps(uint64_t gpa)
{
	kt_upcall_write(KT_UPCALL_MAP_DIR_LO, (uint32_t)gpa);
	kt_upcall_write(KT_UPCALL_MAP_DIR_HI, (uint32_t)(gpa >> 32));
}
