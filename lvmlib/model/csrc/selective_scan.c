
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif
typedef struct {
    const float *u, *dt, *A, *B, *C, *D, *dy;
    float *y, *du, *ddt, *dA, *dD;
    int64_t batch, ed, len, n;
    int64_t su[3], sdt[3], sy[3], sdy[3], sdu[3], sddt[3];  /* strides (b, d, t) */
    int64_t sB[2], sC[2];                                   /* strides (b, t); n is contiguous */
} ScanArgs;

static inline float exp2_fast(float x) {  /* 2^x, degree-5 minimax polynomial (rel. err 2e-7); vectorises */
    x = x > -126.0f ? x : -126.0f;                      /* vmaxps / vminps (-ffinite-math-only) */
    x = x < 126.0f ? x : 126.0f;
    float k = __builtin_rintf(x), f = x - k;          /* x = k + f, |f| <= 1/2 */
    float p = 1.3308824272826314e-3f;
    p = p * f + 9.671516716480255e-3f; p = p * f + 5.550582334399223e-2f;
    p = p * f + 2.4022242426872253e-1f; p = p * f + 6.931470632553101e-1f; p = p * f + 1.0f;
    int32_t i = ((int32_t)k + 127) << 23;             /* 2^k built in the exponent bits */
    float s; memcpy(&s, &i, 4);
    return p * s;
}
#define LOG2E 1.44269504088896341f  /* exp(dt * A) = 2^((dt * log2 e) * A) */

static unsigned ftz_on(void) {  /* flush denormals: decayed states must not stall the FPU */
#if defined(__SSE__)
    unsigned old = _mm_getcsr(); _mm_setcsr(old | 0x8040); return old;
#else
    return 0;
#endif
}
static void ftz_off(unsigned old) {
#if defined(__SSE__)
    _mm_setcsr(old);
#else
    (void)old;
#endif
}

int scan_fwd(const ScanArgs *a, int64_t d0, int64_t d1) {
    const int64_t N = a->n, L = a->len;
    float *h = malloc(N * sizeof(float));
    if (!h) return 1;
    unsigned old = ftz_on();
    for (int64_t b = 0; b < a->batch; b++) {
        for (int64_t d = d0; d < d1; d++) {
            const float *u = a->u + b * a->su[0] + d * a->su[1], *dtp = a->dt + b * a->sdt[0] + d * a->sdt[1];
            const float *Ad = a->A + d * N, Dd = a->D ? a->D[d] : 0.0f;
            float *y = a->y + b * a->sy[0] + d * a->sy[1];
            memset(h, 0, N * sizeof(float));
            for (int64_t t = 0; t < L; t++) {
                const float dt = dtp[t * a->sdt[2]], ut = u[t * a->su[2]], dtu = dt * ut, dt2 = dt * LOG2E;
                const float *bt = a->B + b * a->sB[0] + t * a->sB[1], *ct = a->C + b * a->sC[0] + t * a->sC[1];
                float acc = 0.0f;
                #pragma omp simd reduction(+:acc)
                for (int64_t n = 0; n < N; n++) {
                    float v = exp2_fast(dt2 * Ad[n]) * h[n] + dtu * bt[n];
                    h[n] = v;
                    acc += v * ct[n];
                }
                y[t * a->sy[2]] = acc + Dd * ut;
            }
        }
    }
    ftz_off(old);
    free(h);
    return 0;
}

/* dB, dC: this thread's private (batch, len, n) accumulators; rows d0..d1 of dA and dD are its own. */
int scan_bwd(const ScanArgs *a, float *dB, float *dC, int64_t d0, int64_t d1) {
    const int64_t N = a->n, L = a->len;
    float *hs = malloc(((2 * L + 2) * N) * sizeof(float));
    if (!hs) return 1;
    float *das = hs + (L + 1) * N, *dh = das + L * N;  /* hs row t+1 = h_t, row 0 = h_{-1} = 0 */
    unsigned old = ftz_on();
    for (int64_t b = 0; b < a->batch; b++) {
        for (int64_t d = d0; d < d1; d++) {
            const float *u = a->u + b * a->su[0] + d * a->su[1], *dtp = a->dt + b * a->sdt[0] + d * a->sdt[1];
            const float *dy = a->dy + b * a->sdy[0] + d * a->sdy[1], *Ad = a->A + d * N;
            const float Dd = a->D ? a->D[d] : 0.0f;
            float *dAd = a->dA + d * N, dD = 0.0f;
            memset(hs, 0, N * sizeof(float));
            for (int64_t t = 0; t < L; t++) {  /* recompute the states of this channel */
                const float dt = dtp[t * a->sdt[2]], dtu = dt * u[t * a->su[2]], dt2 = dt * LOG2E;
                const float *bt = a->B + b * a->sB[0] + t * a->sB[1], *hp = hs + t * N;
                float *hn = hs + (t + 1) * N, *da = das + t * N;
                #pragma omp simd
                for (int64_t n = 0; n < N; n++) {
                    float e = exp2_fast(dt2 * Ad[n]);
                    da[n] = e;
                    hn[n] = e * hp[n] + dtu * bt[n];
                }
            }
            memset(dh, 0, N * sizeof(float));
            for (int64_t t = L - 1; t >= 0; t--) {  /* reverse recurrence */
                const float g = dy[t * a->sdy[2]], ut = u[t * a->su[2]], dt = dtp[t * a->sdt[2]], dtu = dt * ut;
                const float *bt = a->B + b * a->sB[0] + t * a->sB[1], *ct = a->C + b * a->sC[0] + t * a->sC[1];
                const float *hn = hs + (t + 1) * N, *hp = hs + t * N, *da = das + t * N;
                float *dBt = dB + (b * L + t) * N, *dCt = dC + (b * L + t) * N, sdhb = 0.0f, gdA = 0.0f;
                #pragma omp simd reduction(+:sdhb, gdA)
                for (int64_t n = 0; n < N; n++) {
                    float dhn = dh[n] + g * ct[n];     /* dL/dh_t */
                    float dhe = dhn * da[n];           /* carried to h_{t-1} */
                    float ga = dhe * hp[n];            /* dL/d(dt * A) */
                    dCt[n] += g * hn[n];
                    dBt[n] += dhn * dtu;
                    dAd[n] += ga * dt;
                    sdhb += dhn * bt[n];
                    gdA += ga * Ad[n];
                    dh[n] = dhe;
                }
                dD += g * ut;
                a->du[b * a->sdu[0] + d * a->sdu[1] + t * a->sdu[2]] = g * Dd + sdhb * dt;
                a->ddt[b * a->sddt[0] + d * a->sddt[1] + t * a->sddt[2]] = gdA + sdhb * ut;
            }
            if (a->dD) a->dD[d] += dD;
        }
    }
    ftz_off(old);
    free(hs);
    return 0;
}

/* Threads split ED. Built with -fopenmp after torch is loaded, "libgomp.so.1" resolves to torch's own
   runtime, so these regions reuse torch's idle threads instead of fighting them for the cores. */
int scan_openmp(void) {
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}
int scan_fwd_par(const ScanArgs *a, int nthreads) {
    int err = 0;
#if defined(_OPENMP)
    #pragma omp parallel num_threads(nthreads) reduction(|:err)
    {
        int64_t nt = omp_get_num_threads(), i = omp_get_thread_num();
        err |= scan_fwd(a, a->ed * i / nt, a->ed * (i + 1) / nt);
    }
#else
    (void)nthreads;
    err = scan_fwd(a, 0, a->ed);
#endif
    return err;
}
/* dBC: (2, nthreads, batch, len, n) zeroed; thread i accumulates into dBC[0, i] (dB) and dBC[1, i] (dC). */
int scan_bwd_par(const ScanArgs *a, float *dBC, int nthreads) {
    const int64_t part = a->batch * a->len * a->n;
    int err = 0;
#if defined(_OPENMP)
    #pragma omp parallel num_threads(nthreads) reduction(|:err)
    {
        int64_t nt = omp_get_num_threads(), i = omp_get_thread_num();
        err |= scan_bwd(a, dBC + i * part, dBC + (nthreads + i) * part, a->ed * i / nt, a->ed * (i + 1) / nt);
    }
#else
    err = scan_bwd(a, dBC, dBC + nthreads * part, 0, a->ed);
#endif
    return err;
}
