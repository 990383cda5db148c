/*
 * A small printf for the guest: %d %i %u %x %X %p %s %c %%, length modifiers hh h l ll z j t,
 * width and precision (also `*`), flags - 0 + space #. No floating point: the SDK is built with
 * -mgeneral-regs-only so it stays safe at CPL0.
 */
#include <kvmtalk.h>

struct sink {
	char *buf;
	size_t cap;   /* bytes buf can take before it must be flushed (or output is dropped) */
	size_t pos;
	size_t total; /* bytes the complete output has, including any dropped */
	bool console;
};

static void put(struct sink *o, char c)
{
	if (o->pos == o->cap && o->console) {
		kt_write(o->buf, o->pos);
		o->pos = 0;
	}
	if (o->pos < o->cap)
		o->buf[o->pos++] = c;
	o->total++;
}

static void put_n(struct sink *o, char c, int n)
{
	while (n-- > 0)
		put(o, c);
}

enum {
	F_LEFT = 1,
	F_ZERO = 2,
	F_PLUS = 4,
	F_SPACE = 8,
	F_ALT = 16,
};

static void put_str(struct sink *o, const char *s, int width, int prec, int flags)
{
	int len = 0;

	if (!s)
		s = "(null)";
	while ((prec < 0 || len < prec) && s[len])
		len++;
	if (!(flags & F_LEFT))
		put_n(o, ' ', width - len);
	for (int i = 0; i < len; i++)
		put(o, s[i]);
	if (flags & F_LEFT)
		put_n(o, ' ', width - len);
}

static void put_num(struct sink *o, unsigned long long v, bool neg, unsigned base, bool upper,
		    int width, int prec, int flags, const char *prefix)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	char tmp[24];
	int n = 0, plen = 0, zeros, pad;
	char sign = 0;

	if (neg)
		sign = '-';
	else if (flags & F_PLUS)
		sign = '+';
	else if (flags & F_SPACE)
		sign = ' ';

	/* Precision 0 with value 0 prints no digits, as in C. */
	if (v != 0 || prec != 0) {
		do {
			tmp[n++] = digits[base == 16 ? (v & 15) : (v % 10)];
			v = base == 16 ? v >> 4 : v / 10;
		} while (v);
	}
	if (prefix)
		while (prefix[plen])
			plen++;

	zeros = prec > n ? prec - n : 0;
	pad = width - n - zeros - plen - (sign != 0);
	if ((flags & F_ZERO) && !(flags & F_LEFT) && prec < 0) {
		zeros += pad > 0 ? pad : 0;
		pad = 0;
	}

	if (!(flags & F_LEFT))
		put_n(o, ' ', pad);
	if (sign)
		put(o, sign);
	for (int i = 0; i < plen; i++)
		put(o, prefix[i]);
	put_n(o, '0', zeros);
	while (n)
		put(o, tmp[--n]);
	if (flags & F_LEFT)
		put_n(o, ' ', pad);
}

enum len { L_INT, L_CHAR, L_SHORT, L_LONG, L_LLONG, L_SIZE };

static void format(struct sink *o, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(o, *fmt);
			continue;
		}
		const char *start = fmt++;
		int flags = 0, width = 0, prec = -1;
		enum len len = L_INT;

		for (;; fmt++) {
			if (*fmt == '-')
				flags |= F_LEFT;
			else if (*fmt == '0')
				flags |= F_ZERO;
			else if (*fmt == '+')
				flags |= F_PLUS;
			else if (*fmt == ' ')
				flags |= F_SPACE;
			else if (*fmt == '#')
				flags |= F_ALT;
			else
				break;
		}
		if (*fmt == '*') {
			width = va_arg(ap, int);
			if (width < 0) {
				flags |= F_LEFT;
				width = -width;
			}
			fmt++;
		} else {
			while (*fmt >= '0' && *fmt <= '9')
				width = width * 10 + (*fmt++ - '0');
		}
		if (*fmt == '.') {
			fmt++;
			prec = 0;
			if (*fmt == '*') {
				prec = va_arg(ap, int);
				fmt++;
			} else {
				while (*fmt >= '0' && *fmt <= '9')
					prec = prec * 10 + (*fmt++ - '0');
			}
		}
		switch (*fmt) {
		case 'h':
			len = fmt[1] == 'h' ? (fmt++, L_CHAR) : L_SHORT;
			fmt++;
			break;
		case 'l':
			len = fmt[1] == 'l' ? (fmt++, L_LLONG) : L_LONG;
			fmt++;
			break;
		case 'z':
		case 'j':
		case 't':
			len = *fmt == 'z' ? L_SIZE : L_LLONG;
			fmt++;
			break;
		}

		unsigned long long u;
		long long s;
		switch (*fmt) {
		case 'd':
		case 'i':
			switch (len) {
			case L_LONG: s = va_arg(ap, long); break;
			case L_LLONG: s = va_arg(ap, long long); break;
			case L_SIZE: s = (long long)va_arg(ap, size_t); break;
			case L_CHAR: s = (signed char)va_arg(ap, int); break;
			case L_SHORT: s = (short)va_arg(ap, int); break;
			default: s = va_arg(ap, int); break;
			}
			/* Negate in unsigned arithmetic so LLONG_MIN does not overflow. */
			put_num(o, s < 0 ? 0ULL - (unsigned long long)s : (unsigned long long)s, s < 0,
				10, false, width, prec, flags, NULL);
			break;
		case 'u':
		case 'x':
		case 'X':
			switch (len) {
			case L_LONG: u = va_arg(ap, unsigned long); break;
			case L_LLONG: u = va_arg(ap, unsigned long long); break;
			case L_SIZE: u = va_arg(ap, size_t); break;
			case L_CHAR: u = (unsigned char)va_arg(ap, unsigned); break;
			case L_SHORT: u = (unsigned short)va_arg(ap, unsigned); break;
			default: u = va_arg(ap, unsigned); break;
			}
			if (*fmt == 'u')
				put_num(o, u, false, 10, false, width, prec, flags & ~(F_PLUS | F_SPACE),
					NULL);
			else
				put_num(o, u, false, 16, *fmt == 'X', width, prec,
					flags & ~(F_PLUS | F_SPACE),
					(flags & F_ALT) && u ? (*fmt == 'X' ? "0X" : "0x") : NULL);
			break;
		case 'p':
			put_num(o, (uintptr_t)va_arg(ap, void *), false, 16, false, width, prec,
				flags & ~(F_PLUS | F_SPACE), "0x");
			break;
		case 's':
			put_str(o, va_arg(ap, const char *), width, prec, flags);
			break;
		case 'c':
			if (!(flags & F_LEFT))
				put_n(o, ' ', width - 1);
			put(o, (char)va_arg(ap, int));
			if (flags & F_LEFT)
				put_n(o, ' ', width - 1);
			break;
		case '%':
			put(o, '%');
			break;
		default:
			/* Unknown conversion: print it verbatim so the mistake is visible. */
			for (; start <= fmt && *start; start++)
				put(o, *start);
			if (!*fmt)
				return;
			break;
		}
	}
}

int kt_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct sink o = { .buf = buf, .cap = size ? size - 1 : 0 };

	format(&o, fmt, ap);
	if (size)
		buf[o.pos] = '\0';
	return (int)o.total;
}

int kt_snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = kt_vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

int kt_vprintf(const char *fmt, va_list ap)
{
	char buf[256];
	struct sink o = { .buf = buf, .cap = sizeof(buf), .console = true };

	format(&o, fmt, ap);
	kt_write(buf, o.pos);
	return (int)o.total;
}

int kt_printf(const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = kt_vprintf(fmt, ap);
	va_end(ap);
	return n;
}
