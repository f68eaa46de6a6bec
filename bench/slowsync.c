/* An LD_PRELOAD shim that makes every fsync of a process slow, as on an SD card.
 *
 * fsync, fdatasync and sync_file_range sleep for BENCH_SYNC_DELAY_MS milliseconds (read once,
 * at the first call; unset or 0: no delay), then do the real call. Built by bench/slowdisk.py
 * with gcc into a temporary directory at bench time; never committed as a binary.
 * SQLite on Linux syncs with fdatasync (its journal and WAL) and fsync (directories).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/types.h>
#include <time.h>

static long delay_ms = -1;

static void slow_down(void) {
    if (delay_ms < 0) {
        const char *text = getenv("BENCH_SYNC_DELAY_MS");
        delay_ms = text != NULL ? atol(text) : 0;
    }
    if (delay_ms <= 0) {
        return;
    }
    struct timespec left = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
    int saved = errno;
    /* The whole delay even if a signal interrupts the sleep. */
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
    errno = saved;
}

int fsync(int fd) {
    static int (*real)(int) = NULL;
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    slow_down();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int) = NULL;
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    slow_down();
    return real(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    static int (*real)(int, off_t, off_t, unsigned int) = NULL;
    if (real == NULL) {
        real = (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
    }
    slow_down();
    return real(fd, offset, nbytes, flags);
}
