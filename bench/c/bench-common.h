/*
 * Helpers the C baselines share. Define BENCH_PROG (the program name error messages start with)
 * before including this, after the system headers and _GNU_SOURCE.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef BENCH_PROG
#error "define BENCH_PROG before including bench-common.h"
#endif

static const char *prog = BENCH_PROG;

/* Prints "<prog>: <message>" on stderr and exits with status 2. */
static inline void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static inline void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static inline uint64_t clock_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t now_ns(void)
{
	return clock_ns(CLOCK_MONOTONIC);
}

#endif
