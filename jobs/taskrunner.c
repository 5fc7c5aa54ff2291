/* The runner inside a reused container, in C: what jobs/taskrunner.py does, without a
 * Python interpreter's start and per-task work (see jobs/warm.py and jobs/runnerbin.py).
 *
 * It runs as the container's pid 1 (bwrap --as-pid-1), from a read-only copy bwrap makes
 * of it. fd 3 is a SOCK_SEQPACKET socket to the host. It says "ready", then for each
 * message (runner_message in jobs/warm.py: NUL-terminated fields "M1", the input flag
 * "0" or "1", the shell, argc, argv..., envc, env "K=V"...) with fds [stdin, stdout,
 * stderr, status(, input)] by SCM_RIGHTS:
 *
 *   spawn the task: vfork + execve(shell, argv, env) with the fds dup2'd onto 0, 1, 2, 3
 *         (and 63, the input), every other fd close-on-exec, default signal dispositions
 *         and an empty signal mask (we install no handler and block nothing);
 *   wait for it, then clean up: SIGKILL everything else in the pid namespace (kill(-1)
 *         spares only us) and reap it, until /proc shows no process but us; empty /tmp
 *         (what was made unreadable too, at most MAX_DEPTH deep); reset /tmp, /manta/out,
 *         /dev/pts and /dev/pts/ptmx (fresh_dirs: the task user's, they outlive a task;
 *         /manta/out only with in-task tools, its entries are moved out by the host) to what
 *         they were when we started:
 *         the same xattrs (any other removed), mode and owner, and atime and mtime the
 *         time of the reset (their ctime says that anyway); what cannot be reset makes the
 *         reply not clean; remove SysV IPC objects left behind;
 *   reply {"status": <wait status>, "clean": true|false} (JSON, as the Python runner).
 *
 * We are not dumpable, so tasks (same uid) cannot read or write our memory or fds. As the
 * namespace's init we get no signal from inside it (we handle none). Anything unexpected
 * (a bad message, a failed recvmsg) ends us: the host sees no reply and throws the
 * container away.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#define CONTROL_FD 3
#define INPUT_FD 63 /* /manta/input is a symlink to /proc/self/fd/63 */
#define MAX_MESSAGE (1 << 20)
#define MAX_FDS 8
#define MAX_FIELDS 65536
#define KILL_ROUNDS 100
#define MAX_DEPTH 256
#define XATTR_BYTES 65536 /* a directory's list of xattr names, or one value; more is not clean */
#define MAX_KEPT 16       /* xattrs a fresh directory has (a security label, say) */

/* A directory a task can write that outlives it, as the container started with it. */
struct fresh {
    const char *path;
    int present;
    mode_t mode;
    uid_t uid;
    gid_t gid;
    int kept;
    char *names[MAX_KEPT];
    char *values[MAX_KEPT];
    ssize_t sizes[MAX_KEPT];
};

static const int TARGETS[] = {0, 1, 2, 3, INPUT_FD};
static char message[MAX_MESSAGE + 1];
static char *fields[MAX_FIELDS + 1];
static char xattr_names[XATTR_BYTES];
static char xattr_value[XATTR_BYTES];
/* what a task can change that outlives it */
static struct fresh fresh_dirs[] = {{.path = "/tmp"}, {.path = "/manta/out"}, {.path = "/dev/pts"},
                                    {.path = "/dev/pts/ptmx"}};
#define FRESH_DIRS ((int)(sizeof(fresh_dirs) / sizeof(fresh_dirs[0])))

static int receive(int *fds, int *nfds)
{
    char control[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct iovec iov = {message, MAX_MESSAGE};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n;
    do {
        n = recvmsg(CONTROL_FD, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    *nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < count && *nfds < MAX_FDS; i++)
                memcpy(&fds[(*nfds)++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    }
    if (n < 0 || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
        return -1;
    message[n] = '\0';
    return (int)n;
}

/* Split the message into its NUL-terminated fields; the count, or -1. */
static int split(int length)
{
    int count = 0;
    for (int at = 0; at < length; count++) {
        if (count == MAX_FIELDS)
            return -1;
        fields[count] = message + at;
        char *end = memchr(message + at, '\0', (size_t)(length - at));
        if (end == NULL)
            return -1;
        at = (int)(end - message) + 1;
    }
    return count;
}

static long number(const char *text)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    return (errno || *end || end == text || value < 0) ? -1 : value;
}

/* The task's pid, or 0 if it could not be started (the reply's status is then 127). */
static pid_t spawn(int count, const int *fds, int nfds)
{
    if (count < 5 || strcmp(fields[0], "M1") != 0)
        return -1;
    int input = strcmp(fields[1], "1") == 0;
    char *shell = fields[2];
    long argc = number(fields[3]);
    if (argc < 1 || 4 + argc >= count)
        return -1;
    char **argv = &fields[4];
    long envc = number(fields[4 + argc]);
    if (envc < 0 || 5 + argc + envc != count)
        return -1;
    char **envp = &fields[5 + argc];
    int wanted = input ? 5 : 4;
    if (nfds < wanted)
        return -1;
    int high[5];
    for (int i = 0; i < wanted; i++) {
        high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, INPUT_FD + 1);
        if (high[i] < 0) {
            while (i-- > 0)
                close(high[i]);
            return 0;
        }
    }
    /* argv and envp end with the field after them: make that NULL for execve */
    char *after_argv = argv[argc], *after_env = envp[envc];
    argv[argc] = NULL;
    envp[envc] = NULL;
    pid_t pid = vfork();
    if (pid == 0) {
        for (int i = 0; i < wanted; i++)
            if (dup2(high[i], TARGETS[i]) < 0)
                _exit(127);
        execve(shell, argv, envp);
        _exit(127);
    }
    argv[argc] = after_argv;
    envp[envc] = after_env;
    for (int i = 0; i < wanted; i++)
        close(high[i]);
    return pid < 0 ? 0 : pid;
}

static int wait_for(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return 127 << 8;
    return status;
}

static int others_left(void)
{
    DIR *proc = opendir("/proc");
    if (proc == NULL)
        return 1;
    int left = 0;
    struct dirent *entry;
    while (!left && (entry = readdir(proc)) != NULL) {
        long pid = number(entry->d_name);
        left = pid > 1;
    }
    closedir(proc);
    return left;
}

static int kill_others(void)
{
    for (int round = 0; round < KILL_ROUNDS; round++) {
        kill(-1, SIGKILL);
        while (waitpid(-1, NULL, 0) >= 0 || errno == EINTR)
            ;
        if (!others_left())
            return 1;
    }
    return 0;
}

/* Remove everything in the directory `dir` (an fd it closes); unreadable directories are
 * made readable first. Errors leave things behind, which the caller sees. */
static void empty_dir(int dir, int depth)
{
    DIR *listing = fdopendir(dir);
    if (listing == NULL) {
        close(dir);
        return;
    }
    struct dirent *entry;
    while ((entry = readdir(listing)) != NULL) {
        const char *name = entry->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
            continue;
        struct stat info;
        if (fstatat(dirfd(listing), name, &info, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if (!S_ISDIR(info.st_mode)) {
            unlinkat(dirfd(listing), name, 0);
            continue;
        }
        if (depth >= MAX_DEPTH)
            continue;
        fchmodat(dirfd(listing), name, 0700, 0);
        int child = openat(dirfd(listing), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (child >= 0)
            empty_dir(child, depth + 1);
        unlinkat(dirfd(listing), name, AT_REMOVEDIR);
    }
    closedir(listing);
}

static int is_empty(const char *path)
{
    DIR *listing = opendir(path);
    if (listing == NULL)
        return 0;
    int empty = 1;
    struct dirent *entry;
    while (empty && (entry = readdir(listing)) != NULL)
        empty = strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0;
    closedir(listing);
    return empty;
}

static int empty_tmp(mode_t mode)
{
    chmod("/tmp", mode | S_IRWXU);
    for (int round = 0; round < 3; round++) {
        int dir = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir >= 0)
            empty_dir(dir, 0);
        if (is_empty("/tmp")) {
            chmod("/tmp", mode);
            return 1;
        }
    }
    return 0;
}

/* Remember `dir` as it is now (a missing one stays missing); 0 if it cannot be read. */
static int remember(struct fresh *dir)
{
    struct stat info;
    if (lstat(dir->path, &info) != 0)
        return errno == ENOENT;
    dir->present = 1;
    dir->mode = info.st_mode & 07777;
    dir->uid = info.st_uid;
    dir->gid = info.st_gid;
    ssize_t size = llistxattr(dir->path, xattr_names, sizeof(xattr_names));
    if (size < 0)
        return 0;
    for (char *name = xattr_names; name < xattr_names + size; name += strlen(name) + 1) {
        ssize_t length = lgetxattr(dir->path, name, xattr_value, sizeof(xattr_value));
        if (length < 0 || dir->kept == MAX_KEPT)
            return 0;
        dir->names[dir->kept] = strdup(name);
        dir->values[dir->kept] = malloc((size_t)length + 1);
        if (dir->names[dir->kept] == NULL || dir->values[dir->kept] == NULL)
            return 0;
        memcpy(dir->values[dir->kept], xattr_value, (size_t)length);
        dir->sizes[dir->kept++] = length;
    }
    return 1;
}

/* Whether the xattr `name` of `dir` is one it started with, with its value then. */
static int kept(const struct fresh *dir, const char *name)
{
    ssize_t length = lgetxattr(dir->path, name, xattr_value, sizeof(xattr_value));
    for (int i = 0; i < dir->kept; i++)
        if (strcmp(dir->names[i], name) == 0)
            return length == dir->sizes[i] && memcmp(xattr_value, dir->values[i], (size_t)length) == 0;
    return 0;
}

/* Remove every xattr of `dir` it did not start with (with remove set); 1 if none is left
 * and all it started with are there. */
static int fresh_xattrs(const struct fresh *dir, int remove)
{
    ssize_t size = llistxattr(dir->path, xattr_names, sizeof(xattr_names));
    if (size < 0)
        return 0;
    int same = 0, other = 0;
    for (char *name = xattr_names; name < xattr_names + size; name += strlen(name) + 1) {
        if (kept(dir, name))
            same++;
        else if (!remove || lremovexattr(dir->path, name) != 0)
            other++;
    }
    return other == 0 && same == dir->kept;
}

/* `dir` as it started: its xattrs (any other removed), mode, owner; atime and mtime now. */
static int reset(const struct fresh *dir)
{
    struct stat info;
    if (!dir->present)
        return 1;
    if (!fresh_xattrs(dir, 1) || lstat(dir->path, &info) != 0)
        return 0;
    if ((info.st_uid != dir->uid || info.st_gid != dir->gid) && lchown(dir->path, dir->uid, dir->gid) != 0)
        return 0;
    if (chmod(dir->path, dir->mode) != 0 || utimensat(AT_FDCWD, dir->path, NULL, AT_SYMLINK_NOFOLLOW) != 0)
        return 0;
    return lstat(dir->path, &info) == 0 && (info.st_mode & 07777) == dir->mode && info.st_uid == dir->uid &&
           info.st_gid == dir->gid && fresh_xattrs(dir, 0);
}

static int reset_all(void)
{
    for (int i = 0; i < FRESH_DIRS; i++)
        if (!reset(&fresh_dirs[i]))
            return 0;
    return 1;
}

/* The ids of /proc/sysvipc/<kind> (its second column); how many, at most `max`. */
static int sysv_ids(const char *kind, int *ids, int max)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/sysvipc/%s", kind);
    FILE *file = fopen(path, "re");
    if (file == NULL)
        return 0;
    char line[512];
    int count = 0;
    if (fgets(line, sizeof(line), file) != NULL) { /* the header */
        long key;
        int id;
        while (count < max && fgets(line, sizeof(line), file) != NULL)
            if (sscanf(line, "%ld %d", &key, &id) == 2)
                ids[count++] = id;
    }
    fclose(file);
    return count;
}

static int clear_sysv(void)
{
    static const char *kinds[] = {"shm", "msg", "sem"};
    int ids[1024], left = 0;
    for (int k = 0; k < 3; k++) {
        int count = sysv_ids(kinds[k], ids, 1024);
        for (int i = 0; i < count; i++) {
            if (k == 0)
                shmctl(ids[i], IPC_RMID, NULL);
            else if (k == 1)
                msgctl(ids[i], IPC_RMID, NULL);
            else
                semctl(ids[i], 0, IPC_RMID);
        }
        if (count)
            left += sysv_ids(kinds[k], ids, 1024);
    }
    return left == 0;
}

int main(void)
{
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); /* (pid 1 is anyway) */
    fcntl(CONTROL_FD, F_SETFD, FD_CLOEXEC);
    for (int i = 0; i < FRESH_DIRS; i++)
        if (!remember(&fresh_dirs[i]))
            return 1;
    if (!fresh_dirs[0].present)
        return 1;
    mode_t tmp_mode = fresh_dirs[0].mode;
    if (send(CONTROL_FD, "ready", 5, MSG_NOSIGNAL) != 5)
        return 1;
    for (;;) {
        int fds[MAX_FDS], nfds;
        int length = receive(fds, &nfds);
        if (length <= 0)
            return length < 0;
        int count = split(length);
        pid_t pid = count < 0 ? -1 : spawn(count, fds, nfds);
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        if (pid < 0)
            return 1; /* a message we do not understand */
        int status = pid ? wait_for(pid) : 127 << 8;
        int clean = kill_others() && empty_tmp(tmp_mode) && reset_all() && clear_sysv();
        char reply[64];
        int size = snprintf(reply, sizeof(reply), "{\"status\": %d, \"clean\": %s}", status,
                            clean ? "true" : "false");
        if (send(CONTROL_FD, reply, (size_t)size, MSG_NOSIGNAL) != size)
            return 1;
    }
}
