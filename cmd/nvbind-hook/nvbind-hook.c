/*
 * nvbind-hook: the hook that nvbind's CDI specs, NRI adjustments and runtime wrapper
 * name ("nvbind-hook hook all ..."), at createRuntime with --enter-mount-namespace: it
 * enters the mount namespace of the state's pid, where the runtime has made the
 * container's mounts, before it opens the container root.
 *
 * Runtimes start the hook on every GPU container start, so its cost is paid there. This
 * program, small, static and C, does the common case itself: a container that gets the
 * driver through a layout (one mount, whose libraries' ld cache entries the layout carries
 * in --folder-entries): the links (a folder only the driver fills, --folder-link, linked
 * whole where the image has nothing there), the ld cache (the layout's entries merged into the
 * image's cache), the ld.so.conf.d file, the params protection and the application
 * profile. Anything else (other actions or flags, an image cache it cannot use, newer
 * CUDA forward-compat libraries in the image, a kernel without openat2, a failed step) it
 * hands, before changing anything where it can, to the full hook, nvbind-hook-go beside
 * it (Go: nvbind's hook package), with the same arguments and state; the full hook is
 * idempotent, so a step done twice gives the same container. Both write the same bytes.
 *
 * It never runs a program from the container root, resolves every container path with
 * openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) so that no link leads out of the root,
 * opens only regular files (through an O_PATH handle first, so no device or FIFO is ever
 * opened), never follows the last component of a path it writes, and bounds every read
 * and every parse with the full hook's budgets.
 *
 * NVBIND_HOOK_TRACE=1 makes it say on stderr which path it took; NVBIND_HOOK_FULL=1 makes
 * it hand every call to the full hook (tests compare the two).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/vfs.h>
#include <dirent.h>
#include <unistd.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef RESOLVE_NO_MAGICLINKS
#define RESOLVE_NO_MAGICLINKS 0x02
#endif
#ifndef RESOLVE_IN_ROOT
#define RESOLVE_IN_ROOT 0x10
#endif
#ifndef O_PATH
#define O_PATH 010000000
#endif
#ifndef SYS_getrandom
#define SYS_getrandom 318
#endif

struct nv_open_how {
	uint64_t flags, mode, resolve;
};

#define FULL_HOOK "nvbind-hook-go"
#define FULL_BINARY "nvbind" /* "nvbind hook all ..." is the same command */

/* the full hook's budgets (package hook, internal/ldcache) */
#define MAX_STATE (1 << 20)
#define MAX_CONFIG (16 << 20)
#define MAX_SMALL (64 << 10)
#define LD_MAX_SIZE (8 << 20)
#define LD_MAX_ENTRIES (1 << 16)
#define LD_MAX_PATH 4095
#define LD_MAX_NAME 255
#define LD_MAX_STRING_BYTES (16 << 20)
#define LD_MAX_HWCAPS 256
#define MAX_FOLDER_ENTRIES (1 << 16)
#define MAX_ARGS 4096
#define JSON_MAX_DEPTH 1000
#define OPENAT2_RETRIES 128
#define MAX_EGL_MINOR 31

static char **g_argv;
static char **g_envp;
static char g_self[PATH_MAX]; /* the folder of this program ("": not found yet) */
/* the full hook and the full binary, opened before the hook enters the container's
 * namespaces, so that no path is looked up there (-1: none); g_entered once in them */
static int g_full_fd[2] = {-1, -1};
static int g_entered, g_enter_arg; /* g_enter_arg: --enter-mount-namespace's index in argv */
static const char *g_state;
static size_t g_state_len;
static int g_trace;

/* ---- leaving: the full hook, or an error ---- */

/* the actions' messages, written when the hook is done: a hook that hands over says
 * nothing of its own, the full hook says it all */
static char *g_log;
static size_t g_loglen, g_logcap;

static void *xrealloc(void *p, size_t n);

static void say(const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n <= 0)
		return;
	if (g_loglen + (size_t)n + 1 > g_logcap) {
		g_logcap = (g_loglen + (size_t)n + 1) * 2;
		g_log = xrealloc(g_log, g_logcap);
	}
	va_start(ap, fmt);
	vsnprintf(g_log + g_loglen, g_logcap - g_loglen, fmt, ap);
	va_end(ap);
	g_loglen += (size_t)n;
}

static void trace(const char *fmt, ...) {
	if (!g_trace)
		return;
	va_list ap;
	va_start(ap, fmt);
	fputs("nvbind-hook: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* open_full opens, once, the full hook (nvbind-hook-go) and the full binary (nvbind)
 * beside this program: before the hook enters the container's namespaces, where a path
 * could lead into the image; it returns the errno of the full hook's open */
static int open_full(void) {
	static int done, err;
	if (done)
		return err;
	done = 1;
	ssize_t n = readlink("/proc/self/exe", g_self, sizeof g_self - 1);
	char *slash = n > 0 ? (g_self[n] = 0, strrchr(g_self, '/')) : NULL;
	if (!slash) {
		g_self[0] = 0;
		return err = n < 0 ? errno : ENOENT;
	}
	*slash = 0;
	static const char *const names[] = {FULL_HOOK, FULL_BINARY};
	for (int i = 0; i < 2; i++) {
		char prog[PATH_MAX + 32];
		if ((size_t)snprintf(prog, sizeof prog, "%s/%s", g_self, names[i]) >= sizeof prog) {
			if (i == 0)
				err = ENAMETOOLONG;
			continue;
		}
		/* not O_CLOEXEC: a script in its place (a packaging wrapper) is run through
		 * /dev/fd/N, which must stay open across the exec */
		g_full_fd[i] = open(prog, O_PATH);
		if (g_full_fd[i] < 0 && i == 0)
			err = errno;
	}
	return err;
}

/* full hands the call to the full hook: the same arguments (less
 * --enter-mount-namespace once in the container's namespaces: it starts in them), and
 * the state it read from stdin on a fresh stdin. It does not return. */
static void full(const char *why) {
	trace("full hook: %s", why);
	fflush(stderr);
	int first = open_full();
	if (!g_self[0]) {
		fprintf(stderr, "nvbind-hook: cannot find its own path: %s\n", strerror(first));
		exit(1);
	}
	char **argv = g_argv;
	if (g_entered) {
		size_t n = 0;
		while (g_argv[n])
			n++;
		argv = calloc(n + 1, sizeof *argv);
		if (!argv) {
			fprintf(stderr, "nvbind-hook: out of memory\n");
			exit(1);
		}
		for (size_t i = 0, k = 0; i < n; i++)
			if (i != (size_t)g_enter_arg)
				argv[k++] = g_argv[i];
	}
	if (g_state) {
		int fd = memfd_create("nvbind-hook-state", MFD_CLOEXEC);
		if (fd < 0) {
			fprintf(stderr, "nvbind-hook: %s\n", strerror(errno));
			exit(1);
		}
		size_t off = 0;
		while (off < g_state_len) {
			ssize_t w = write(fd, g_state + off, g_state_len - off);
			if (w <= 0) {
				fprintf(stderr, "nvbind-hook: %s\n", strerror(errno));
				exit(1);
			}
			off += (size_t)w;
		}
		if (lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) != 0) {
			fprintf(stderr, "nvbind-hook: %s\n", strerror(errno));
			exit(1);
		}
	}
	if (g_full_fd[0] >= 0) {
		fexecve(g_full_fd[0], argv, g_envp);
		first = errno;
	}
	if (g_full_fd[1] >= 0)
		fexecve(g_full_fd[1], argv, g_envp);
	fprintf(stderr, "nvbind-hook: %s: the full hook %s/%s cannot run: %s\n", why, g_self, FULL_HOOK, strerror(first));
	exit(1);
}

/* die reports an error after the container was changed (the full hook would do the same
 * step again) and exits 1, which fails the container's create. */
static void die(const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	fputs("nvbind-hook: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

/* ---- memory ---- */

static void *xmalloc(size_t n) {
	void *p = malloc(n ? n : 1);
	if (!p)
		full("out of memory");
	return p;
}

static void *xrealloc(void *p, size_t n) {
	p = realloc(p, n ? n : 1);
	if (!p)
		full("out of memory");
	return p;
}

/* ---- reading ---- */

/* read_fd reads a whole file of at most max bytes, NUL-terminated; -1 when larger or on
 * an error (errno set). */
static char *read_fd(int fd, size_t max, size_t *len) {
	size_t cap = 4096, n = 0;
	/* a regular file's size, and one byte to see its end: no copy as the buffer grows */
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 && (uint64_t)st.st_size < max)
		cap = (size_t)st.st_size + 1;
	char *buf = xmalloc(cap + 1);
	for (;;) {
		if (n == cap) {
			if (cap > max) {
				free(buf);
				errno = EFBIG;
				return NULL;
			}
			cap = cap * 2 > max + 1 ? max + 1 : cap * 2;
			buf = xrealloc(buf, cap + 1);
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			free(buf);
			errno = e;
			return NULL;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > max) {
			free(buf);
			errno = EFBIG;
			return NULL;
		}
	}
	buf[n] = 0;
	*len = n;
	return buf;
}

/* ---- JSON: only what the hook reads of the state and config.json ---- */

struct json {
	const char *s, *end;
	int depth;
	int bad;
};

static void json_ws(struct json *j) {
	while (j->s < j->end && (*j->s == ' ' || *j->s == '\t' || *j->s == '\n' || *j->s == '\r'))
		j->s++;
}

static int hexval(char c) {
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int json_hex4(struct json *j, unsigned *v) {
	if (j->end - j->s < 4)
		return 0;
	*v = 0;
	for (int i = 0; i < 4; i++) {
		int h = hexval(j->s[i]);
		if (h < 0)
			return 0;
		*v = *v << 4 | (unsigned)h;
	}
	j->s += 4;
	return 1;
}

/* json_string parses a string at j->s (the opening quote) and returns it decoded and
 * NUL-terminated (out may be NULL to skip it); a string holding NUL is refused. */
static char *json_string(struct json *j, int keep) {
	if (j->s >= j->end || *j->s != '"') {
		j->bad = 1;
		return NULL;
	}
	j->s++;
	char *out = NULL;
	if (keep) {
		/* the decoded string is no longer than the raw one */
		const char *q = j->s;
		while (q < j->end && *q != '"')
			q += *q == '\\' && q + 1 < j->end ? 2 : 1;
		out = xmalloc((size_t)(q - j->s) + 1);
	}
	size_t n = 0;
	while (j->s < j->end && *j->s != '"') {
		unsigned char c = (unsigned char)*j->s++;
		if (c < 0x20)
			goto bad;
		if (c != '\\') {
			if (out)
				out[n++] = (char)c;
			continue;
		}
		if (j->s >= j->end)
			goto bad;
		c = (unsigned char)*j->s++;
		unsigned cp;
		switch (c) {
		case '"': case '\\': case '/':
			cp = c;
			break;
		case 'b': cp = '\b'; break;
		case 'f': cp = '\f'; break;
		case 'n': cp = '\n'; break;
		case 'r': cp = '\r'; break;
		case 't': cp = '\t'; break;
		case 'u':
			if (!json_hex4(j, &cp))
				goto bad;
			if (cp >= 0xd800 && cp < 0xdc00) {
				unsigned lo;
				if (j->end - j->s >= 6 && j->s[0] == '\\' && j->s[1] == 'u') {
					const char *save = j->s;
					j->s += 2;
					if (json_hex4(j, &lo) && lo >= 0xdc00 && lo < 0xe000)
						cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
					else {
						j->s = save;
						cp = 0xfffd;
					}
				} else
					cp = 0xfffd;
			} else if (cp >= 0xdc00 && cp < 0xe000)
				cp = 0xfffd;
			break;
		default:
			goto bad;
		}
		if (cp == 0)
			goto bad; /* a path with NUL: the full hook says why */
		if (!out)
			continue;
		if (cp < 0x80)
			out[n++] = (char)cp;
		else if (cp < 0x800) {
			out[n++] = (char)(0xc0 | cp >> 6);
			out[n++] = (char)(0x80 | (cp & 0x3f));
		} else if (cp < 0x10000) {
			out[n++] = (char)(0xe0 | cp >> 12);
			out[n++] = (char)(0x80 | (cp >> 6 & 0x3f));
			out[n++] = (char)(0x80 | (cp & 0x3f));
		} else {
			out[n++] = (char)(0xf0 | cp >> 18);
			out[n++] = (char)(0x80 | (cp >> 12 & 0x3f));
			out[n++] = (char)(0x80 | (cp >> 6 & 0x3f));
			out[n++] = (char)(0x80 | (cp & 0x3f));
		}
	}
	if (j->s >= j->end)
		goto bad;
	j->s++;
	if (out)
		out[n] = 0;
	return out ? out : (char *)"";
bad:
	free(out);
	j->bad = 1;
	return NULL;
}

/* json_text parses a string value the hook uses: one with bytes beyond ASCII is left to
 * the full hook, whose decoder replaces invalid UTF-8. */
static char *json_text(struct json *j) {
	char *v = json_string(j, 1);
	for (const char *q = v; q && *q; q++)
		if ((unsigned char)*q >= 0x80) {
			j->bad = 2;
			free(v);
			return NULL;
		}
	return v;
}

/* json_number parses a number; *is_int says whether it is an integer that fits int64. */
static int json_number(struct json *j, int64_t *v, int *is_int) {
	const char *p = j->s;
	int neg = 0;
	if (p < j->end && *p == '-') {
		neg = 1;
		p++;
	}
	if (p >= j->end || *p < '0' || *p > '9')
		return 0;
	if (*p == '0' && p + 1 < j->end && p[1] >= '0' && p[1] <= '9')
		return 0;
	uint64_t acc = 0;
	int overflow = 0;
	for (; p < j->end && *p >= '0' && *p <= '9'; p++) {
		if (acc > (UINT64_MAX - 9) / 10)
			overflow = 1;
		acc = acc * 10 + (uint64_t)(*p - '0');
	}
	*is_int = !overflow && acc <= (uint64_t)INT64_MAX + (uint64_t)neg;
	if (p < j->end && *p == '.') {
		p++;
		if (p >= j->end || *p < '0' || *p > '9')
			return 0;
		while (p < j->end && *p >= '0' && *p <= '9')
			p++;
		*is_int = 0;
	}
	if (p < j->end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < j->end && (*p == '+' || *p == '-'))
			p++;
		if (p >= j->end || *p < '0' || *p > '9')
			return 0;
		while (p < j->end && *p >= '0' && *p <= '9')
			p++;
		*is_int = 0;
	}
	if (*is_int)
		*v = neg ? (int64_t)(0 - acc) : (int64_t)acc;
	j->s = p;
	return 1;
}

static void json_skip(struct json *j);

static int json_lit(struct json *j, const char *lit) {
	size_t n = strlen(lit);
	if ((size_t)(j->end - j->s) < n || memcmp(j->s, lit, n) != 0)
		return 0;
	j->s += n;
	return 1;
}

/* json_null consumes a null value. */
static int json_null(struct json *j) { return j->s < j->end && *j->s == 'n' && json_lit(j, "null"); }

/* json_each walks an object (obj) or array: it calls fn at each member's value with its
 * key (NULL in an array); fn must consume the value. */
static void json_each(struct json *j, int obj, void (*fn)(struct json *, const char *key, void *), void *arg) {
	if (++j->depth > JSON_MAX_DEPTH) {
		j->bad = 1;
		return;
	}
	j->s++; /* { or [ */
	json_ws(j);
	if (j->s < j->end && *j->s == (obj ? '}' : ']')) {
		j->s++;
		j->depth--;
		return;
	}
	for (;;) {
		char *key = NULL;
		json_ws(j);
		if (obj) {
			key = json_string(j, 1);
			if (!key)
				return;
			json_ws(j);
			if (j->s >= j->end || *j->s != ':') {
				free(key);
				j->bad = 1;
				return;
			}
			j->s++;
			json_ws(j);
		}
		fn(j, key, arg);
		free(key);
		if (j->bad)
			return;
		json_ws(j);
		if (j->s < j->end && *j->s == ',') {
			j->s++;
			continue;
		}
		if (j->s < j->end && *j->s == (obj ? '}' : ']')) {
			j->s++;
			j->depth--;
			return;
		}
		j->bad = 1;
		return;
	}
}

static void skip_member(struct json *j, const char *key, void *arg) {
	(void)key;
	(void)arg;
	json_skip(j);
}

static void json_skip(struct json *j) {
	json_ws(j);
	if (j->s >= j->end) {
		j->bad = 1;
		return;
	}
	int64_t v;
	int is_int;
	switch (*j->s) {
	case '{':
		json_each(j, 1, skip_member, NULL);
		return;
	case '[':
		json_each(j, 0, skip_member, NULL);
		return;
	case '"':
		json_string(j, 0);
		return;
	case 't':
		if (!json_lit(j, "true"))
			j->bad = 1;
		return;
	case 'f':
		if (!json_lit(j, "false"))
			j->bad = 1;
		return;
	case 'n':
		if (!json_lit(j, "null"))
			j->bad = 1;
		return;
	}
	if (!json_number(j, &v, &is_int))
		j->bad = 1;
}

/* key_is matches a member name as encoding/json does for the full hook's field (which
 * also takes other cases): a name equal but for case is left to the full hook. */
static int key_is(struct json *j, const char *key, const char *want) {
	if (strcmp(key, want) == 0)
		return 1;
	if (strcasecmp(key, want) == 0)
		j->bad = 2;
	for (const char *q = key; *q; q++)
		if ((unsigned char)*q >= 0x80)
			j->bad = 2; /* Unicode case folding (K, U+212A, is k) */
	return 0;
}

/* json_document checks that the whole input is one value and nothing after it. */
static int json_done(struct json *j) {
	json_ws(j);
	return !j->bad && j->s == j->end;
}

/* -- the OCI state -- */

struct state {
	char *bundle;
	int64_t pid;  /* 0: none */
	int stopped; /* status "stopped": runc's createRuntime hooks on a restore from a checkpoint */
};

static void state_member(struct json *j, const char *key, void *arg) {
	struct state *st = arg;
	json_ws(j);
	if (key_is(j, key, "bundle")) {
		if (json_null(j))
			return;
		free(st->bundle);
		st->bundle = json_text(j);
		return;
	}
	if (j->bad)
		return;
	if (key_is(j, key, "pid")) {
		int64_t v;
		int is_int;
		if (json_null(j))
			return;
		if (!json_number(j, &v, &is_int) || !is_int)
			j->bad = 2;
		else
			st->pid = v;
		return;
	}
	if (!j->bad && (key_is(j, key, "id") || key_is(j, key, "status"))) {
		if (json_null(j))
			return;
		if (j->s >= j->end || *j->s != '"') {
			j->bad = 2;
			return;
		}
		if (key_is(j, key, "status")) {
			char *v = json_string(j, 1);
			st->stopped = v && strcmp(v, "stopped") == 0;
			free(v);
		} else
			json_string(j, 0);
		return;
	}
	if (!j->bad)
		json_skip(j);
}

/* -- config.json: root.path and linux.devices -- */

#define MAX_MINORS 4096

struct config {
	char *root;
	int has_root;
	int64_t *minors; /* grown as devices come: most containers have a few */
	int nminors, minors_cap;
	/* the device being read */
	char *dpath, *dtype;
	int64_t dminor;
};

static void root_member(struct json *j, const char *key, void *arg) {
	struct config *c = arg;
	json_ws(j);
	if (key_is(j, key, "path")) {
		if (json_null(j))
			return;
		free(c->root);
		c->root = json_text(j);
		return;
	}
	if (!j->bad)
		json_skip(j);
}

static void device_member(struct json *j, const char *key, void *arg) {
	struct config *c = arg;
	json_ws(j);
	char **dst = NULL;
	if (key_is(j, key, "path"))
		dst = &c->dpath;
	else if (!j->bad && key_is(j, key, "type"))
		dst = &c->dtype;
	if (dst) {
		if (json_null(j))
			return;
		if (j->s >= j->end || *j->s != '"') {
			j->bad = 2;
			return;
		}
		free(*dst);
		*dst = json_text(j);
		return;
	}
	if (!j->bad && key_is(j, key, "minor")) {
		int64_t v;
		int is_int;
		if (json_null(j))
			return;
		if (!json_number(j, &v, &is_int) || !is_int)
			j->bad = 2;
		else
			c->dminor = v;
		return;
	}
	if (!j->bad)
		json_skip(j);
}

static void device_item(struct json *j, const char *key, void *arg) {
	(void)key;
	struct config *c = arg;
	json_ws(j);
	if (json_null(j))
		return;
	if (j->s >= j->end || *j->s != '{') {
		j->bad = 2;
		return;
	}
	c->dpath = c->dtype = NULL;
	c->dminor = 0;
	json_each(j, 1, device_member, c);
	if (!j->bad && c->dpath && c->dtype && strcmp(c->dtype, "c") == 0 && strncmp(c->dpath, "/dev/nvidia", 11) == 0) {
		const char *n = c->dpath + 11;
		int digits = *n != 0;
		for (const char *q = n; *q; q++)
			if (*q < '0' || *q > '9')
				digits = 0;
		if (digits) {
			int seen = 0;
			for (int i = 0; i < c->nminors; i++)
				if (c->minors[i] == c->dminor)
					seen = 1;
			if (!seen) {
				if (c->nminors == MAX_MINORS) {
					j->bad = 2;
				} else {
					if (c->nminors == c->minors_cap) {
						c->minors_cap = c->minors_cap ? c->minors_cap * 2 : 16;
						c->minors = xrealloc(c->minors, (size_t)c->minors_cap * sizeof *c->minors);
					}
					c->minors[c->nminors++] = c->dminor;
				}
			}
		}
	}
	free(c->dpath);
	free(c->dtype);
	c->dpath = c->dtype = NULL;
}

static void linux_member(struct json *j, const char *key, void *arg) {
	json_ws(j);
	if (key_is(j, key, "devices")) {
		if (json_null(j)) {
			((struct config *)arg)->nminors = 0; /* as encoding/json: null empties it */
			return;
		}
		if (j->s >= j->end || *j->s != '[') {
			j->bad = 2;
			return;
		}
		((struct config *)arg)->nminors = 0; /* the last "devices" counts */
		json_each(j, 0, device_item, arg);
		return;
	}
	if (!j->bad)
		json_skip(j);
}

static void config_member(struct json *j, const char *key, void *arg) {
	struct config *c = arg;
	json_ws(j);
	int root = key_is(j, key, "root"), lnx = !root && !j->bad && key_is(j, key, "linux");
	if (j->bad)
		return;
	if (root || lnx) {
		if (json_null(j)) {
			/* as encoding/json: null drops the object */
			if (root) {
				free(c->root);
				c->root = NULL;
			} else
				c->nminors = 0;
			return;
		}
		if (j->s >= j->end || *j->s != '{') {
			j->bad = 2;
			return;
		}
		if (root) {
			c->has_root = 1;
			json_each(j, 1, root_member, c);
		} else
			json_each(j, 1, linux_member, c);
		return;
	}
	json_skip(j);
}

/* ---- paths ---- */

/* clean_abs cleans an absolute path as Go's path.Clean does, in place; 0 when p is not
 * absolute. */
static int clean_abs(char *p) {
	if (p[0] != '/')
		return 0;
	char *out = p, *in = p;
	size_t n = 0;
	while (*in) {
		while (*in == '/')
			in++;
		if (!*in)
			break;
		char *seg = in;
		while (*in && *in != '/')
			in++;
		size_t len = (size_t)(in - seg);
		if (len == 1 && seg[0] == '.')
			continue;
		if (len == 2 && seg[0] == '.' && seg[1] == '.') {
			while (n > 0 && out[n - 1] != '/')
				n--;
			if (n > 0)
				n--;
			continue;
		}
		out[n++] = '/';
		memmove(out + n, seg, len);
		n += len;
	}
	if (n == 0)
		out[n++] = '/';
	out[n] = 0;
	return 1;
}

/* ---- the container root ---- */

static int g_root = -1;

/* in_root opens p inside the root (as if the root were "/", no magic links); -1 with
 * errno set. */
static int in_root(const char *p, int flags) {
	struct nv_open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC), .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
	for (int i = 0; i < OPENAT2_RETRIES; i++) {
		long fd = syscall(SYS_openat2, g_root, p, &how, sizeof how);
		if (fd >= 0)
			return (int)fd;
		if (errno != EAGAIN && errno != EINTR)
			return -1;
	}
	errno = EAGAIN;
	return -1;
}

/* pseudo_fs reports kernel filesystems whose files may act when read (the image's links
 * can lead into the container's /proc and /sys, mounted before the hook runs) */
static int pseudo_fs(unsigned long t) {
	static const unsigned long kinds[] = {
		0x9fa0,     /* proc */
		0x62656572, /* sysfs */
		0x64626720, /* debugfs */
		0x74726163, /* tracefs */
		0x73636673, /* securityfs */
		0x27e0eb,   /* cgroup */
		0x63677270, /* cgroup2 */
		0xcafe4a11, /* bpf */
		0x62656570, /* configfs */
		0xde5e81e4, /* efivarfs */
		0x6165676c, /* pstore */
		0x1cd1,     /* devpts */
		0xf97cff8c, /* selinuxfs */
		0x43415d53, /* smackfs */
		0x42494e4d, /* binfmt_misc */
		0x65735543, /* fusectl */
		0x6e667364, /* nfsd */
	};
	for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
		if (t == kinds[i])
			return 1;
	return 0;
}

/* open_read opens a regular file inside the root for reading, through an O_PATH handle
 * (no device or FIFO is ever opened); ENOENT is reported as -1 with errno ENOENT, and a
 * file that is not regular as -1 with errno EINVAL. */
static int open_read(const char *p, int want_dir) {
	int h = in_root(p, O_PATH);
	if (h < 0)
		return -1;
	struct stat st;
	if (fstat(h, &st) != 0) {
		close(h);
		return -1;
	}
	if (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) {
		close(h);
		errno = want_dir ? ENOTDIR : EINVAL;
		return -1;
	}
	/* a kernel file (procfs' kmsg, sysfs' attributes) may act when read */
	struct statfs sf;
	if (!want_dir && (fstatfs(h, &sf) != 0 || pseudo_fs((unsigned long)sf.f_type))) {
		close(h);
		errno = EINVAL;
		return -1;
	}
	char proc[64];
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", h);
	int fd = open(proc, (want_dir ? O_RDONLY | O_DIRECTORY : O_RDONLY | O_NOCTTY | O_NONBLOCK) | O_CLOEXEC);
	int e = errno;
	close(h);
	errno = e;
	return fd;
}

/* read_in_root reads a regular file inside the root of at most max bytes. */
static char *read_in_root(const char *p, size_t max, size_t *len) {
	int fd = open_read(p, 0);
	if (fd < 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) != 0 || (uint64_t)st.st_size > max) {
		close(fd);
		errno = EFBIG;
		return NULL;
	}
	char *data = read_fd(fd, max, len);
	int e = errno;
	close(fd);
	errno = e;
	return data;
}

/* folder handles: a folder's O_PATH handle inside the root, looked up once */
static struct dirent_h {
	char *path;
	int fd;
} *g_dirs;
static size_t g_ndirs, g_capdirs;

/* cached_dir is the handle of folder d when it was looked up or made before, else -1. */
static int cached_dir(const char *d) {
	for (size_t i = 0; i < g_ndirs; i++)
		if (strcmp(g_dirs[i].path, d) == 0)
			return g_dirs[i].fd;
	return -1;
}

/* cache_dir keeps fd as d's handle: the cache owns it. */
static void cache_dir(const char *d, int fd) {
	if (g_ndirs == g_capdirs) {
		g_capdirs = g_capdirs ? 2 * g_capdirs : 64;
		g_dirs = xrealloc(g_dirs, g_capdirs * sizeof *g_dirs);
	}
	char *p = strdup(d);
	if (!p)
		full("out of memory");
	g_dirs[g_ndirs].path = p;
	g_dirs[g_ndirs++].fd = fd;
}

/* forget_dirs drops the handles of p and of everything under it: a link made at p points
 * elsewhere than what was looked up there. */
static void forget_dirs(const char *p) {
	size_t n = strlen(p), w = 0;
	for (size_t i = 0; i < g_ndirs; i++) {
		const char *q = g_dirs[i].path;
		if (strncmp(q, p, n) == 0 && (q[n] == 0 || q[n] == '/' || n == 1)) {
			close(g_dirs[i].fd);
			free(g_dirs[i].path);
			continue;
		}
		g_dirs[w++] = g_dirs[i];
	}
	g_ndirs = w;
}

/* dir_handle returns an O_PATH handle of folder d inside the root, making it and its
 * parents (0755) when create is set; -1 with errno set. The handle belongs to the cache. */
static int dir_handle(const char *d, int create) {
	int fd = cached_dir(d);
	if (fd >= 0)
		return fd;
	fd = in_root(d, O_PATH | O_DIRECTORY);
	if (fd < 0 && errno == ENOENT && create) {
		/* the longest existing parent (one looked up or made before, or resolved inside
		 * the root), then each missing folder made and opened without following a link */
		char *p = strdup(d);
		if (!p)
			return -1;
		size_t end = strlen(p), cut;
		int parent, owned; /* owned: parent is not the cache's, and is closed here */
		for (;;) {
			size_t s = end;
			do
				s--;
			while (s > 0 && p[s] != '/');
			char save = p[s];
			p[s] = 0;
			const char *prefix = s == 0 ? "/" : p;
			parent = cached_dir(prefix);
			owned = parent < 0;
			if (owned)
				parent = in_root(prefix, O_PATH | O_DIRECTORY);
			p[s] = save;
			if (parent >= 0) {
				cut = s;
				break;
			}
			if (errno != ENOENT || s == 0) {
				int err = errno;
				free(p);
				errno = err;
				return -1;
			}
			end = s;
		}
		/* p[cut]: the slash before the first missing component */
		char *c = p + cut;
		while (*c) {
			c++;
			char *e = strchr(c, '/');
			if (e)
				*e = 0;
			int err = 0, next = -1;
			if (mkdirat(parent, c, 0755) != 0 && errno != EEXIST)
				err = errno;
			else if ((next = openat(parent, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
				err = errno;
			if (owned)
				close(parent);
			if (err) {
				free(p);
				errno = err;
				return -1;
			}
			parent = next;
			cache_dir(p, next); /* p ends at this folder */
			owned = 0;
			if (!e)
				break;
			*e = '/';
			c = e;
		}
		free(p);
		return parent;
	}
	if (fd < 0)
		return -1;
	cache_dir(d, fd);
	return fd;
}

/* split_abs splits a cleaned absolute path into its folder and name; 0 for "/". */
static int split_abs(const char *p, char *dir, size_t dsize, const char **name) {
	const char *slash = strrchr(p, '/');
	if (!slash || p[1] == 0)
		return 0;
	size_t n = slash == p ? 1 : (size_t)(slash - p);
	if (n >= dsize)
		return 0;
	memcpy(dir, p, n);
	dir[n] = 0;
	*name = slash + 1;
	return 1;
}

/* link_folder returns the handle of the folder of link (cleaned, absolute), made where
 * missing, and its last component in *name; it hands over where it cannot. */
static int link_folder(const char *link, const char **name) {
	char dir[PATH_MAX];
	if (!split_abs(link, dir, sizeof dir, name))
		full("a link at the root");
	int pfd = dir_handle(dir, 1);
	if (pfd < 0)
		full("a link's folder cannot be made");
	return pfd;
}

/* write_in_root replaces p (cleaned, absolute) with data, mode 0644: a new file beside
 * it, made with O_EXCL|O_NOFOLLOW and renamed over it. 0, or -1 with errno set. */
static int write_in_root(const char *p, const char *data, size_t len) {
	char dir[PATH_MAX];
	const char *name;
	if (!split_abs(p, dir, sizeof dir, &name)) {
		errno = EINVAL;
		return -1;
	}
	int pfd = dir_handle(dir, 0);
	if (pfd < 0)
		return -1;
	unsigned char rnd[6];
	if (syscall(SYS_getrandom, rnd, sizeof rnd, 0) != (long)sizeof rnd)
		return -1;
	char tmp[32];
	snprintf(tmp, sizeof tmp, ".nvbind-%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
	int fd = openat(pfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	size_t off = 0;
	int err = 0;
	while (off < len) {
		ssize_t w = write(fd, data + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			err = w < 0 ? errno : EIO;
			break;
		}
		off += (size_t)w;
	}
	if (!err && fchmod(fd, 0644) != 0)
		err = errno;
	if (close(fd) != 0 && !err)
		err = errno;
	if (!err && renameat(pfd, tmp, pfd, name) != 0)
		err = errno;
	if (err) {
		unlinkat(pfd, tmp, 0);
		errno = err;
		return -1;
	}
	return 0;
}

/* ---- ld.so.cache (the format of glibc's ldconfig; internal/ldcache) ---- */

#define LD_OLD_MAGIC "ld.so-1.7.0"
#define LD_NEW_MAGIC "glibc-ld.so.cache1.1"
#define LD_HEADER 48
#define LD_ENTRY 24
#define LD_OLD_HEADER 16
#define LD_OLD_ENTRY 12
#define LD_EXT_MAGIC 0xeaa42174u
#define LD_ISA_MASK 0x3ffull
#define LD_HWCAP_EXT (1ull << 62)
#define LD_GENERATOR "nvbind"

struct entry {
	const char *name, *path, *hwcaps;
	int32_t flags;
	uint32_t osversion;
	uint64_t hwcap;
};

struct cache {
	struct entry *e;
	size_t n;
};

static uint32_t le32(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t le64(const unsigned char *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }
static void put32(unsigned char *p, uint32_t v) {
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}
static void put64(unsigned char *p, uint64_t v) {
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static int cmp_u32(const void *a, const void *b) {
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* ld_parse parses a cache as ldcache.Parse does, with its budgets; data is NUL-terminated
 * one byte past len. Strings point into data. 0 when the cache is unusable. */
static int ld_parse(const unsigned char *data, size_t len, struct cache *c) {
	c->e = NULL;
	c->n = 0;
	if (len > LD_MAX_SIZE)
		return 0;
	size_t base = 0;
	if (len >= strlen(LD_OLD_MAGIC) && memcmp(data, LD_OLD_MAGIC, strlen(LD_OLD_MAGIC)) == 0) {
		if (len < LD_OLD_HEADER)
			return 0;
		uint64_t n = le32(data + 12);
		if (n > (len - LD_OLD_HEADER) / LD_OLD_ENTRY)
			return 0;
		base = (LD_OLD_HEADER + (size_t)n * LD_OLD_ENTRY + 7) & ~(size_t)7;
	}
	if (base > len || len - base < LD_HEADER || memcmp(data + base, LD_NEW_MAGIC, strlen(LD_NEW_MAGIC)) != 0)
		return 0;
	const unsigned char *h = data + base;
	size_t hlen = len - base;
	if (h[28] != 0 && (h[28] & 3) != 2)
		return 0;
	uint64_t n = le32(h + 20);
	if (n > LD_MAX_ENTRIES || n > (hlen - LD_HEADER) / LD_ENTRY)
		return 0;

	/* the extension directory: generator and glibc-hwcaps */
	uint32_t extoff = le32(h + 32);
	const unsigned char *hw = NULL;
	uint64_t hwlen = 0, hwoff = 0;
	if (extoff != 0) {
		if (extoff % 4 != 0 || (uint64_t)extoff + 8 > len || le32(data + extoff) != LD_EXT_MAGIC)
			return 0;
		uint64_t count = le32(data + extoff + 4);
		if (count > (len - extoff - 8) / 16)
			return 0;
		for (uint64_t i = 0; i < count; i++) {
			const unsigned char *s = data + extoff + 8 + i * 16;
			uint32_t tag = le32(s);
			uint64_t start = le32(s + 8), size = le32(s + 12);
			if (start + size > len)
				return 0;
			if (tag == 1) {
				hw = data + start;
				hwlen = size;
				hwoff = start;
			}
		}
		if (hwoff % 4 != 0 || hwlen % 4 != 0)
			hw = NULL, hwlen = 0;
		if (hwlen / 4 > LD_MAX_HWCAPS)
			return 0;
	}
	size_t nhw = (size_t)(hwlen / 4);
	uint32_t hwcaps[LD_MAX_HWCAPS];
	for (size_t i = 0; i < nhw; i++) {
		hwcaps[i] = le32(hw + 4 * i);
		if (hwcaps[i] >= len)
			return 0;
	}

	/* every string offset, checked once in order: each ends in NUL within the limit */
	size_t noffs = 2 * (size_t)n + nhw;
	uint32_t *offs = xmalloc(noffs * sizeof *offs);
	size_t k = 0;
	const unsigned char *tab = h + LD_HEADER;
	for (uint64_t i = 0; i < n; i++) {
		for (int f = 0; f < 2; f++) {
			uint64_t abs = (uint64_t)base + le32(tab + i * LD_ENTRY + 4 + 4 * f);
			if (abs >= len) {
				free(offs);
				return 0;
			}
			offs[k++] = (uint32_t)abs;
		}
	}
	for (size_t i = 0; i < nhw; i++)
		offs[k++] = hwcaps[i];
	qsort(offs, k, sizeof *offs, cmp_u32);
	int64_t nul = -1;
	for (size_t i = 0; i < k; i++) {
		if (nul < (int64_t)offs[i]) {
			size_t window = len - offs[i];
			if (window > LD_MAX_PATH + 1)
				window = LD_MAX_PATH + 1;
			const unsigned char *z = memchr(data + offs[i], 0, window);
			if (!z) {
				free(offs);
				return 0;
			}
			nul = z - data;
		}
	}
	free(offs);

	const char *names[LD_MAX_HWCAPS];
	for (size_t i = 0; i < nhw; i++) {
		names[i] = (const char *)data + hwcaps[i];
		if (strlen(names[i]) > LD_MAX_NAME)
			return 0;
		if (i > 0 && strcmp(names[i - 1], names[i]) >= 0)
			return 0;
	}

	c->e = xmalloc((size_t)n * sizeof *c->e);
	c->n = (size_t)n;
	uint64_t total = 0;
	for (uint64_t i = 0; i < n; i++) {
		const unsigned char *e = tab + i * LD_ENTRY;
		struct entry *x = &c->e[i];
		x->name = (const char *)data + base + le32(e + 4);
		x->path = (const char *)data + base + le32(e + 8);
		x->hwcaps = "";
		size_t nl = strlen(x->name);
		if (nl > LD_MAX_NAME)
			goto bad;
		total += nl + strlen(x->path);
		if (total > LD_MAX_STRING_BYTES)
			goto bad;
		x->flags = (int32_t)le32(e);
		x->osversion = le32(e + 12);
		x->hwcap = le64(e + 16);
		if (((x->hwcap >> 32) & ~LD_ISA_MASK) == LD_HWCAP_EXT >> 32) {
			uint32_t idx = (uint32_t)x->hwcap;
			if (idx >= nhw)
				goto bad;
			x->hwcaps = names[idx];
			x->hwcap &= ~0xffffffffull;
		}
	}
	return 1;
bad:
	free(c->e);
	c->e = NULL;
	c->n = 0;
	return 0;
}

/* the loader's order (ldcache.Compare and compareEntries) */

static int cchar(unsigned char c) {
#if defined(__x86_64__) || defined(__i386__)
	return (int)(signed char)c;
#else
	return (int)c;
#endif
}

static int isdig(char c) { return c >= '0' && c <= '9'; }

static int ld_compare(const char *a, const char *b) {
	while (*a) {
		char ca = *a, cb = *b;
		if (isdig(ca)) {
			if (!isdig(cb))
				return 1;
			int32_t va = 0, vb = 0;
			for (; isdig(*a); a++)
				va = (int32_t)((uint32_t)va * 10 + (uint32_t)(*a - '0'));
			for (; isdig(*b); b++)
				vb = (int32_t)((uint32_t)vb * 10 + (uint32_t)(*b - '0'));
			if (va != vb) /* Go's int32 difference, which wraps: its sign */
				return (int32_t)((uint32_t)va - (uint32_t)vb) < 0 ? -1 : 1;
			continue;
		}
		if (isdig(cb))
			return -1;
		if (ca != cb)
			return cchar((unsigned char)ca) - cchar((unsigned char)cb);
		a++;
		b++;
	}
	return -cchar((unsigned char)*b);
}

/* long_number reports a run of more than 9 digits */
static int long_number(const char *s) {
	int run = 0;
	for (; *s; s++) {
		run = isdig(*s) ? run + 1 : 0;
		if (run > 9)
			return 1;
	}
	return 0;
}

static int popcount64(uint64_t v) {
	int n = 0;
	for (; v; v &= v - 1)
		n++;
	return n;
}

static int cmp3(uint64_t a, uint64_t b) { return a < b ? -1 : a > b; }

static int entry_compare(const struct entry *a, const struct entry *b) {
	int c = ld_compare(b->name, a->name);
	if (c)
		return c;
	if (a->flags != b->flags)
		return b->flags < a->flags ? -1 : 1;
	if (a->hwcaps[0] && !b->hwcaps[0])
		return -1;
	if (!a->hwcaps[0] && b->hwcaps[0])
		return 1;
	c = strcmp(a->hwcaps, b->hwcaps);
	if (c)
		return c < 0 ? -1 : 1;
	uint64_t ha = a->hwcaps[0] ? 0 : a->hwcap, hb = b->hwcaps[0] ? 0 : b->hwcap;
	if ((c = cmp3((uint64_t)popcount64(hb), (uint64_t)popcount64(ha))))
		return c;
	if ((c = cmp3(hb, ha)))
		return c;
	return cmp3(b->osversion, a->osversion);
}

static void merge_sort(struct entry *a, struct entry *tmp, size_t n) {
	if (n < 2)
		return;
	size_t m = n / 2;
	merge_sort(a, tmp, m);
	merge_sort(a + m, tmp, n - m);
	if (entry_compare(&a[m - 1], &a[m]) <= 0)
		return;
	size_t i = 0, j = m, k = 0;
	while (i < m && j < n)
		tmp[k++] = entry_compare(&a[j], &a[i]) < 0 ? a[j++] : a[i++];
	while (i < m)
		tmp[k++] = a[i++];
	while (j < n)
		tmp[k++] = a[j++];
	memcpy(a, tmp, n * sizeof *a);
}

static uint64_t hash_str(const char *s) {
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

/* entries are one when name, path and glibc-hwcaps name are */
static uint64_t entry_hash(const struct entry *e) { return hash_str(e->name) ^ hash_str(e->path) * 31 ^ hash_str(e->hwcaps) * 131; }

static int same_entry(const struct entry *a, const struct entry *b) {
	return strcmp(a->name, b->name) == 0 && strcmp(a->path, b->path) == 0 && strcmp(a->hwcaps, b->hwcaps) == 0;
}

/* a use of a string in the output, and where its offset goes */
struct strref {
	const char *s;
	size_t len;
	uint32_t *off;
};

/* cmp_ref orders by reversed bytes as Go's compareReversed does */
static int cmp_ref(const void *pa, const void *pb) {
	const struct strref *a = pa, *b = pb;
	size_t i = a->len, j = b->len;
	while (i > 0 && j > 0) {
		i--, j--;
		if (a->s[i] != b->s[j])
			return (int)(unsigned char)b->s[j] - (int)(unsigned char)a->s[i];
	}
	return (int)b->len - (int)a->len;
}

static int cmp_str(const void *pa, const void *pb) { return strcmp(*(const char *const *)pa, *(const char *const *)pb); }

/* ld_encode writes the cache as ldcache.Encode does, byte for byte. */
static unsigned char *ld_encode(const struct entry *e, size_t n, size_t *outlen) {
	/* distinct glibc-hwcaps names, sorted */
	const char **hw = xmalloc((n + 1) * sizeof *hw);
	size_t nhw = 0;
	for (size_t i = 0; i < n; i++)
		if (e[i].hwcaps[0])
			hw[nhw++] = e[i].hwcaps;
	qsort(hw, nhw, sizeof *hw, cmp_str);
	size_t w = 0;
	for (size_t i = 0; i < nhw; i++)
		if (w == 0 || strcmp(hw[w - 1], hw[i]) != 0)
			hw[w++] = hw[i];
	nhw = w;

	/* distinct strings, tail-merged: every use of a string (names, paths, glibc-hwcaps
	 * names) sorted by reversed bytes, which also brings equal strings together (no hash
	 * an image could make collide); a string that ends the distinct one before it shares
	 * its bytes */
	size_t nref = 2 * n + nhw;
	struct strref *refs = xmalloc((nref + 1) * sizeof *refs);
	uint32_t *offs = xmalloc((nref + 1) * sizeof *offs); /* name, path of each entry, then hwcaps */
	for (size_t i = 0; i < n; i++) {
		refs[2 * i] = (struct strref){e[i].name, strlen(e[i].name), &offs[2 * i]};
		refs[2 * i + 1] = (struct strref){e[i].path, strlen(e[i].path), &offs[2 * i + 1]};
	}
	for (size_t i = 0; i < nhw; i++)
		refs[2 * n + i] = (struct strref){hw[i], strlen(hw[i]), &offs[2 * n + i]};
	qsort(refs, nref, sizeof *refs, cmp_ref);
	size_t tlen = 0;
	const struct strref *prev = NULL; /* the distinct string before, and its offset */
	uint32_t prevoff = 0;
	for (size_t i = 0; i < nref; i++) {
		const struct strref *r = &refs[i];
		if (prev && r->len == prev->len && memcmp(r->s, prev->s, r->len) == 0) {
			*r->off = prevoff;
			continue;
		}
		if (prev && r->len <= prev->len && memcmp(prev->s + prev->len - r->len, r->s, r->len) == 0)
			prevoff += (uint32_t)(prev->len - r->len);
		else {
			prevoff = (uint32_t)tlen;
			tlen += r->len + 1;
		}
		*r->off = prevoff;
		prev = r;
	}
	uint32_t stroff = (uint32_t)(LD_HEADER + LD_ENTRY * n);
	uint32_t extoff = (stroff + (uint32_t)tlen + 3) & ~3u;
	uint32_t sections = nhw ? 2 : 1;
	uint32_t hwoff = extoff + 8 + 16 * sections;
	uint32_t genoff = hwoff + 4 * (uint32_t)nhw;
	size_t total = genoff + strlen(LD_GENERATOR);
	unsigned char *out = calloc(1, total);
	if (!out)
		full("out of memory");
	memcpy(out, LD_NEW_MAGIC, strlen(LD_NEW_MAGIC));
	put32(out + 20, (uint32_t)n);
	put32(out + 24, (uint32_t)tlen);
	out[28] = 2;
	put32(out + 32, extoff);
	for (size_t i = 0; i < n; i++) {
		unsigned char *b = out + LD_HEADER + i * LD_ENTRY;
		put32(b, (uint32_t)e[i].flags);
		put32(b + 4, stroff + offs[2 * i]);
		put32(b + 8, stroff + offs[2 * i + 1]);
		put32(b + 12, e[i].osversion);
		uint64_t hwcap = e[i].hwcap;
		if (e[i].hwcaps[0]) {
			size_t lo = 0, hi = nhw; /* hw is sorted and holds it */
			while (lo < hi) {
				size_t mid = lo + (hi - lo) / 2;
				if (strcmp(hw[mid], e[i].hwcaps) < 0)
					lo = mid + 1;
				else
					hi = mid;
			}
			size_t idx = lo;
			hwcap = LD_HWCAP_EXT | (e[i].hwcap & (LD_ISA_MASK << 32)) | (uint64_t)idx;
		}
		put64(b + 16, hwcap);
	}
	for (size_t i = 0; i < nref; i++) /* shared bytes are the same bytes: copy every one */
		memcpy(out + stroff + *refs[i].off, refs[i].s, refs[i].len + 1);
	unsigned char *x = out + extoff;
	put32(x, LD_EXT_MAGIC);
	put32(x + 4, sections);
	unsigned char *s = x + 8;
	put32(s, 0);
	put32(s + 8, genoff);
	put32(s + 12, (uint32_t)strlen(LD_GENERATOR));
	if (nhw) {
		s += 16;
		put32(s, 1);
		put32(s + 8, hwoff);
		put32(s + 12, 4 * (uint32_t)nhw);
		for (size_t i = 0; i < nhw; i++)
			put32(out + hwoff + 4 * i, stroff + offs[2 * n + i]);
	}
	memcpy(out + genoff, LD_GENERATOR, strlen(LD_GENERATOR));
	free(hw);
	free(refs);
	free(offs);
	*outlen = total;
	return out;
}

/* ---- the actions ---- */

struct link {
	char *target, *link;
};

struct args {
	struct link *links, *flinks;
	size_t nlinks, nflinks;
	char **folders;
	size_t nfolders;
	const char *folder_entries;
	int protect, app_profile, enter_ns; /* enter_ns: the flag's index in argv, 0: none */
	const char *host_params, *driver_version;
};

/* flag_value takes a flag's value: --name=value or --name value. */
static const char *flag_value(int argc, char **argv, int *i, const char *arg, size_t namelen) {
	if (arg[namelen] == '=')
		return arg + namelen + 1;
	if (*i + 1 >= argc)
		full("a flag without its value");
	return argv[++*i];
}

/* same_ns reports whether namespace handle fd is the namespace at path */
static int same_ns(int fd, const char *path) {
	struct stat a, b;
	return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* enter_container enters the namespaces a createContainer hook runs in, from a
 * createRuntime hook on the host: the container's user namespace where it has one of its
 * own (as its root, as the runtime's init is), then its mount namespace, where the
 * runtime has made the container's mounts, not yet pivoted into (the root is at its
 * bundle path there) */
static void enter_container(int64_t pid) {
	if (pid <= 0 || pid > INT_MAX)
		full("a state without the container's pid");
	open_full(); /* by handle from here on */
	char p[64];
	/* a process of the host's own (pid 1, as the flag at createContainer gives: runc gives
	 * the pid in the container's namespace there) is no container being created; the
	 * container's process may be the runtime's grandchild (crun forks twice with a user
	 * namespace), so its parent is not compared with this hook's */
	snprintf(p, sizeof p, "/proc/%lld/stat", (long long)pid);
	int sfd = open(p, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	char stat[1024];
	ssize_t sn = sfd >= 0 ? read(sfd, stat, sizeof stat - 1) : -1;
	if (sfd >= 0)
		close(sfd);
	long ppid = -1;
	if (sn > 0) {
		stat[sn] = 0;
		char *end = strrchr(stat, ')'); /* the name may hold anything but is in parentheses */
		if (end && end[1] == ' ' && end[2] && end[3] == ' ')
			ppid = strtol(end + 4, NULL, 10);
	}
	if (ppid <= 0 || pid == 1)
		die("--enter-mount-namespace: the state's pid %lld is no container being created: the hook runs at createRuntime",
		    (long long)pid);
	snprintf(p, sizeof p, "/proc/%lld/ns/mnt", (long long)pid);
	int mfd = open(p, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (mfd < 0)
		full("the container's mount namespace cannot be opened");
	snprintf(p, sizeof p, "/proc/%lld/ns/user", (long long)pid);
	int ufd = open(p, O_RDONLY | O_CLOEXEC | O_NOCTTY); /* none without user namespaces */
	if (ufd >= 0 && !same_ns(ufd, "/proc/self/ns/user")) {
		if (setns(ufd, CLONE_NEWUSER) != 0)
			full("the container's user namespace cannot be entered");
		/* from here the full hook could not follow, nor start where this one is: any
		 * failure to enter is the end */
		g_entered = 1;
		(void)setgroups(0, NULL); /* refused where the runtime denied setgroups: no matter */
		if (setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0)
			die("--enter-mount-namespace: the container's user namespace has no root: %s", strerror(errno));
	}
	if (ufd >= 0)
		close(ufd);
	if (!same_ns(mfd, "/proc/self/ns/mnt") && setns(mfd, CLONE_NEWNS) != 0) {
		if (g_entered)
			die("--enter-mount-namespace: the container's mount namespace: %s", strerror(errno));
		full("the container's mount namespace cannot be entered");
	}
	close(mfd);
	g_entered = 1;
	struct statfs sf;
	if (statfs("/proc/self/fd", &sf) != 0 || sf.f_type != 0x9fa0)
		die("--enter-mount-namespace: no procfs at /proc in the container's mount namespace");
}

static void parse_args(int argc, char **argv, struct args *a) {
	if (argc < 3 || strcmp(argv[1], "hook") != 0 || strcmp(argv[2], "all") != 0)
		full("not hook all");
	if (argc > MAX_ARGS)
		full("too many arguments");
	a->links = xmalloc((size_t)argc * sizeof *a->links);
	a->flinks = xmalloc((size_t)argc * sizeof *a->flinks);
	a->folders = xmalloc((size_t)argc * sizeof *a->folders);
	for (int i = 3; i < argc; i++) {
		const char *arg = argv[i];
		if (strncmp(arg, "--", 2) != 0)
			full("an argument that is no flag");
		const char *name = arg + 2;
		size_t len = strcspn(name, "=");
#define IS(f) (len == strlen(f) && strncmp(name, f, len) == 0)
		if (IS("link") || IS("folder-link")) {
			const char *v = flag_value(argc, argv, &i, name, len);
			const char *sep = strstr(v, "::");
			if (!sep || sep == v || !sep[2] || sep[2] != '/')
				full("a link the full hook refuses");
			struct link *l = IS("link") ? &a->links[a->nlinks++] : &a->flinks[a->nflinks++];
			l->target = strndup(v, (size_t)(sep - v));
			l->link = strdup(sep + 2);
			if (!l->target || !l->link)
				full("out of memory");
			if (!clean_abs(l->link) || strcmp(l->link, "/") == 0)
				full("a link the full hook refuses");
		} else if (IS("folder")) {
			char *f = strdup(flag_value(argc, argv, &i, name, len));
			if (!f)
				full("out of memory");
			a->folders[a->nfolders++] = f;
		} else if (IS("folder-entries")) {
			a->folder_entries = flag_value(argc, argv, &i, name, len);
		} else if (IS("host-params")) {
			a->host_params = flag_value(argc, argv, &i, name, len);
		} else if (IS("host-driver-version")) {
			a->driver_version = flag_value(argc, argv, &i, name, len);
		} else if (IS("protect-device-nodes") || IS("app-profile") || IS("enter-mount-namespace")) {
			int *b = IS("app-profile") ? &a->app_profile : IS("protect-device-nodes") ? &a->protect : &a->enter_ns;
			if (name[len] == 0 || strcmp(name + len, "=true") == 0)
				*b = b == &a->enter_ns ? i : 1;
			else
				full("a boolean flag with a value");
		} else
			full("a flag it does not know");
#undef IS
	}
}

/* put_link makes name, in folder pfd, the link l where nothing is there (AT_MADE); else it
 * says what is there: a link, with its target in buf (AT_LINK), something that is not a
 * link (AT_OTHER), or, gone meanwhile, nothing (AT_NONE). It hands over where it cannot. */
enum { AT_MADE, AT_LINK, AT_OTHER, AT_NONE };
static int put_link(int pfd, const char *name, const struct link *l, char *buf, size_t size) {
	if (symlinkat(l->target, pfd, name) == 0) {
		forget_dirs(l->link);
		return AT_MADE;
	}
	if (errno != EEXIST)
		full("a link cannot be made");
	ssize_t n = readlinkat(pfd, name, buf, size - 1);
	if (n >= 0) {
		buf[n] = 0;
		return AT_LINK;
	}
	if (errno == EINVAL)
		return AT_OTHER;
	if (errno != ENOENT)
		full("a link cannot be read");
	return AT_NONE;
}

/* relink makes name, in folder pfd, the link l, replacing the link there when replace is
 * set; it hands over where it cannot. */
static void relink(int pfd, const char *name, const struct link *l, int replace) {
	if (replace && unlinkat(pfd, name, 0) != 0)
		full("a link cannot be replaced");
	if (symlinkat(l->target, pfd, name) != 0)
		full("a link cannot be made");
	forget_dirs(l->link);
}

#ifndef ST_RDONLY
#define ST_RDONLY 1 /* statfs's f_flags: a read-only mount (glibc has it in sys/statvfs.h) */
#endif
#ifndef SYS_statx
#if defined(__x86_64__)
#define SYS_statx 332
#elif defined(__aarch64__)
#define SYS_statx 291
#endif
#endif

/* mount_of says what mount a handle is on: statx's mount ID (*mnt set; Linux 5.8), else
 * its file system's device, which tells a layout (a tmpfs of its own) from the root's.
 * -1 where statx fails. */
static int mount_of(int fd, uint64_t *id, int *mnt) {
	uint64_t b[32] = {0}; /* struct statx, 256 bytes: stx_mask at 0, stx_dev_major and
	                       * stx_dev_minor at 136 and 140, stx_mnt_id at 144 */
	uint32_t mask, dev[2];
	if (syscall(SYS_statx, fd, "", AT_EMPTY_PATH, 0x17ffU /* STATX_BASIC_STATS|STATX_MNT_ID */, b) != 0)
		return -1;
	memcpy(&mask, b, sizeof mask);
	memcpy(dev, (char *)b + 136, sizeof dev);
	*mnt = (mask & 0x1000U) != 0;
	*id = *mnt ? b[18] : ((uint64_t)dev[0] << 32 | dev[1]);
	return 0;
}

/* foreign_ro: folder handle pfd is on a read-only mount other than the root's: a layout
 * (another one's, linked there by its hook) or a read-only volume, which is not the hook's
 * to change. As the full hook's inForeignReadOnly. */
static int foreign_ro(int pfd) {
	struct statfs sf;
	uint64_t m, r;
	int mm, rm;
	if (fstatfs(pfd, &sf) != 0 || !(sf.f_flags & ST_RDONLY))
		return 0;
	/* one kernel answers both: mount IDs for both, or devices for both */
	return mount_of(pfd, &m, &mm) == 0 && mount_of(g_root, &r, &rm) == 0 && mm == rm && m != r;
}

/* other_layout: link target t is folder in another layout mounted beside target's
 * (target with its layout's name, the component before folder, changed): another hook of
 * the container linked it there, and the spec generator links a folder whole only from a
 * layout that holds all the driver has in it, so ours are there too. As the full hook's
 * otherLayout. */
static int other_layout(const char *t, const char *target, const char *folder) {
	size_t tl = strlen(target), fl = strlen(folder), bl = strlen(t);
	if (tl < fl || strcmp(target + tl - fl, folder) != 0)
		return 0;
	size_t s = tl - fl; /* target[0:s] is the layout's folder; s: after its last slash */
	while (s > 0 && target[s - 1] != '/')
		s--;
	if (s == 0 || s == tl - fl)
		return 0;
	if (bl < s + fl || strncmp(t, target, s) != 0 || strcmp(t + bl - fl, folder) != 0)
		return 0;
	const char *x = t + s;
	size_t xl = bl - s - fl;
	return xl > 0 && !(xl == 1 && x[0] == '.') && !(xl == 2 && x[0] == '.' && x[1] == '.') && !memchr(x, '/', xl);
}

/* version_parse parses a dotted version as internal/version does: at most 4 parts, each
 * a number up to 1<<20. */
static int version_parse(const char *v, long parts[4], int *n) {
	*n = 0;
	for (;;) {
		if (*n == 4 || !isdig(*v))
			return 0;
		long x = 0;
		for (; isdig(*v); v++) {
			x = x * 10 + (*v - '0');
			if (x > 1 << 20)
				return 0;
		}
		parts[(*n)++] = x;
		if (*v == 0)
			return 1;
		if (*v++ != '.')
			return 0;
	}
}

static int version_compare(const long *a, int na, const long *b, int nb) {
	for (int i = 0; i < na || i < nb; i++) {
		long x = i < na ? a[i] : 0, y = i < nb ? b[i] : 0;
		if (x != y)
			return x < y ? -1 : 1;
	}
	return 0;
}

/* compat_newer reports whether the image's /usr/local/cuda/compat holds a libcuda newer
 * than the host's driver: then the full hook puts that folder first in the ld cache. */
static int compat_newer(const char *host) {
	long hv[4];
	int hn;
	if (!version_parse(host, hv, &hn))
		full("a host driver version it cannot read");
	int fd = open_read("/usr/local/cuda/compat", 1);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		full("the image's CUDA compat folder cannot be listed");
	}
	DIR *d = fdopendir(fd);
	if (!d) {
		close(fd);
		full("the image's CUDA compat folder cannot be listed");
	}
	int newer = 0, count = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (++count > MAX_FOLDER_ENTRIES + 2)
			full("a large CUDA compat folder");
		const char *p = de->d_name;
		if (strncmp(p, "libcuda.so.", 11) != 0)
			continue;
		/* ^libcuda\.so\.(\d+(\.\d+)+)$ */
		const char *v = p + 11;
		int dots = 0, ok = isdig(*v);
		for (const char *q = v; *q && ok; q++) {
			if (*q == '.') {
				dots++;
				ok = isdig(q[1]);
			} else if (!isdig(*q))
				ok = 0;
		}
		long cv[4];
		int cn;
		if (!ok || dots == 0 || !version_parse(v, cv, &cn))
			continue;
		if (version_compare(cv, cn, hv, hn) > 0)
			newer = 1;
	}
	closedir(d);
	return newer;
}

/* modify_params rewrites "ModifyDeviceFiles: 1" lines to 0 as the full hook's pattern
 * (?m)^ModifyDeviceFiles:[ \t]*1[ \t]*$ does; 0 when nothing matches. */
static int modify_params(const char *in, size_t len, char **out, size_t *outlen) {
	static const char key[] = "ModifyDeviceFiles:";
	static const char repl[] = "ModifyDeviceFiles: 0";
	char *o = xmalloc(len + len / 16 + 32); /* a matching line (19 bytes or more) grows by 1 */
	size_t n = 0;
	int changed = 0;
	for (size_t i = 0; i <= len;) {
		const char *line = in + i;
		const char *nl = memchr(line, '\n', len - i);
		size_t ll = nl ? (size_t)(nl - line) : len - i;
		int match = 0;
		if (ll >= sizeof key - 1 && memcmp(line, key, sizeof key - 1) == 0) {
			size_t k = sizeof key - 1;
			while (k < ll && (line[k] == ' ' || line[k] == '\t'))
				k++;
			if (k < ll && line[k] == '1') {
				k++;
				while (k < ll && (line[k] == ' ' || line[k] == '\t'))
					k++;
				match = k == ll;
			}
		}
		if (match) {
			memcpy(o + n, repl, sizeof repl - 1);
			n += sizeof repl - 1;
			changed = 1;
		} else {
			memcpy(o + n, line, ll);
			n += ll;
		}
		if (!nl)
			break;
		o[n++] = '\n';
		i += ll + 1;
	}
	*out = o;
	*outlen = n;
	return changed;
}

/* protect hides ModifyDeviceFiles: 1 from the container: a read-only copy of the host's
 * params with 0, bound over the container's /proc/driver/nvidia/params. */
static void protect(const char *host_params, const char *params, size_t plen) {
	(void)host_params;
	char *mod;
	size_t mlen;
	if (!modify_params(params, plen, &mod, &mlen)) {
		free(mod);
		return;
	}
	const char *target = "/proc/driver/nvidia/params";
	int h = in_root(target, O_PATH);
	if (h < 0) {
		if (errno == ENOENT) {
			say( "disable-device-node-modification: the container has no %s: nothing to do\n", target);
			free(mod);
			return;
		}
		full("the container's params cannot be opened");
	}
	struct stat st;
	if (fstat(h, &st) != 0 || !S_ISREG(st.st_mode))
		full("the container's params is not a regular file");
	/* the copy: a new read-only file in a new folder of this call's own (mode 0700) on a
	 * host tmpfs; /dev/shm where /run is not the hook's (in a container's user namespace) */
	char dir[64] = "", src[PATH_MAX] = "";
	int fd = -1;
	static const char *const tmpls[] = {"/run/nvbind-params-XXXXXX", "/dev/shm/nvbind-params-XXXXXX"};
	for (size_t i = 0; i < sizeof tmpls / sizeof *tmpls && fd < 0; i++) {
		snprintf(dir, sizeof dir, "%s", tmpls[i]);
		if (!mkdtemp(dir))
			continue;
		snprintf(src, sizeof src, "%s/params", dir);
		fd = open(src, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0) {
			rmdir(dir);
			continue;
		}
		if (write(fd, mod, mlen) != (ssize_t)mlen || fchmod(fd, 0444) != 0) {
			close(fd);
			unlink(src);
			rmdir(dir);
			full("the params copy cannot be written");
		}
	}
	free(mod);
	if (fd < 0)
		full("no private folder for the params copy");
	/* bound by its handle: the name could be another's by now where the folder's owner is
	 * not root alone (in a container's user namespace, its root's host uid) */
	char from[64], dst[64];
	snprintf(from, sizeof from, "/proc/self/fd/%d", fd);
	snprintf(dst, sizeof dst, "/proc/self/fd/%d", h);
	int bound = mount(from, dst, NULL, MS_BIND, NULL) == 0;
	close(fd);
	unlink(src); /* the mount keeps the file */
	rmdir(dir);
	if (!bound)
		full("the params copy cannot be bound");
	close(h);
	int nh = in_root(target, O_PATH);
	if (nh < 0)
		die("disable-device-node-modification: reopen %s: %s", target, strerror(errno));
	snprintf(dst, sizeof dst, "/proc/self/fd/%d", nh);
	if (mount("", dst, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
		die("disable-device-node-modification: remount %s read-only: %s", target, strerror(errno));
	close(nh);
}

/* load_bundle reads the state's bundle and its config.json: root.path (into root), and
 * the GPUs' minors for the application profile. It hands over where it cannot. */
static struct config *load_bundle(const char *sbuf, size_t slen, struct state *st, char *root) {
	struct json j = {sbuf, sbuf + slen, 0, 0};
	json_ws(&j);
	if (j.s >= j.end || *j.s != '{')
		full("a state that is no JSON object");
	json_each(&j, 1, state_member, st);
	if (!json_done(&j) || !st->bundle || st->bundle[0] != '/')
		full("a state it cannot use");
	char p[PATH_MAX];
	if ((size_t)snprintf(p, sizeof p, "%s/config.json", st->bundle) >= sizeof p)
		full("a long bundle path");
	int cfd = open(p, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (cfd < 0)
		full("no bundle config");
	struct stat cst;
	if (fstat(cfd, &cst) != 0 || !S_ISREG(cst.st_mode))
		full("a bundle config that is no regular file");
	size_t clen;
	char *cbuf = read_fd(cfd, MAX_CONFIG, &clen);
	close(cfd);
	if (!cbuf)
		full("a bundle config it cannot read");
	struct config *cfg = calloc(1, sizeof *cfg);
	if (!cfg)
		full("out of memory");
	j = (struct json){cbuf, cbuf + clen, 0, 0};
	json_ws(&j);
	if (j.s >= j.end || *j.s != '{')
		full("a bundle config that is no JSON object");
	json_each(&j, 1, config_member, cfg);
	if (!json_done(&j) || !cfg->root || !cfg->root[0])
		full("a bundle config it cannot use");
	if ((size_t)(cfg->root[0] == '/' ? snprintf(root, PATH_MAX, "%s", cfg->root)
					 : snprintf(root, PATH_MAX, "%s/%s", st->bundle, cfg->root)) >= PATH_MAX)
		full("a long root path");
	clean_abs(root);
	return cfg;
}

/* load_params reads the host's params file (NULL where there is none). */
static char *load_params(const char *host_params, size_t *plen) {
	char *params = NULL;
	int pfd = open(host_params, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (pfd >= 0) {
		params = read_fd(pfd, MAX_SMALL, plen);
		close(pfd);
		if (!params)
			full("the host's params cannot be read");
	} else if (errno != ENOENT)
		full("the host's params cannot be opened");
	return params;
}

static int cmp_i64(const void *a, const void *b) {
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv, char **envp) {
	g_argv = argv;
	g_envp = envp;
	const char *t = getenv("NVBIND_HOOK_TRACE");
	g_trace = t && strcmp(t, "1") == 0;
	/* the state first: the full hook gets it as it was */
	size_t slen;
	char *sbuf = read_fd(0, MAX_STATE, &slen);
	if (!sbuf) /* never the full hook with what is left of it */
		die("the OCI state on stdin: %s", errno == EFBIG ? "larger than 1 MiB" : strerror(errno));
	g_state = sbuf;
	g_state_len = slen;
	/* files are reopened through /proc/self/fd: it must be the kernel's procfs */
	struct statfs sf;
	if (statfs("/proc/self/fd", &sf) != 0 || sf.f_type != 0x9fa0 /* PROC_SUPER_MAGIC */)
		full("no procfs at /proc");
	/* the arguments (which hand over before any change where the full hook alone takes
	 * them) */
	struct args a = {0};
	parse_args(argc, argv, &a);
	g_enter_arg = a.enter_ns;
	struct state st = {0};
	struct config *cfg = NULL;
	char root[PATH_MAX];
	char *params = NULL;
	size_t plen = 0;
	const char *host_params = a.host_params && a.host_params[0] ? a.host_params : "/proc/driver/nvidia/params";
	if (a.enter_ns) {
		/* at createRuntime: what is read by a host path, read on the host; then into the
		 * container's namespaces before anything else, so that the full hook, where this
		 * one hands over, starts in them too */
		cfg = load_bundle(g_state, g_state_len, &st, root);
		if (a.protect)
			params = load_params(host_params, &plen);
		if (st.stopped) {
			fputs("the container is stopped (runc runs createRuntime hooks on a restore from a checkpoint, once its files are in place): nothing to do\n", stderr);
			return 0;
		}
		struct stat want, got;
		if (stat(root, &want) != 0)
			full("the container root cannot be opened");
		enter_container(st.pid);
		/* the root at the same path in the container's namespace, not yet pivoted into:
		 * the same folder, and not the namespace's own root; in a namespace pivoted
		 * already, the path would be the image's */
		g_root = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (g_root < 0)
			die("--enter-mount-namespace: open %s in the container's mount namespace: %s", root, strerror(errno));
		struct stat top;
		if (fstat(g_root, &got) != 0 || got.st_dev != want.st_dev || got.st_ino != want.st_ino || stat("/", &top) != 0 ||
		    (top.st_dev == want.st_dev && top.st_ino == want.st_ino))
			die("--enter-mount-namespace: %s in the container's mount namespace is not the container root: is it pivoted already?", root);
	}
	const char *f = getenv("NVBIND_HOOK_FULL");
	if (f && strcmp(f, "1") == 0)
		full("NVBIND_HOOK_FULL=1");
	if (a.nlinks == 0 && a.nfolders == 0)
		full("no layout");
	if (!cfg)
		cfg = load_bundle(g_state, g_state_len, &st, root);
	if (g_root < 0)
		g_root = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (g_root < 0)
		full("the container root cannot be opened");
	int probe = in_root("/", O_PATH | O_DIRECTORY);
	if (probe < 0)
		full("openat2 with RESOLVE_IN_ROOT is not available"); /* kernels before 5.6 */
	close(probe);

	/* everything the steps read, before any step changes the container */
	for (size_t i = 0; i < a.nfolders; i++) {
		char c[PATH_MAX];
		if ((size_t)snprintf(c, sizeof c, "%s", a.folders[i]) >= sizeof c || !clean_abs(c) || strcmp(c, "/") == 0)
			full("a folder the full hook refuses");
	}
	if (a.driver_version && compat_newer(a.driver_version))
		full("the image's CUDA compat libraries are newer than the driver");
	struct cache ours = {0}, image = {0};
	char *ours_data = NULL, *image_data = NULL;
	if (a.nfolders) {
		if (!a.folder_entries)
			full("library folders without their entries");
		char fe[PATH_MAX];
		if ((size_t)snprintf(fe, sizeof fe, "%s", a.folder_entries) >= sizeof fe || !clean_abs(fe))
			full("a folder-entries path that is not absolute");
		size_t olen;
		ours_data = read_in_root(fe, LD_MAX_SIZE, &olen);
		if (!ours_data || !ld_parse((unsigned char *)ours_data, olen, &ours))
			full("the layout's ld cache entries cannot be read");
		size_t ilen;
		image_data = read_in_root("/etc/ld.so.cache", LD_MAX_SIZE, &ilen);
		if (!image_data && errno != ENOENT)
			full("the image's ld cache cannot be read");
		if (image_data && !ld_parse((unsigned char *)image_data, ilen, &image))
			full("the image's ld cache is unusable");
		/* names with numbers beyond int32 make the loader's order (which wraps them, as
		 * glibc does) intransitive, where sort algorithms may disagree */
		for (size_t i = 0; i < image.n; i++)
			if (long_number(image.e[i].name))
				full("an image cache name with a number beyond 9 digits");
		for (size_t i = 0; i < ours.n; i++)
			if (long_number(ours.e[i].name))
				full("a layout name with a number beyond 9 digits");
	}
	if (a.protect && !a.enter_ns)
		params = load_params(host_params, &plen);
	if (a.app_profile)
		if (cfg->nminors)
			qsort(cfg->minors, (size_t)cfg->nminors, sizeof *cfg->minors, cmp_i64);

	/* create-symlinks: first the folders only the driver fills, each linked whole where
	 * the image has nothing at its path (or already linked so, by an earlier start); the
	 * links under such a folder are then in place. A folder, file or other link of the
	 * image's own there leaves the links to be made one by one. */
	size_t nlinked = 0;
	const struct link **linked = xmalloc((a.nflinks + 1) * sizeof *linked);
	for (size_t i = 0; i < a.nflinks; i++) {
		const char *name;
		char buf[PATH_MAX];
		int pfd = link_folder(a.flinks[i].link, &name);
		int at = put_link(pfd, name, &a.flinks[i], buf, sizeof buf);
		/* another layout's counts where it is there (mounted beside ours); where it is not
		 * (an image committed from a container that had it, or a look-alike of the
		 * image's), it is replaced, as a stale link of a file is */
		int there = at == AT_MADE || (at == AT_LINK && strcmp(buf, a.flinks[i].target) == 0);
		if (!there && at == AT_LINK && other_layout(buf, a.flinks[i].target, a.flinks[i].link)) {
			/* a layout's folder is on a read-only mount other than the root's: a folder of
			 * the image's own that only looks like one does not count */
			int fd = in_root(a.flinks[i].link, O_PATH | O_DIRECTORY);
			int other = fd >= 0 && foreign_ro(fd);
			there = 1;
			if (fd >= 0)
				close(fd);
			if (!other)
				relink(pfd, name, &a.flinks[i], 1);
		}
		if (there)
			linked[nlinked++] = &a.flinks[i];
	}
	for (size_t i = 0; i < a.nlinks; i++) {
		const char *name;
		int skip = 0;
		/* in place through a folder link: under the folder, and its target is the
		 * folder's target with the same rest */
		for (size_t k = 0; k < nlinked && !skip; k++) {
			const char *l = a.links[i].link, *t = a.links[i].target;
			size_t n = strlen(linked[k]->link), tn = strlen(linked[k]->target);
			skip = strncmp(l, linked[k]->link, n) == 0 && l[n] == '/' && strncmp(t, linked[k]->target, tn) == 0 &&
			       strcmp(t + tn, l + n) == 0;
		}
		if (skip)
			continue;
		char buf[PATH_MAX];
		int pfd = link_folder(a.links[i].link, &name);
		int at = put_link(pfd, name, &a.links[i], buf, sizeof buf);
		if (at == AT_MADE) /* the common case: nothing there */
			continue;
		if (at == AT_LINK && strcmp(buf, a.links[i].target) == 0)
			continue;
		if ((at == AT_LINK || at == AT_OTHER) && foreign_ro(pfd)) {
			/* another layout's folder (linked there by its hook), which holds the driver's
			 * files too */
			say("create-symlinks: %s is on a read-only mount (a layout's or a volume's): left as it is\n", a.links[i].link);
			continue;
		}
		if (at == AT_OTHER) {
			say("create-symlinks: %s exists in the image and is not a link: left as it is\n", a.links[i].link);
			continue;
		}
		relink(pfd, name, &a.links[i], at == AT_LINK); /* AT_NONE: gone meanwhile */
	}

	/* update-ldcache */
	if (a.nfolders) {
		if (dir_handle("/etc", 1) < 0)
			full("/etc cannot be made");
		int confd = in_root("/etc/ld.so.conf.d", O_PATH | O_DIRECTORY);
		if (confd >= 0) {
			close(confd);
			size_t clen2 = strlen("# written by nvbind hook: NVIDIA driver libraries\n");
			for (size_t i = 0; i < a.nfolders; i++)
				clen2 += strlen(a.folders[i]) + 1;
			char *conf = xmalloc(clen2 + 1);
			strcpy(conf, "# written by nvbind hook: NVIDIA driver libraries\n");
			for (size_t i = 0; i < a.nfolders; i++) {
				strcat(conf, a.folders[i]);
				strcat(conf, "\n");
			}
			if (write_in_root("/etc/ld.so.conf.d/00-nvbind.conf", conf, strlen(conf)) != 0)
				full("the ld.so.conf.d file cannot be written");
			free(conf);
		}
		/* ours ahead of the image's entries, an entry of both once, in the loader's order */
		size_t n = ours.n;
		struct entry *merged = xmalloc((ours.n + image.n + 1) * sizeof *merged);
		memcpy(merged, ours.e, ours.n * sizeof *merged);
		size_t cap = 16;
		while (cap < 2 * ours.n)
			cap *= 2;
		size_t *slots = xmalloc(cap * sizeof *slots); /* index + 1 of our entries, 0 free */
		memset(slots, 0, cap * sizeof *slots);
		for (size_t k = 0; k < ours.n; k++) {
			size_t i = (size_t)entry_hash(&ours.e[k]) & (cap - 1);
			while (slots[i])
				i = (i + 1) & (cap - 1);
			slots[i] = k + 1;
		}
		for (size_t i = 0; i < image.n; i++) {
			int dup = 0;
			for (size_t s = (size_t)entry_hash(&image.e[i]) & (cap - 1); slots[s] && !dup; s = (s + 1) & (cap - 1))
				dup = same_entry(&ours.e[slots[s] - 1], &image.e[i]);
			if (!dup)
				merged[n++] = image.e[i];
		}
		free(slots);
		struct entry *tmp = xmalloc((n + 1) * sizeof *tmp);
		merge_sort(merged, tmp, n);
		size_t olen;
		unsigned char *out = ld_encode(merged, n, &olen);
		if (write_in_root("/etc/ld.so.cache", (char *)out, olen) != 0)
			full("the ld cache cannot be written");
		free(out);
		free(tmp);
		free(merged);
	}

	/* disable-device-node-modification */
	if (a.protect) {
		if (!params)
			say( "disable-device-node-modification: %s does not exist: nothing to do\n", host_params);
		else
			protect(host_params, params, plen);
	}

	/* update-application-profile */
	if (a.app_profile) {
		uint32_t mask = 0;
		for (int i = 0; i < cfg->nminors; i++)
			if (cfg->minors[i] >= 0 && cfg->minors[i] <= MAX_EGL_MINOR)
				mask |= 1u << cfg->minors[i];
		if (mask == 0) {
			say( "update-application-profile: no /dev/nvidiaN node (of minor 0-%d) in the container: no profile written\n",
				MAX_EGL_MINOR);
		} else {
			for (int i = 0; i < cfg->nminors; i++)
				if (cfg->minors[i] > MAX_EGL_MINOR)
					say(
						"update-application-profile: /dev/nvidia%lld is beyond what EGLVisibleDGPUDevices can name: EGL does not see it\n",
						(long long)cfg->minors[i]);
			const char *dir = "/etc/nvidia/nvidia-application-profiles-rc.d";
			if (dir_handle(dir, 1) < 0)
				full("the application profile folder cannot be made");
			char doc[256];
			int n = snprintf(doc, sizeof doc,
					 "{\"profiles\":[{\"name\":\"nvbind-container\",\"settings\":[\"EGLVisibleDGPUDevices\",%u]}],"
					 "\"rules\":[{\"pattern\":[],\"profile\":\"nvbind-container\"}]}\n",
					 mask);
			if (write_in_root("/etc/nvidia/nvidia-application-profiles-rc.d/10-nvbind-container.conf", doc, (size_t)n) != 0)
				full("the application profile cannot be written");
		}
	}
	if (g_loglen)
		fwrite(g_log, 1, g_loglen, stderr);
	trace("done");
	return 0;
}
