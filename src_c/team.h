/* Helpers for the threads of one OpenMP parallel region (a team), used by the Cython loops:
 * the team's size, a spin barrier (also the barrier callback of the kernels' team GEMMs),
 * the CPU's pause hint, and a prefetch of a whole row. */
#ifndef FASTRNN_TEAM_H
#define FASTRNN_TEAM_H

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <sched.h>
#define FR_YIELD() sched_yield()
#else
#define FR_YIELD() ((void)0)
#endif
#if defined(__x86_64__) || defined(__i386__)
#define FR_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define FR_PAUSE() __asm__ __volatile__("yield")
#else
#define FR_PAUSE() ((void)0)
#endif

/* Ask for `bytes` from p to be brought into cache (a hint: never faults). */
static inline void fr_prefetch(const void *p, long bytes) {
#if defined(__GNUC__) || defined(__clang__)
    for (long i = 0; i < bytes; i += 64) __builtin_prefetch((const char *)p + i);
#else
    (void)p; (void)bytes;
#endif
}

/* Threads in the enclosing parallel region: OpenMP may give fewer than asked for. */
static inline int fr_team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* A barrier for the threads of one parallel region. The column-split recurrence meets
 * once per time step, and its steps are short: libgomp's barrier costs about as much as
 * such a step, this one (an atomic count and a generation to spin on) a cache-line
 * transfer. After a while it yields, so an oversubscribed machine still progresses. */
typedef struct { int count; int generation; } fr_spin_barrier;

static inline void fr_spin_wait(fr_spin_barrier *b, int nthreads) {
    int generation = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == nthreads) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->generation, generation + 1, __ATOMIC_RELEASE);
        return;
    }
    for (unsigned spins = 0; __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == generation;
         spins++) {
        if (spins < 20000) FR_PAUSE(); else FR_YIELD();
    }
}

/* fr_spin_wait for the whole team of the enclosing parallel region, as a callback
 * (fr_barrier_fn of kernels.h) */
static void fr_team_barrier(void *barrier) {
    fr_spin_wait((fr_spin_barrier *)barrier, fr_team_size());
}

#endif
