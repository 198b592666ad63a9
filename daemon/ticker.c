/* ticker.c - a thread that calls one function every few seconds (see
 * ticker.h). */
#include <errno.h>
#include <time.h>
#include "kv_proto.h" /* kv_deadline_ms */
#include "ticker.h"

double kvd_mono_s(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint64_t kvd_mono_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void *ticker_main(void *arg)
{
        struct kvd_ticker *t = arg;
        const uint32_t     ms = (uint32_t)(t->every * 1000.0);

        pthread_mutex_lock(&t->mu);
        while (!t->stopping) {
                struct timespec until;

                kv_deadline_ms(&until, ms);
                /* wakes at the period or at kvd_ticker_stop; a spurious
                 * wake only makes one call early */
                pthread_cond_timedwait(&t->cv, &t->mu, &until);
                if (t->stopping)
                        break;
                pthread_mutex_unlock(&t->mu);
                t->tick(t->arg, kvd_mono_s());
                pthread_mutex_lock(&t->mu);
        }
        pthread_mutex_unlock(&t->mu);
        return NULL;
}

int kvd_ticker_start(struct kvd_ticker *t, double every, void (*tick)(void *arg, double now), void *arg)
{
        pthread_condattr_t ca;
        int                r;

        if (t->running)
                return 0;
        if (!(every > 0.0) || !tick)
                return -EINVAL;
        t->every = every;
        t->tick = tick;
        t->arg = arg;
        t->stopping = 0;
        if ((r = pthread_condattr_init(&ca)))
                return -r;
        if ((r = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)) || (r = pthread_cond_init(&t->cv, &ca))) {
                pthread_condattr_destroy(&ca);
                return -r;
        }
        pthread_condattr_destroy(&ca);
        if ((r = pthread_mutex_init(&t->mu, NULL))) {
                pthread_cond_destroy(&t->cv);
                return -r;
        }
        if ((r = pthread_create(&t->thread, NULL, ticker_main, t))) {
                pthread_mutex_destroy(&t->mu);
                pthread_cond_destroy(&t->cv);
                return -r;
        }
        t->running = 1;
        return 0;
}

void kvd_ticker_stop(struct kvd_ticker *t)
{
        if (!t->running)
                return;
        pthread_mutex_lock(&t->mu);
        t->stopping = 1;
        pthread_cond_signal(&t->cv);
        pthread_mutex_unlock(&t->mu);
        pthread_join(t->thread, NULL);
        pthread_mutex_destroy(&t->mu);
        pthread_cond_destroy(&t->cv);
        t->running = 0;
}
