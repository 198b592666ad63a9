/* ticker.h - a thread that calls one function every few seconds until it is
 * stopped.  The listener guard (listen_guard.c) and the reaper (reaper.c)
 * each run on one, so that what they read from /proc never holds up the
 * serving thread.
 */
#ifndef KVD_TICKER_H
#define KVD_TICKER_H

#include <pthread.h>
#include <stdint.h>

struct kvd_ticker {
        pthread_t       thread;
        pthread_mutex_t mu;
        pthread_cond_t  cv;
        int             running;  /* started and not yet joined */
        int             stopping; /* under mu */
        double          every;    /* seconds between calls */
        void          (*tick)(void *arg, double now);
        void           *arg;
};

/* Now, in seconds of CLOCK_MONOTONIC (the daemon's clock for periods and
 * graces: a step of the wall clock stretches none of them). */
double kvd_mono_s(void);
/* The same in whole milliseconds. */
uint64_t kvd_mono_ms(void);

/* Starts t's thread, which calls tick(arg, kvd_mono_s()) every `every`
 * seconds (> 0) until kvd_ticker_stop; nothing if it is running already.
 * t must be zeroed before its first start.  0, or -errno. */
int kvd_ticker_start(struct kvd_ticker *t, double every, void (*tick)(void *arg, double now), void *arg);

/* Wakes and joins the thread (after the call in progress, if any);
 * nothing if it is not running. */
void kvd_ticker_stop(struct kvd_ticker *t);

#endif
