/*
 * clockshift: jump one process's wall clock while it runs, and nothing else.
 *
 * Loaded with LD_PRELOAD into a single process (tests/faults/test_fault_clock.py
 * builds it with cc), it adds an offset to what CLOCK_REALTIME says through
 * clock_gettime(), gettimeofday() and time(): the clock an NTP step or an
 * operator's `date -s` moves. CLOCK_MONOTONIC and every sleep and timed wait
 * are left alone, as a real jump leaves them. The offset, in whole seconds
 * (negative: back), is read from the file named by CLOCKSHIFT_FILE at most
 * every 10 ms, so a test jumps the clock by writing that file.
 *
 * Why not libfaketime (Debian's faketime 0.9.10): its clock_nanosleep()
 * wrapper breaks Python's time.sleep(), which sleeps until an absolute
 * CLOCK_MONOTONIC deadline: EINVAL with FAKETIME_DONT_FAKE_MONOTONIC=1,
 * a hang without it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000LL
#define REREAD_NS (10 * 1000000LL)

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime(void) {
    static _Atomic(clock_gettime_fn) real;
    clock_gettime_fn fn = atomic_load(&real);
    if (fn == NULL) {
        fn = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
        atomic_store(&real, fn);
    }
    return fn;
}

/* The offset in nanoseconds, re-read from CLOCKSHIFT_FILE now and then. */
static long long offset_ns(void) {
    static atomic_llong offset;
    static atomic_llong next_read;
    struct timespec now;
    if (real_clock_gettime()(CLOCK_MONOTONIC, &now) != 0) {
        return atomic_load(&offset);
    }
    long long mono = now.tv_sec * NS + now.tv_nsec;
    long long due = atomic_load(&next_read);
    if (mono >= due && atomic_compare_exchange_strong(&next_read, &due, mono + REREAD_NS)) {
        const char *path = getenv("CLOCKSHIFT_FILE");
        int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
        if (fd >= 0) {
            char text[32];
            ssize_t n = read(fd, text, sizeof text - 1);
            close(fd);
            if (n > 0) {
                text[n] = '\0';
                atomic_store(&offset, strtoll(text, NULL, 10) * NS);
            }
        }
    }
    return atomic_load(&offset);
}

static void shift(struct timespec *ts) {
    long long t = ts->tv_sec * NS + ts->tv_nsec + offset_ns();
    ts->tv_sec = t / NS;
    ts->tv_nsec = t % NS;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    int status = real_clock_gettime()(clock, ts);
    if (status == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        shift(ts);
    }
    return status;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec ts;
    int status = clock_gettime(CLOCK_REALTIME, &ts);
    if (status == 0 && tv != NULL) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return status;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        return (time_t)-1;
    }
    if (out != NULL) {
        *out = ts.tv_sec;
    }
    return ts.tv_sec;
}
