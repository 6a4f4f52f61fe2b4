/*
 * nvbind-runtime: the front of nvbind's OCI runtime wrapper.
 *
 * Runtimes' callers (containerd's shim, dockerd) run the OCI runtime once per command:
 * create, start, state, kill, delete. Almost every call needs nothing from nvbind, so
 * this front, a small static C program, costs one exec: it reads the real runtime from
 * /etc/nvbind/runtime.toml (or $NVBIND_RUNTIME_CONFIG) and replaces itself with it. Only
 * for create and run, and only when the bundle's config.json names a key a GPU request
 * uses (NVIDIA_VISIBLE_DEVICES, gpus.nvbind.io, cdi.k8s.io/, required-plugins), does it
 * ask the edit service (nvbind-runtime-edit serve, at the configuration's socket) to edit
 * config.json, and then run the real runtime itself; without an answer from the service
 * it runs nvbind-runtime-edit beside it (Go: nvbind's request parser and edit model),
 * which edits config.json and then runs the real runtime. A Go program costs ~5 ms more to
 * start than this one on the VMs nvbind is tested on, on every container command.
 *
 * Where the service answers "steps" (a create with --pid-file under runc or crun: see
 * package wrapper's service.go), config.json got the driver without its hook: this front
 * runs the runtime's create as its child, then tells the service the container's process
 * ID, and the service does the hook's work on the created container (no hook process).
 * Should that fail, the container is deleted and the create fails, as a failing hook
 * fails it.
 *
 * It reads config.json read-only with a bounded mapping and a substring search; it
 * parses only the `runtime` and `socket` keys of the configuration, and leaves every
 * other key to the edit service or nvbind-runtime-edit, which check the whole file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_CONFIG "/etc/nvbind/runtime.toml"
#define ENV_CONFIG "NVBIND_RUNTIME_CONFIG"
#define EDIT_BINARY "nvbind-runtime-edit"
#define MAX_CONFIG (64 << 10)    /* the configuration file */
#define MAX_SPEC (32 << 20)      /* config.json */
#define DEFAULT_SOCKET "/run/nvbind/runtime.sock"
#define SERVICE_MAGIC "nvbind-edit/2"   /* /2: this front runs the steps' create */
#define MAX_REQUEST (64 << 10)   /* a request to the edit service, as the service bounds it */
#define MAX_ARGS 4096           /* runtime arguments in a request, as the service bounds them */
#define SERVICE_TIMEOUT 30       /* seconds the edit service may take (discovery's bound is 20) */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static const char *log_file, *log_format;

/* fail reports an error where the runtime's caller looks (stderr, and the --log file in
 * runc's JSON format, which containerd's shim and Docker show users) and exits 1. */
static void fail(const char *fmt, ...) {
	char msg[4200];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "nvbind-runtime: %s\n", msg);
	if (log_file) {
		int fd = open(log_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
		if (fd >= 0) {
			char line[8800], esc[8600];
			size_t j = 0;
			for (size_t i = 0; msg[i] && j < sizeof esc - 7; i++) {
				unsigned char c = (unsigned char)msg[i];
				if (c == '"' || c == '\\') {
					esc[j++] = '\\';
					esc[j++] = (char)c;
				} else if (c < 0x20) {
					j += (size_t)snprintf(esc + j, sizeof esc - j, "\\u%04x", c);
				} else {
					esc[j++] = (char)c;
				}
			}
			esc[j] = 0;
			char when[64];
			time_t now = time(NULL);
			struct tm tm;
			strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
			int n;
			if (log_format && strcmp(log_format, "json") == 0)
				n = snprintf(line, sizeof line, "{\"level\":\"error\",\"msg\":\"nvbind-runtime: %s\",\"time\":\"%s\"}\n", esc, when);
			else
				n = snprintf(line, sizeof line, "time=\"%s\" level=error msg=\"nvbind-runtime: %s\"\n", when, esc);
			if (n > 0 && write(fd, line, (size_t)n) < 0) {
				/* nothing more to do: stderr has it */
			}
			close(fd);
		}
	}
	exit(1);
}

/* flag_name returns the name of a flag argument (-b, --bundle, --bundle=x, -bundle) and
 * sets *value to an inline value; NULL for a non-flag. */
static const char *flag_name(const char *arg, char *name, size_t size, const char **value) {
	*value = NULL;
	if (arg[0] != '-' || arg[1] == 0 || strcmp(arg, "--") == 0)
		return NULL;
	while (*arg == '-')
		arg++;
	const char *eq = strchr(arg, '=');
	size_t n = eq ? (size_t)(eq - arg) : strlen(arg);
	if (n >= size)
		n = size - 1;
	memcpy(name, arg, n);
	name[n] = 0;
	if (eq)
		*value = eq + 1;
	return name;
}

static int in_list(const char *name, const char *const *list) {
	for (; *list; list++)
		if (strcmp(name, *list) == 0)
			return 1;
	return 0;
}

/* runc's flags that take a value, global and of create/run (the same as package wrapper). */
static const char *const global_value_flags[] = {"log", "log-format", "root", "criu", "rootless", NULL};
static const char *const command_value_flags[] = {"bundle", "b", "console-socket", "pidfd-socket", "pid-file", "preserve-fds", NULL};

/* The configuration: the keys this front reads. */
static const char *config_path;
static int config_explicit;
static char config_runtime[PATH_MAX];
static char config_socket[PATH_MAX] = DEFAULT_SOCKET;

/* config_value parses `key = "value"` on a line, into out; 0 when the line holds
 * another key. */
static int config_value(const char *line, const char *key, char *out, size_t size) {
	size_t k = strlen(key);
	if (strncmp(line, key, k) != 0)
		return 0;
	const char *p = line + k;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p++ != '=')
		return 0;
	while (*p == ' ' || *p == '\t')
		p++;
	char quote = *p;
	if (quote != '"' && quote != '\'')
		fail("%s: %s must be a quoted path or name", config_path, key);
	const char *end = strchr(p + 1, quote);
	if (!end || (size_t)(end - p - 1) >= size || memchr(p + 1, '\\', (size_t)(end - p - 1)))
		fail("%s: %s must be a quoted path or name without escapes", config_path, key);
	memcpy(out, p + 1, (size_t)(end - p - 1));
	out[end - p - 1] = 0;
	return 1;
}

/* read_config reads the `runtime` and `socket` keys of the configuration (runtime stays
 * "" and socket DEFAULT_SOCKET when the file or the key is absent and the file was not
 * named explicitly). */
static void read_config(void) {
	config_path = getenv(ENV_CONFIG);
	config_explicit = config_path != NULL;
	if (!config_path)
		config_path = DEFAULT_CONFIG;
	int fd = open(config_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT && !config_explicit)
			return;
		fail("configuration %s: %s", config_path, strerror(errno));
	}
	static char buf[MAX_CONFIG + 1];
	ssize_t n = 0, r;
	while ((r = read(fd, buf + n, sizeof buf - 1 - (size_t)n)) > 0)
		n += r;
	close(fd);
	if (r < 0)
		fail("configuration %s: %s", config_path, strerror(errno));
	if (n >= MAX_CONFIG)
		fail("configuration %s is larger than %d bytes", config_path, MAX_CONFIG);
	buf[n] = 0;
	for (char *line = buf, *next; line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = 0;
		while (*line == ' ' || *line == '\t')
			line++;
		if (*line == '[')
			return; /* a table: the wrapper's keys are top-level only */
		if (!config_value(line, "runtime", config_runtime, sizeof config_runtime))
			config_value(line, "socket", config_socket, sizeof config_socket);
	}
}

/* ask_service asks the edit service (nvbind-runtime-edit serve) to edit the bundle's
 * config.json, as nvbind-runtime-edit would. It returns 1 when the service edited it (or
 * found nothing to do), 2 when it answered "steps" (*steps_sock is then the connection,
 * open), 0 when no service answers at the socket, so that nvbind-runtime-edit does the
 * work; an error the service reports ends the program. */
static int ask_service(int argc, char **argv, const char *bundle, int *steps_sock) {
	if (!config_socket[0])
		return 0;
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	if (strlen(config_socket) >= sizeof addr.sun_path)
		return 0;
	memcpy(addr.sun_path, config_socket, strlen(config_socket) + 1);

	/* the request: NUL-terminated fields (see package wrapper's service.go) */
	static char req[MAX_REQUEST];
	size_t len = 0;
	const char *fields[5] = {SERVICE_MAGIC, argv[0], config_path, config_explicit ? "1" : "0", bundle ? bundle : ""};
	char abs_config[PATH_MAX];
	if (config_path[0] != '/') {
		if (!realpath(config_path, abs_config))
			return 0; /* nvbind-runtime-edit says why */
		fields[2] = abs_config;
	}
	if (argc - 1 > MAX_ARGS)
		return 0; /* as many arguments as this go to nvbind-runtime-edit */
	for (int i = 0; i < 5 + argc - 1; i++) {
		const char *f = i < 5 ? fields[i] : argv[i - 4];
		size_t n = strlen(f) + 1;
		if (len + n > sizeof req)
			return 0; /* a command line this long goes to nvbind-runtime-edit */
		memcpy(req + len, f, n);
		len += n;
	}

	int dir = open(bundle ? bundle : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0)
		return 0; /* nvbind-runtime-edit says why */
	int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (sock < 0) {
		close(dir);
		return 0;
	}
	/* the send timeout bounds connect too, should the service's backlog be full */
	struct timeval tv = {.tv_sec = SERVICE_TIMEOUT};
	setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	int rc;
	do
		rc = connect(sock, (struct sockaddr *)&addr, sizeof addr);
	while (rc != 0 && errno == EINTR);
	if (rc != 0) {
		close(sock);
		close(dir);
		return 0;
	}
	/* the service runs as this program's user (root): any other that listens there is
	 * not nvbind's, and is not told about the container */
	struct ucred peer;
	socklen_t peer_len = sizeof peer;
	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) != 0 || peer.uid != geteuid())
		fail("the process listening at %s runs as another user than nvbind-runtime: it is not nvbind's edit service", config_socket);

	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} control;
	memset(&control, 0, sizeof control);
	struct iovec iov = {.iov_base = req, .iov_len = len};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &dir, sizeof(int));
	ssize_t sent;
	do
		sent = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (sent < 0 && errno == EINTR);
	close(dir);
	if (sent != (ssize_t)len) {
		close(sock);
		return 0; /* the service went away before it read anything: nothing was edited */
	}

	static char reply[4200];
	ssize_t n;
	do
		n = recv(sock, reply, sizeof reply - 1, 0);
	while (n < 0 && errno == EINTR);
	int err = errno;
	if (n == 5 && memcmp(reply, "steps", 5) == 0) {
		*steps_sock = sock;
		return 2;
	}
	close(sock);
	if (n <= 0) {
		/* no answer: the service stopped, failed or hangs. nvbind-runtime-edit does the
		 * edit; one the service made meanwhile is found made, and not made twice */
		fprintf(stderr, "nvbind-runtime: the edit service at %s %s; editing without it\n", config_socket,
		        n < 0 && (err == EAGAIN || err == EWOULDBLOCK) ? "did not answer in time" : "closed without an answer");
		return 0;
	}
	reply[n] = 0;
	if (strcmp(reply, "ok") == 0)
		return 1;
	if (strcmp(reply, "fallback") == 0)
		return 0; /* another mount namespace than the service's, or another protocol */
	if (strncmp(reply, "error", 6) == 0 && (size_t)n > 6)
		fail("%s", reply + 6);
	fail("the edit service at %s answered something else than ok, error or fallback", config_socket);
	return 0;
}

/* self is this program's real path. */
static char self[PATH_MAX];

/* find_runtime resolves name (a path, or a name looked up in PATH) to an executable that
 * is not this program. */
static int find_runtime(const char *name, char *out) {
	char real[PATH_MAX];
	if (strchr(name, '/')) {
		if (access(name, X_OK) != 0 || !realpath(name, real) || strcmp(real, self) == 0)
			return 0;
		snprintf(out, PATH_MAX, "%s", name);
		return 1;
	}
	const char *path = getenv("PATH");
	if (!path || !*path)
		path = DEFAULT_PATH;
	while (*path) {
		const char *colon = strchr(path, ':');
		size_t n = colon ? (size_t)(colon - path) : strlen(path);
		char cand[PATH_MAX];
		if (n > 0 && (size_t)snprintf(cand, sizeof cand, "%.*s/%s", (int)n, path, name) < sizeof cand) {
			struct stat st;
			if (stat(cand, &st) == 0 && S_ISREG(st.st_mode) && access(cand, X_OK) == 0 && realpath(cand, real) &&
			    strcmp(real, self) != 0) {
				snprintf(out, PATH_MAX, "%s", cand);
				return 1;
			}
		}
		path += n;
		if (*path == ':')
			path++;
	}
	return 0;
}

/* may_ask reports whether the bundle's config.json names a key a GPU request uses. A
 * config.json that cannot be read is left to nvbind-runtime-edit, which says why. */
static int may_ask(const char *bundle) {
	char p[PATH_MAX];
	if ((size_t)snprintf(p, sizeof p, "%s/config.json", bundle ? bundle : ".") >= sizeof p)
		return 1;
	int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return 1;
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_SPEC) {
		close(fd);
		return 1;
	}
	if (st.st_size == 0) {
		close(fd);
		return 1;
	}
	void *data = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (data == MAP_FAILED)
		return 1;
	static const char *const keys[] = {"NVIDIA_VISIBLE_DEVICES", "gpus.nvbind.io", "cdi.k8s.io/", "required-plugins.noderesource.dev", NULL};
	int found = 0;
	for (const char *const *k = keys; *k && !found; k++)
		found = memmem(data, (size_t)st.st_size, *k, strlen(*k)) != NULL;
	munmap(data, (size_t)st.st_size);
	return found;
}

/* run_child runs argv (argv[0] a path) as a child and returns its wait status, or -1. */
static int run_child(char **argv, char **envp) {
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		execve(argv[0], argv, envp);
		fprintf(stderr, "nvbind-runtime: run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	int status;
	pid_t r;
	do
		r = waitpid(pid, &status, 0);
	while (r < 0 && errno == EINTR);
	return r == pid ? status : -1;
}

/* read_pid reads a process ID from the runtime's --pid-file; 0 when it holds none. */
static long read_pid(const char *path) {
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return 0;
	char buf[32];
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *end;
	errno = 0;
	long pid = strtol(buf, &end, 10);
	if (errno || end == buf || (*end && *end != '\n') || pid <= 1 || pid > INT_MAX)
		return 0;
	return pid;
}

/* create_with_steps runs the runtime's create (argv, argv[0] the runtime) as a child, then
 * has the edit service at sock run the driver's steps on the created container, and exits:
 * as the runtime did when its create failed, 0 when the steps are done, else 1 once the
 * container is deleted (argv[1..command) are the runtime's global flags). */
static void create_with_steps(int sock, int argc, char **argv, char **envp, int command, const char *id, const char *pid_file) {
	int status = run_child(argv, envp);
	if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		close(sock); /* the service has nothing to do */
		if (status >= 0 && WIFSIGNALED(status))
			exit(128 + WTERMSIG(status));
		exit(status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : 1);
	}
	char msg[4200] = "";
	long pid = id && pid_file ? read_pid(pid_file) : 0;
	if (pid == 0) {
		snprintf(msg, sizeof msg, "no container process ID in --pid-file %s: the driver's steps were not run", pid_file ? pid_file : "(none)");
	} else {
		char packet[64];
		int len = snprintf(packet, sizeof packet, "created%c%ld", 0, pid);
		ssize_t sent;
		do
			sent = send(sock, packet, (size_t)len, MSG_NOSIGNAL);
		while (sent < 0 && errno == EINTR);
		static char reply[4200];
		ssize_t n = -1;
		if (sent != len) {
			snprintf(msg, sizeof msg, "the edit service at %s went away before the container %.12s was created (it waits 5 minutes for a create): the driver's steps were not run",
			         config_socket, id);
		} else {
			do
				n = recv(sock, reply, sizeof reply - 1, 0);
			while (n < 0 && errno == EINTR);
		}
		if (n == 2 && memcmp(reply, "ok", 2) == 0) {
			close(sock);
			exit(0);
		}
		if (n > 6 && memcmp(reply, "error", 6) == 0) {
			reply[n] = 0;
			snprintf(msg, sizeof msg, "%s", reply + 6);
		} else if (sent == len) {
			snprintf(msg, sizeof msg, "the edit service at %s did not run the driver's steps (links, ld cache) on container %.12s: %s",
			         config_socket, id, n == 0 ? "it closed without an answer" : n < 0 ? "no answer in time" : "an answer other than ok or error");
		}
	}
	close(sock);
	/* a container without the driver's steps never starts: runc delete --force, with the
	 * same global flags (--root, --log) */
	char *del[MAX_ARGS + 8];
	int k = 0;
	del[k++] = argv[0];
	for (int j = 1; j < command && k < MAX_ARGS; j++)
		del[k++] = argv[j];
	del[k++] = "delete";
	del[k++] = "--force";
	del[k++] = (char *)(id ? id : "");
	del[k] = NULL;
	if (id)
		run_child(del, envp);
	(void)argc;
	fail("%s", msg);
}

int main(int argc, char **argv, char **envp) {
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n <= 0)
		fail("cannot find its own path: %s", strerror(errno));
	self[n] = 0;

	/* the command line: global flags, the command, its flags */
	const char *command = NULL, *bundle = NULL, *pid_file = NULL, *id = NULL;
	int command_at = 0, ids = 0;
	char name[64];
	const char *value;
	int i = 1;
	for (; i < argc; i++) {
		if (!flag_name(argv[i], name, sizeof name, &value))
			break;
		if (in_list(name, global_value_flags) && !value && i + 1 < argc)
			value = argv[++i];
		if (strcmp(name, "log") == 0)
			log_file = value;
		else if (strcmp(name, "log-format") == 0)
			log_format = value;
	}
	if (i < argc) {
		command = argv[i];
		command_at = i;
	}
	int edits = command && (strcmp(command, "create") == 0 || strcmp(command, "run") == 0);
	if (edits) {
		for (i++; i < argc; i++) {
			if (!flag_name(argv[i], name, sizeof name, &value)) {
				id = argv[i]; /* the container ID: one positional argument (as package wrapper) */
				ids++;
				continue;
			}
			if (in_list(name, command_value_flags) && !value && i + 1 < argc)
				value = argv[++i];
			if (strcmp(name, "bundle") == 0 || strcmp(name, "b") == 0)
				bundle = value;
			else if (strcmp(name, "pid-file") == 0)
				pid_file = value;
		}
		if (ids != 1)
			id = NULL;
	}

	read_config();
	int steps_sock = -1, asked = 0;
	if (edits && may_ask(bundle) && !(asked = ask_service(argc, argv, bundle, &steps_sock))) {
		char edit[PATH_MAX];
		char *slash = strrchr(self, '/');
		if ((size_t)snprintf(edit, sizeof edit, "%.*s/%s", (int)(slash - self), self, EDIT_BINARY) >= sizeof edit)
			fail("path too long");
		/* argv[0] stays: nvbind-runtime-edit reads the guard mode from the name it was run as */
		execve(edit, argv, envp);
		fail("run %s: %s", edit, strerror(errno));
	}

	char runtime[PATH_MAX];
	if (config_runtime[0]) {
		if (!find_runtime(config_runtime, runtime))
			fail("runtime \"%s\": not found, or it is nvbind-runtime itself", config_runtime);
	} else if (!find_runtime("runc", runtime) && !find_runtime("crun", runtime)) {
		fail("no OCI runtime found in PATH (looked for runc, crun): set runtime in %s", DEFAULT_CONFIG);
	}
	argv[0] = runtime;
	if (asked == 2)
		create_with_steps(steps_sock, argc, argv, envp, command_at, id, pid_file);
	execve(runtime, argv, envp);
	fail("run %s: %s", runtime, strerror(errno));
	return 1;
}
