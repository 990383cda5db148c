/**
 * The Linux system calls kvmtalk needs, bound once through koffi.
 *
 * Every wrapper checks the return value and throws {@link SysError} with the errno name, so callers
 * never see a bare -1. The ioctl binding takes a fixed third argument (not variadic): koffi's
 * variadic calls are slower and the kernel reads the argument as an unsigned long anyway.
 */
import koffi from 'koffi';
import { readFileSync } from 'node:fs';
import os from 'node:os';

const libc = koffi.load('libc.so.6');

const cOpen = libc.func('int open(const char *path, int flags, int mode)');
const cClose = libc.func('int close(int fd)');
const cIoctlInt = libc.func('int ioctl(int fd, unsigned long req, unsigned long arg)');
const cIoctlPtr = libc.func('int ioctl(int fd, unsigned long req, void *arg)');
const cMmap = libc.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)');
const cMunmap = libc.func('int munmap(void *addr, size_t len)');
const cMadvise = libc.func('int madvise(void *addr, size_t len, int advice)');
const cMemfdCreate = libc.func('int memfd_create(const char *name, unsigned int flags)');
const cFtruncate = libc.func('int ftruncate(int fd, int64_t len)');
const cGettid = libc.func('int gettid(void)');
const cTgkill = libc.func('int tgkill(int tgid, int tid, int sig)');
const cPread = libc.func('int64_t pread(int fd, void *buf, size_t count, int64_t off)');
const cFallocate = libc.func('int fallocate(int fd, int mode, int64_t off, int64_t len)');
const cEventfd = libc.func('int eventfd(unsigned int initval, int flags)');
const cWrite = libc.func('int64_t write(int fd, const void *buf, size_t count)');
const cRead = libc.func('int64_t read(int fd, void *buf, size_t count)');
const cEpollCreate1 = libc.func('int epoll_create1(int flags)');
const cEpollCtl = libc.func('int epoll_ctl(int epfd, int op, int fd, void *event)');
const cEpollWait = libc.func('int epoll_wait(int epfd, void *events, int maxevents, int timeout)');
const cSchedYield = libc.func('int sched_yield(void)');
const cSchedSetaffinity = libc.func('int sched_setaffinity(int pid, size_t size, const uint8_t *mask)');
const cSchedGetaffinity = libc.func('int sched_getaffinity(int pid, size_t size, _Out_ uint8_t *mask)');
const cSyscall3 = libc.func('int syscall(long nr, long a1, uint64_t a2, long a3)');

/** A failed system call, named by its errno (e.g. `ENOENT`). */
export class SysError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
  ) {
    super(`${call}: ${errnoName(errno)} (${describeErrno(errno)})`);
    this.name = 'SysError';
  }
  /** The symbolic errno, such as `EACCES`. */
  get code(): string {
    return errnoName(this.errno);
  }
}

const errnoNames = new Map<number, string>(
  Object.entries(os.constants.errno).map(([name, value]) => [value as number, name]),
);

/** `ENOENT` for 2, and so on; falls back to the number. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

const errnoText: Record<string, string> = {
  EPERM: 'operation not permitted',
  ENOENT: 'no such file or directory',
  EINTR: 'interrupted system call',
  EIO: 'I/O error',
  EBADF: 'bad file descriptor',
  EAGAIN: 'resource temporarily unavailable',
  ENOMEM: 'out of memory',
  EACCES: 'permission denied',
  EFAULT: 'bad address',
  EBUSY: 'device or resource busy',
  EEXIST: 'already exists',
  ENODEV: 'no such device',
  EINVAL: 'invalid argument',
  ENOTTY: 'ioctl not supported by this device',
  ENOSPC: 'no space left',
  ENOSYS: 'function not implemented',
  E2BIG: 'argument list too long',
  ENXIO: 'no such device or address',
  EOPNOTSUPP: 'operation not supported',
};

function describeErrno(errno: number): string {
  return errnoText[errnoName(errno)] ?? 'system error';
}

function lastErrno(): number {
  return koffi.errno() as number;
}

function check(call: string, ret: number): number {
  if (ret < 0) throw new SysError(call, lastErrno());
  return ret;
}

export const O_RDONLY = 0;
export const O_RDWR = 2;
export const O_CLOEXEC = 0o2000000;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
export const MAP_ANONYMOUS = 0x20;
export const MAP_FIXED = 0x10;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const PROT_NONE = 0;
export const MFD_CLOEXEC = 1;
export const MFD_HUGETLB = 4;
/** With {@link MFD_HUGETLB}: 2 MiB pages (log2 of the size, shifted by MFD_HUGE_SHIFT 26). */
export const MFD_HUGE_2MB = 21 << 26;
export const MADV_DONTNEED = 4;
export const MADV_HUGEPAGE = 14;
export const SIGUSR2 = 12;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const EPOLL_CLOEXEC = 0o2000000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLLIN = 0x001;
/** Bytes of `struct epoll_event` on x86-64: it is packed (u32 events, then u64 data at offset 4). */
export const EPOLL_EVENT_SIZE = 12;
const EINTR = 4;
const EAGAIN = 11;

/** open(2); throws {@link SysError}. */
export function open(path: string, flags: number, mode = 0): number {
  return check(`open ${path}`, cOpen(path, flags | O_CLOEXEC, mode));
}

/** close(2). Errors are ignored: there is nothing useful to do with them at teardown. */
export function close(fd: number): void {
  cClose(fd);
}

/** ioctl(2) with an integer (or no) argument; returns the non-negative result. */
export function ioctl(fd: number, name: string, req: number, arg: number | bigint = 0): number {
  return check(name, cIoctlInt(fd, req, arg));
}

/** ioctl(2) with a pointer to a buffer the kernel reads and/or fills. */
export function ioctlBuf(fd: number, name: string, req: number, buf: Uint8Array | ArrayBuffer): number {
  return check(name, cIoctlPtr(fd, req, buf));
}

/** Raw ioctl returning -errno instead of throwing; the vCPU run loop uses it to avoid exceptions on EINTR. */
export function ioctlRaw(fd: number, req: number, arg: number): number {
  const r = cIoctlInt(fd, req, arg) as number;
  return r < 0 ? -lastErrno() : r;
}

/** mmap(2) a shared mapping of `fd`; returns the address as a BigInt. */
export function mmap(len: number, prot: number, flags: number, fd: number, offset = 0): bigint {
  const addr = BigInt(koffi.address(cMmap(null, len, prot, flags, fd, offset)));
  if (addr === 0xffffffffffffffffn) throw new SysError('mmap', lastErrno());
  return addr;
}

/** mmap(2) at exactly `addr` (the caller passes MAP_FIXED and owns the range, e.g. a reservation it made). */
export function mmapAt(addr: bigint, len: number, prot: number, flags: number, fd: number, offset = 0): bigint {
  const got = BigInt(koffi.address(cMmap(addr, len, prot, flags, fd, offset)));
  if (got === 0xffffffffffffffffn) throw new SysError('mmap', lastErrno());
  return got;
}

/** munmap(2). */
export function munmap(addr: bigint, len: number): void {
  check('munmap', cMunmap(addr, len));
}

/** madvise(2). */
export function madvise(addr: bigint, len: number, advice: number): void {
  check('madvise', cMadvise(addr, len, advice));
}

/** memfd_create(2). */
export function memfdCreate(name: string, flags: number): number {
  return check('memfd_create', cMemfdCreate(name, flags));
}

/** ftruncate(2). */
export function ftruncate(fd: number, len: number): void {
  check('ftruncate', cFtruncate(fd, len));
}

/** fallocate(2): allocate backing for [off, off+len) of `fd` now, so running out shows up here rather than later. */
export function fallocate(fd: number, mode: number, off: number, len: number): void {
  check('fallocate', cFallocate(fd, mode, off, len));
}

/** The calling thread's kernel thread id. */
export function gettid(): number {
  return cGettid();
}

/** tgkill(2): send a signal to one thread of this process. */
export function tgkill(tid: number, sig: number): void {
  check('tgkill', cTgkill(process.pid, tid, sig));
}

/** pread(2) into `buf`; returns the number of bytes read. */
export function pread(fd: number, buf: Uint8Array, offset: number): number {
  return check('pread', cPread(fd, buf, buf.length, offset));
}

/** eventfd(2), close-on-exec. */
export function eventfd(initval = 0, flags = 0): number {
  return check('eventfd', cEventfd(initval, flags | EFD_CLOEXEC));
}

/** One u64 1 per thread, so signalling an eventfd allocates nothing. */
const ONE = new BigUint64Array([1n]);

/**
 * Adds 1 to an eventfd's counter (write(2) of a u64 1). Safe from any thread: a worker_thread
 * that only knows the fd number can call it, since fds belong to the whole process.
 */
export function eventfdSignal(fd: number): void {
  if ((cWrite(fd, ONE, 8) as number) !== 8) throw new SysError('eventfd write', lastErrno());
}

/**
 * Reads and resets an eventfd's counter (read(2) of a u64). Returns 0n when the counter is 0 and
 * the eventfd is non-blocking (EAGAIN), so a spurious wakeup is not an error.
 */
export function eventfdRead(fd: number, buf: BigUint64Array = new BigUint64Array(1)): bigint {
  const r = cRead(fd, buf, 8) as number;
  if (r === 8) return buf[0];
  const errno = lastErrno();
  if (r < 0 && errno === EAGAIN) return 0n;
  throw new SysError('eventfd read', r < 0 ? errno : 5 /* EIO: a short read of an eventfd */);
}

/** epoll_create1(2), close-on-exec. */
export function epollCreate(): number {
  return check('epoll_create1', cEpollCreate1(EPOLL_CLOEXEC));
}

/**
 * epoll_ctl(2) ADD or DEL of `fd` for `events` (EPOLLIN ...), with a u32 `tag` as the event's data
 * (returned by {@link epollWait}). DEL ignores `events` and `tag`.
 */
export function epollCtl(epfd: number, op: number, fd: number, events = EPOLLIN, tag = 0): void {
  const ev = new Uint8Array(EPOLL_EVENT_SIZE);
  const dv = new DataView(ev.buffer);
  dv.setUint32(0, events, true);
  dv.setBigUint64(4, BigInt(tag >>> 0), true);
  check('epoll_ctl', cEpollCtl(epfd, op, fd, ev));
}

/**
 * epoll_wait(2) into `events` (a buffer of n × {@link EPOLL_EVENT_SIZE} bytes); blocks the calling
 * thread up to `timeoutMs` (-1: forever). Returns how many events it filled, 0 on timeout and on
 * EINTR (the caller loops anyway). Read each event's tag with {@link epollEventTag}.
 */
export function epollWait(epfd: number, events: Uint8Array, timeoutMs: number): number {
  const n = cEpollWait(epfd, events, Math.floor(events.length / EPOLL_EVENT_SIZE), timeoutMs) as number;
  if (n >= 0) return n;
  const errno = lastErrno();
  if (errno === EINTR) return 0;
  throw new SysError('epoll_wait', errno);
}

/** The u32 tag of event `i` in an {@link epollWait} buffer (the low half of its u64 data). */
export function epollEventTag(events: Uint8Array, i: number): number {
  const o = i * EPOLL_EVENT_SIZE + 4;
  return (events[o] | (events[o + 1] << 8) | (events[o + 2] << 16) | (events[o + 3] << 24)) >>> 0;
}

/**
 * sched_yield(2): lets another runnable thread have this CPU (returns at once when there is
 * none). For spin loops on machines with fewer cores than spinning threads.
 */
export function schedYield(): void {
  cSchedYield();
}

/** A zero-copy view of `len` bytes of this process's memory at `addr`. */
export function view(addr: bigint, len: number): ArrayBuffer {
  return koffi.view(addr, len) as ArrayBuffer;
}

/**
 * sched_setaffinity(2) for one thread (`tid`; 0 = the calling thread): it may run only on the
 * host CPUs listed.
 */
export function schedSetaffinity(tid: number, cpus: readonly number[]): void {
  const mask = new Uint8Array(128);
  for (const c of cpus) {
    if (!Number.isInteger(c) || c < 0 || c >= mask.length * 8) throw new RangeError(`bad host CPU ${c}`);
    mask[c >> 3] |= 1 << (c & 7);
  }
  check(`sched_setaffinity ${tid}`, cSchedSetaffinity(tid, mask.length, mask));
}

/** sched_getaffinity(2) for one thread (`tid`; 0 = the calling thread): the host CPUs it may run on. */
export function schedGetaffinity(tid = 0): number[] {
  const mask = new Uint8Array(128);
  check(`sched_getaffinity ${tid}`, cSchedGetaffinity(tid, mask.length, mask));
  const cpus: number[] = [];
  for (let c = 0; c < mask.length * 8; c++) if (mask[c >> 3]! & (1 << (c & 7))) cpus.push(c);
  return cpus;
}

/** Cpus_allowed_list of a thread of this process, as /proc/self/task/<tid>/status shows it. */
export function cpusAllowed(tid: number): string {
  const m = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/self/task/${tid}/status`, 'utf8'));
  if (!m) throw new Error(`no Cpus_allowed_list in /proc/self/task/${tid}/status`);
  return m[1]!;
}

const SYS_BPF = 321;

/**
 * bpf(2): command `cmd` on the `size`-byte `union bpf_attr` at address `attr` (native memory the
 * caller owns, since the attribute holds further pointers). Returns the non-negative result (a
 * new fd for the create and load commands).
 */
export function bpf(cmd: number, attr: bigint, size: number, name = `bpf(${cmd})`): number {
  return check(name, cSyscall3(SYS_BPF, cmd, attr, size) as number);
}
