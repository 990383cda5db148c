/*
 * hypercall-baseline: the smallest C VMM that runs kvmtalk's bench-hypercall guest, as the
 * reference the TypeScript VMM is measured against (src/bench/hypercall.ts).
 *
 * usage: hypercall-baseline <boot-state-dir> <iterations>
 *
 * <boot-state-dir> holds what Vm.bootState() returned for a freshly loaded VM:
 *   memory.bin   guest RAM image (GPA 0 .. size; may be sparse, zero pages are skipped)
 *   vcpu0.regs   struct kvm_regs
 *   vcpu0.sregs  struct kvm_sregs
 *   vcpu0.cpuid  struct kvm_cpuid2 with its entries
 *
 * The run loop handles exactly what the TypeScript VMM handles for this guest, the same way:
 * registers come from kvm_run's synced-register area (KVM_CAP_SYNC_REGS) and the result goes
 * back through it, so each exit costs one KVM_RUN and nothing else.
 *   port 0xe0 (out)  hypercall: RAX = nr, RBX = a0; result in RAX
 *                    24 KT_HC_BENCH_MARK: mark 0 -> iterations, mark k -> timestamp k, 0
 *                    256 (the benchmark's user handler) -> a0 + 1
 *                    25 KT_HC_CONSOLE_WRITE -> 0 (output dropped)
 *   port 0xf4 (out)  debug exit: the VM ends with status value & 0xff
 *   ports 0x3f8-0x3ff  COM1: writes dropped, reads 0 (LSR reads "transmitter empty")
 * Anything else prints an error and exits with status 2.
 *
 * Prints one JSON line on stdout:
 *   {"per_exit_ns": (mark2 - mark1) / iterations, "iterations": N,
 *    "create_to_first_hypercall_ns": start of main() -> first hypercall exit (mark 0),
 *    "create_to_mark1_ns": start of main() -> mark 1 (the second exit; what the TS side measures),
 *    "cpu_per_exit_ns": this thread's CPU time from user call 0 to user call N-1, / (N-1),
 *    "rss_kb": VmRSS at the end, "exits": total exits, "guest_status": status}
 * The CPU time leaves out time spent waiting for a CPU; the TS side measures the same interval
 * (src/bench/hypercall-handler.ts).
 *
 * Build, from the repository root: gcc -O2 -Wall -Wextra -I bench/c -o hypercall-baseline bench/c/hypercall-baseline.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BENCH_PROG "hypercall-baseline"
#include "bench-common.h"

#define PORT_HYPERCALL 0xe0
#define PORT_DEBUG_EXIT 0xf4
#define PORT_COM1 0x3f8
#define COM1_PORTS 8
#define COM1_LSR (PORT_COM1 + 5)
#define LSR_THR_EMPTY 0x60

#define HC_BENCH_MARK 24
#define HC_CONSOLE_WRITE 25
#define HC_USER_BASE 256
#define MAX_MARKS 16
#define KT_EINVAL 22

#define TSS_ADDR 0xfffbd000UL
#define PAGE 4096UL

static int xioctl(int fd, unsigned long req, unsigned long arg, const char *name)
{
	int r = ioctl(fd, req, arg);

	if (r < 0)
		die("%s: %s", name, strerror(errno));
	return r;
}

static int open_in(const char *dir, const char *name, char *path, size_t pathlen)
{
	int fd;

	snprintf(path, pathlen, "%s/%s", dir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("%s: %s", path, strerror(errno));
	return fd;
}

/* Reads the whole file dir/name into a malloc'd buffer; its size goes to *len. */
static void *read_file(const char *dir, const char *name, size_t *len)
{
	char path[4096];
	int fd = open_in(dir, name, path, sizeof(path));
	struct stat st;
	unsigned char *buf;
	size_t off = 0;

	if (fstat(fd, &st) < 0)
		die("%s: %s", path, strerror(errno));
	buf = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!buf)
		die("out of memory");
	while (off < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + off, (size_t)st.st_size - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("%s: short read", path);
		off += (size_t)n;
	}
	close(fd);
	*len = off;
	return buf;
}

static void read_exact(const char *dir, const char *name, void *dst, size_t len)
{
	size_t got;
	void *buf = read_file(dir, name, &got);

	if (got != len)
		die("%s/%s: %zu bytes, expected %zu", dir, name, got, len);
	memcpy(dst, buf, len);
	free(buf);
}

static int page_is_zero(const unsigned char *p, size_t len)
{
	static const unsigned char zero[PAGE];

	return memcmp(p, zero, len) == 0;
}

/*
 * Copies memory.bin into guest RAM, touching only pages that hold non-zero bytes (the TS VMM
 * only ever writes those, so both VMMs fault in the same pages). Holes of a sparse file are
 * skipped without reading them.
 */
static void load_memory(int fd, const char *path, unsigned char *ram, size_t size)
{
	static unsigned char chunk[64 * PAGE];
	off_t data = 0;

	for (;;) {
		off_t hole;

		data = lseek(fd, data, SEEK_DATA);
		if (data < 0) {
			if (errno == ENXIO)
				return; /* only holes left */
			die("%s: lseek: %s", path, strerror(errno));
		}
		hole = lseek(fd, data, SEEK_HOLE);
		if (hole < 0)
			die("%s: lseek: %s", path, strerror(errno));
		data &= ~(off_t)(PAGE - 1);
		while (data < hole) {
			size_t want = (size_t)(hole - data) < sizeof(chunk) ? (size_t)(hole - data) : sizeof(chunk);
			ssize_t n = pread(fd, chunk, want, data);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				die("%s: short read at %lld", path, (long long)data);
			for (size_t o = 0; o < (size_t)n; o += PAGE) {
				size_t len = (size_t)n - o < PAGE ? (size_t)n - o : PAGE;

				if ((size_t)data + o + len > size)
					die("%s: larger than guest RAM", path);
				if (!page_is_zero(chunk + o, len))
					memcpy(ram + data + o, chunk + o, len);
			}
			data += n;
		}
	}
}

static long rss_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	}
	fclose(f);
	return kb;
}

int main(int argc, char **argv)
{
	uint64_t t_start = now_ns();
	uint64_t t_first = 0;
	uint64_t marks[MAX_MARKS] = { 0 };
	uint64_t cpu_start = 0, cpu_end = 0;
	unsigned long iterations;
	char *end;
	const char *dir;
	char mem_path[4096];
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_cpuid2 *cpuid;
	size_t cpuid_len, mem_size;
	struct stat st;
	unsigned long exits = 0;
	int guest_status = -1;
	int kvm, vm, vcpu, memfd, mem_file, run_size;
	unsigned char *ram;
	struct kvm_run *run;

	if (argc != 3) {
		fprintf(stderr, "usage: %s <boot-state-dir> <iterations>\n", prog);
		return 2;
	}
	dir = argv[1];
	errno = 0;
	iterations = strtoul(argv[2], &end, 10);
	if (errno || *end || end == argv[2])
		die("bad iteration count '%s'", argv[2]);

	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm: %s", strerror(errno));
	if (xioctl(kvm, KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION") != KVM_API_VERSION)
		die("unexpected KVM API version");
	if (!(xioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS, "KVM_CHECK_EXTENSION") & KVM_SYNC_X86_REGS))
		die("KVM_CAP_SYNC_REGS lacks KVM_SYNC_X86_REGS");
	vm = xioctl(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
	xioctl(vm, KVM_SET_TSS_ADDR, TSS_ADDR, "KVM_SET_TSS_ADDR");

	/* Guest RAM: memfd of memory.bin's size, mapped shared, registered as slot 0 at GPA 0. */
	mem_file = open_in(dir, "memory.bin", mem_path, sizeof(mem_path));
	if (fstat(mem_file, &st) < 0)
		die("%s: %s", mem_path, strerror(errno));
	mem_size = (size_t)st.st_size;
	if (mem_size == 0 || mem_size % PAGE)
		die("%s: size %zu is not a positive multiple of 4 KiB", mem_path, mem_size);
	memfd = memfd_create("hypercall-baseline-ram", MFD_CLOEXEC);
	if (memfd < 0)
		die("memfd_create: %s", strerror(errno));
	if (ftruncate(memfd, (off_t)mem_size) < 0)
		die("ftruncate: %s", strerror(errno));
	ram = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (ram == MAP_FAILED)
		die("mmap guest RAM: %s", strerror(errno));
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.flags = 0,
		.guest_phys_addr = 0,
		.memory_size = mem_size,
		.userspace_addr = (uint64_t)(uintptr_t)ram,
	};
	xioctl(vm, KVM_SET_USER_MEMORY_REGION, (unsigned long)&region, "KVM_SET_USER_MEMORY_REGION");
	load_memory(mem_file, mem_path, ram, mem_size);
	close(mem_file);

	/* vCPU 0 with the boot state the TS VMM computed. */
	run_size = xioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
	vcpu = xioctl(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
	run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run: %s", strerror(errno));

	cpuid = read_file(dir, "vcpu0.cpuid", &cpuid_len);
	if (cpuid_len < sizeof(*cpuid) ||
	    cpuid_len != sizeof(*cpuid) + (size_t)cpuid->nent * sizeof(cpuid->entries[0]))
		die("%s/vcpu0.cpuid: %zu bytes do not match a kvm_cpuid2", dir, cpuid_len);
	xioctl(vcpu, KVM_SET_CPUID2, (unsigned long)cpuid, "KVM_SET_CPUID2");
	free(cpuid);
	read_exact(dir, "vcpu0.sregs", &sregs, sizeof(sregs));
	xioctl(vcpu, KVM_SET_SREGS, (unsigned long)&sregs, "KVM_SET_SREGS");
	read_exact(dir, "vcpu0.regs", &regs, sizeof(regs));
	xioctl(vcpu, KVM_SET_REGS, (unsigned long)&regs, "KVM_SET_REGS");
	run->kvm_valid_regs = KVM_SYNC_X86_REGS;

	while (guest_status < 0) {
		struct kvm_regs *r = &run->s.regs.regs;
		unsigned char *data;

		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN: %s", strerror(errno));
		}
		exits++;
		if (run->exit_reason != KVM_EXIT_IO)
			die("unexpected exit reason %u at rip 0x%llx", run->exit_reason, (unsigned long long)r->rip);
		data = (unsigned char *)run + run->io.data_offset;

		if (run->io.port == PORT_HYPERCALL && run->io.direction == KVM_EXIT_IO_OUT) {
			uint64_t nr = r->rax, a0 = r->rbx;
			int64_t ret;

			if (!t_first)
				t_first = now_ns();
			if (nr == HC_USER_BASE) {
				if (a0 == 0)
					cpu_start = clock_ns(CLOCK_THREAD_CPUTIME_ID);
				else if (a0 == iterations - 1)
					cpu_end = clock_ns(CLOCK_THREAD_CPUTIME_ID);
				ret = (int64_t)(a0 + 1);
			} else if (nr == HC_BENCH_MARK) {
				if (a0 == 0) {
					ret = (int64_t)iterations;
				} else if (a0 < MAX_MARKS) {
					marks[a0] = now_ns();
					ret = 0;
				} else {
					ret = -KT_EINVAL;
				}
			} else if (nr == HC_CONSOLE_WRITE) {
				ret = 0;
			} else {
				die("unhandled hypercall %llu at rip 0x%llx", (unsigned long long)nr,
				    (unsigned long long)r->rip);
			}
			r->rax = (uint64_t)ret;
			run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
		} else if (run->io.port == PORT_DEBUG_EXIT && run->io.direction == KVM_EXIT_IO_OUT) {
			guest_status = data[0];
		} else if (run->io.port >= PORT_COM1 && run->io.port < PORT_COM1 + COM1_PORTS) {
			if (run->io.direction == KVM_EXIT_IO_IN) {
				for (uint32_t i = 0; i < run->io.count; i++)
					memset(data + i * run->io.size, 0, run->io.size);
				if (run->io.port == COM1_LSR)
					for (uint32_t i = 0; i < run->io.count; i++)
						data[i * run->io.size] = LSR_THR_EMPTY;
			}
		} else {
			die("unhandled I/O: %u-byte %s port 0x%x at rip 0x%llx", run->io.size,
			    run->io.direction == KVM_EXIT_IO_OUT ? "write to" : "read from", run->io.port,
			    (unsigned long long)r->rip);
		}
	}

	if (!marks[1] || !marks[2])
		die("the guest did not record marks 1 and 2 (exit status %d)", guest_status);
	printf("{\"per_exit_ns\": %.1f, \"iterations\": %lu, \"create_to_first_hypercall_ns\": %llu, "
	       "\"create_to_mark1_ns\": %llu, \"cpu_per_exit_ns\": %.1f, \"rss_kb\": %ld, \"exits\": %lu, "
	       "\"guest_status\": %d}\n",
	       iterations ? (double)(marks[2] - marks[1]) / (double)iterations : 0.0, iterations,
	       (unsigned long long)(t_first - t_start), (unsigned long long)(marks[1] - t_start),
	       iterations >= 2 && cpu_end ? (double)(cpu_end - cpu_start) / (double)(iterations - 1) : 0.0,
	       rss_kb(), exits, guest_status);

	munmap(run, (size_t)run_size);
	munmap(ram, mem_size);
	close(vcpu);
	close(memfd);
	close(vm);
	close(kvm);
	return guest_status == 0 ? 0 : 1;
}
