/* Depthwise k x k convolutions (stride 1, zero padding k / 2) over channels-last token maps, for LIFE on CPU.
 *
 * A map is B images of H x W pixels, each pixel G groups of cg dense channels (C = G * cg channels), at any
 * batch / pixel / group stride: the patch tokens of LIFE's (B, N, 3, D) buffer are such a map (G = 3: q, k, v)
 * and can be read and written in place, without gathering them into a dense grid first.
 *
 *   life_dw_conv:  o[b, p, c] = add[b, p, c] + sum_t x[b, p + t, c] * w[c][t]   (add optional; t over the k x k taps)
 *                  and optionally cp[b, p, c] = x[b, p, c] (a copy of the input made while reading it)
 *                  with flip set, w's taps are reversed: the input gradient of the convolution
 *   life_dw_wgrad: gw[c][t]   = sum_{b, p} g[b, p, c] * x[b, p + t, c]           (the weight gradient)
 *   life_dw_backward: the three of a backward pass at once, each image read once: the convolution of x again
 *                  (recomputed), the weight gradient for g, and add + the flipped convolution of g
 *
 * w and gw are PyTorch's (C, 1, k, k) weights, contiguous. Each thread copies one image at a time into a dense
 * buffer with a zero border (zeroed once); the convolution keeps 8 output pixels of one vector of channels
 * in registers (the inputs are read from that buffer, in cache) and stores the blocks straight into the output map
 * where its groups are whole vectors; the weight gradient keeps the k sums of one kernel row in registers. Threads
 * split the batch; partial weight gradients are added in a fixed order, so results do not depend on timing. C99
 * with GCC vector extensions and OpenMP; built and loaded by dwconv.py.
 */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */
#include <stdlib.h>
#include <string.h>

/* one vector register of floats: 16 with AVX-512, 8 with AVX, else 4 (a wider vector type than the target has is
   split by the compiler, several times slower) */
#if defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif
typedef float vf __attribute__((vector_size(VL * 4), aligned(4))); /* unaligned access allowed */

/* streaming (non-temporal) stores of one vector to an address aligned to a vector: they go to memory without reading
   the line first and without filling the cache, for results written once and read later by someone else (x86) */
#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE__)
#include <immintrin.h>
#define STREAMS 1
#if defined(__AVX512F__)
#define STREAM(dst, src) _mm512_stream_ps((dst), _mm512_loadu_ps(src))
#elif defined(__AVX__)
#define STREAM(dst, src) _mm256_stream_ps((dst), _mm256_loadu_ps(src))
#else
#define STREAM(dst, src) _mm_stream_ps((dst), _mm_loadu_ps(src))
#endif
#else
#define STREAMS 0
#endif
#define STREAM_BYTES (4L << 20) /* a cascade's result this large or larger is streamed (to_rows) */
#define UW 8 /* output pixels per register block */
#define XREGS (VL == 16) /* AVX-512 has 32 vector registers: room for a row of inputs */

/* Built with -DLIFE_PHASES (LIFEVIT_NATIVE_PHASES=1, dwconv.py) the cascade times its phases on its first thread
   (TICK: the time since the thread's last tick goes to one phase of the pass) and life_cascade_phases hands the sums
   over; otherwise TICK is nothing. For benchmarks/life_overhead.py --native-phases, which says where a layer's time
   goes. */
enum { PH_MATMUL1, PH_MATMUL, PH_READ, PH_PAD, PH_CONV, PH_WGRAD, PH_BIAS, PH_WRITE, PH_N };
#ifdef LIFE_PHASES
#include <time.h>
static double phase_s[2][PH_N]; /* [forward, backward][phase]: seconds on thread 0, summed over calls */
static __thread double tick_at;
static void tick(int t, int pass, int phase) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const double now = ts.tv_sec + 1e-9 * ts.tv_nsec;
    if (t == 0 && phase >= 0) phase_s[pass][phase] += now - tick_at;
    tick_at = now;
}
#define TICK(t, pass, phase) tick((t), (pass), (phase))
#else
#define TICK(t, pass, phase) ((void)0)
#endif

/* the phase sums (2 * PH_N doubles: forward then backward, in enum order) into out, and reset; returns how many
   phases there are per pass, 0 (out untouched) when the kernel was built without LIFE_PHASES */
int life_cascade_phases(double *out) {
#ifdef LIFE_PHASES
    memcpy(out, phase_s, sizeof(phase_s));
    memset(phase_s, 0, sizeof(phase_s));
    return PH_N;
#else
    (void)out;
    return 0;
#endif
}

typedef struct {
    const float *p;
    long sb, sp, sg; /* batch, pixel (h * W + w), group strides, in floats; channels of a group are dense */
} map_t;

typedef struct {
    int B, H, W, G, cg, C, k, Wp, Cp; /* Wp: padded row width, rounded so that rows are whole register blocks; Cp:
                                         a pixel's channels in the padded buffers, rounded up to whole vectors */
} geom_t;

static geom_t geometry(int B, int H, int W, int G, int cg, int k) {
    geom_t g = {B, H, W, G, cg, G * cg, k, 0, 0};
    g.Wp = (W + UW - 1) / UW * UW + k - 1;
    g.Cp = (g.C + VL - 1) / VL * VL;
    return g;
}

/* n floats, zeroed, on a 64-byte boundary: with pixel strides of whole vectors (Cp) every vector load at a vector
   offset from the buffers below stays within one cache line (a misaligned one costs two); NULL if out of memory */
static float *zeroed(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, sizeof(float) * (n ? n : 1)) != 0) return NULL;
    memset(p, 0, sizeof(float) * n);
    return p;
}

/* A thread's padded image: (H + k - 1, Wp, Cp) dense. Its border (k / 2 rows above and below, k / 2 columns left and
   the rest right) is zeroed once when the buffer is made and never written; each image rewrites the interior only. */
static float *new_pad(const geom_t *g, size_t extra) {
    return zeroed((size_t)(g->H + g->k - 1) * g->Wp * g->Cp + extra);
}

/* image b of m into pad's interior, and into the map cp as well where cp->p is set (a copy made while the image
   is read anyway); vector copies where groups are whole vectors */
static void fill_pad(const geom_t *g, const map_t *m, int b, float *pad, const map_t *cp) {
    const int r = g->k / 2, vec = g->cg % VL == 0;
    for (int h = 0; h < g->H; h++)
        for (int w = 0; w < g->W; w++) {
            const long p = (long)h * g->W + w;
            const float *src = m->p + b * m->sb + p * m->sp;
            float *dst = pad + ((size_t)(h + r) * g->Wp + w + r) * g->Cp;
            for (int gi = 0; gi < g->G; gi++) {
                const float *s = src + gi * m->sg;
                float *d = dst + gi * g->cg, *c = cp->p ? (float *)cp->p + b * cp->sb + p * cp->sp + gi * cp->sg : NULL;
                if (vec)
                    for (int i = 0; i < g->cg; i += VL) {
                        const vf v = *(const vf *)(s + i);
                        *(vf *)(d + i) = v;
                        if (c) *(vf *)(c + i) = v;
                    }
                else {
                    memcpy(d, s, sizeof(float) * g->cg);
                    if (c) memcpy(c, s, sizeof(float) * g->cg);
                }
            }
        }
}

/* output row h of image b. Where every group is whole vectors (cg a multiple of VL) the register blocks go straight
   to the output map o (plus the add map a, if any); otherwise into row (Wp, Cp) dense, which the caller scatters. K is
   known at compile time. */
#define DEFINE_CONV(K)                                                                                             \
    static void conv_row_##K(const geom_t *g, const float *pad, const float *w, int h, float *row, const map_t *o,  \
                             const map_t *a, int b) {                                                              \
        const int C = g->Cp, direct = g->cg % VL == 0; /* every vector of the padded channels, all aligned */    \
        for (int c0 = 0; c0 < C; c0 += VL) {                                                                       \
            const long goff_o = (long)(c0 / g->cg) * o->sg + c0 % g->cg;                                           \
            const long goff_a = a->p ? (long)(c0 / g->cg) * a->sg + c0 % g->cg : 0;                                \
            for (int w0 = 0; w0 < g->W; w0 += UW) {                                                                \
                vf acc[UW] = {{0}};                                                                               \
                for (int i = 0; i < K; i++) {                                                                      \
                    const float *in = pad + ((size_t)(h + i) * g->Wp + w0) * C + c0;                               \
                    if (XREGS) { /* the row's UW + K - 1 inputs in registers, each loaded once */                  \
                        vf xs[UW + K - 1];                                                                         \
                        for (int u = 0; u < UW + K - 1; u++) xs[u] = *(const vf *)(in + (size_t)u * C);           \
                        for (int j = 0; j < K; j++) {                                                              \
                            const vf wv = *(const vf *)(w + (size_t)(i * K + j) * C + c0);                         \
                            for (int u = 0; u < UW; u++) acc[u] += xs[u + j] * wv;                                 \
                        }                                                                                          \
                    } else { /* fewer registers: every input loaded where it is used */                           \
                        for (int j = 0; j < K; j++) {                                                              \
                            const vf wv = *(const vf *)(w + (size_t)(i * K + j) * C + c0);                         \
                            for (int u = 0; u < UW; u++) acc[u] += *(const vf *)(in + (size_t)(u + j) * C) * wv;   \
                        }                                                                                          \
                    }                                                                                              \
                }                                                                                                  \
                if (direct) {                                                                                      \
                    const int n = g->W - w0 < UW ? g->W - w0 : UW;                                                 \
                    for (int u = 0; u < n; u++) {                                                                  \
                        const long p = (long)h * g->W + w0 + u;                                                    \
                        vf v = acc[u];                                                                            \
                        if (a->p) v += *(const vf *)(a->p + b * a->sb + p * a->sp + goff_a);                      \
                        *(vf *)((float *)o->p + b * o->sb + p * o->sp + goff_o) = v;                              \
                    }                                                                                              \
                } else {                                                                                           \
                    for (int u = 0; u < UW; u++) *(vf *)(row + (size_t)(w0 + u) * C + c0) = acc[u];               \
                }                                                                                                  \
            }                                                                                                      \
        }                                                                                                          \
    }

/* image b's contribution to gw (k * k, C), from the padded input and the output gradient map gm; vectors of channels
   within each group (gm's groups need not be adjacent), the channels after a group's last vector one by one */
#define DEFINE_WGRAD(K)                                                                                            \
    static void wgrad_##K(const geom_t *g, const float *pad, const map_t *gm, int b, float *gw) {                \
        const int C = g->C, Cp = g->Cp; /* gw's channels, the padded image's */                                     \
        for (int gi = 0; gi < g->G; gi++) {                                                                        \
            const float *grad = gm->p + b * gm->sb + gi * gm->sg;                                                  \
            int cc = 0;                                                                                            \
            for (; cc + VL <= g->cg; cc += VL) {                                                                   \
                const int c0 = gi * g->cg + cc;                                                                    \
                for (int i = 0; i < K; i++) { /* one kernel row at a time: K sums in registers */                \
                    vf acc[K];                                                                                     \
                    for (int j = 0; j < K; j++) acc[j] = *(vf *)(gw + (size_t)(i * K + j) * C + c0);               \
                    for (int h = 0; h < g->H; h++)                                                                 \
                        for (int x = 0; x < g->W; x++) {                                                           \
                            const vf gv = *(const vf *)(grad + (long)(h * g->W + x) * gm->sp + cc);                \
                            const float *p = pad + ((size_t)(h + i) * g->Wp + x) * Cp + c0;                        \
                            for (int j = 0; j < K; j++) acc[j] += gv * *(const vf *)(p + (size_t)j * Cp);          \
                        }                                                                                          \
                    for (int j = 0; j < K; j++) *(vf *)(gw + (size_t)(i * K + j) * C + c0) = acc[j];               \
                }                                                                                                  \
            }                                                                                                      \
            for (; cc < g->cg; cc++) {                                                                             \
                const int c0 = gi * g->cg + cc;                                                                    \
                for (int h = 0; h < g->H; h++)                                                                     \
                    for (int x = 0; x < g->W; x++) {                                                               \
                        const float gv = grad[(long)(h * g->W + x) * gm->sp + cc];                                 \
                        for (int i = 0; i < K; i++)                                                                \
                            for (int j = 0; j < K; j++)                                                            \
                                gw[(size_t)(i * K + j) * C + c0] +=                                                \
                                    gv * pad[((size_t)(h + i) * g->Wp + x + j) * Cp + c0];                         \
                    }                                                                                              \
            }                                                                                                      \
        }                                                                                                          \
    }

DEFINE_CONV(3)
DEFINE_CONV(5)
DEFINE_CONV(7)
DEFINE_WGRAD(3)
DEFINE_WGRAD(5)
DEFINE_WGRAD(7)

/* image b of o = a + conv(pad) (a optional): pad holds the image with its zero border, row is a (Wp, Cp) scratch row */
static void conv_image(const geom_t *g, const float *pad, const float *w, float *row, const map_t *o, const map_t *a,
                       int b) {
    for (int h = 0; h < g->H; h++) {
        if (g->k == 3) conv_row_3(g, pad, w, h, row, o, a, b);
        else if (g->k == 5) conv_row_5(g, pad, w, h, row, o, a, b);
        else conv_row_7(g, pad, w, h, row, o, a, b);
        if (g->cg % VL == 0) continue; /* stored straight into o */
        for (int x = 0; x < g->W; x++) { /* scatter the row into the groups of o */
            const long p = (long)(h * g->W + x);
            for (int gi = 0; gi < g->G; gi++) {
                float *dst = (float *)o->p + b * o->sb + p * o->sp + gi * o->sg;
                const float *src = row + (size_t)x * g->Cp + gi * g->cg;
                if (a->p) {
                    const float *ad = a->p + b * a->sb + p * a->sp + gi * a->sg;
                    for (int c = 0; c < g->cg; c++) dst[c] = ad[c] + src[c];
                } else {
                    memcpy(dst, src, sizeof(float) * g->cg);
                }
            }
        }
    }
}

static void wgrad_image(const geom_t *g, const float *pad, const map_t *gm, int b, float *gw) {
    if (g->k == 3) wgrad_3(g, pad, gm, b, gw);
    else if (g->k == 5) wgrad_5(g, pad, gm, b, gw);
    else wgrad_7(g, pad, gm, b, gw);
}

/* the threads' weight gradient sums part (nt of (k * k, C)) added in a fixed order, written (C, k * k) into gw */
static void sum_parts(const geom_t *g, const float *part, int nt, float *gw) {
    const int kk = g->k * g->k;
    const size_t n = (size_t)kk * g->C;
    for (int c = 0; c < g->C; c++)
        for (int tap = 0; tap < kk; tap++) {
            float s = 0;
            for (int t = 0; t < nt; t++) s += part[n * t + (size_t)tap * g->C + c];
            gw[(size_t)c * kk + tap] = s;
        }
}

int life_dw_supports(int k) { return k == 3 || k == 5 || k == 7; }

/* the smallest cascade result (bytes) written with streaming stores (tests make one that large) */
long life_cascade_stream_bytes(void) { return STREAMS ? STREAM_BYTES : -1; }

static int threads_for(int threads, int B) {
    int nt = threads < 1 ? 1 : threads > 256 ? 256 : threads;
    return nt > B ? B : nt;
}

/* the taps of weight (C, k * k) as the kernels read them: (k * k, Cp), the channels after C zero, reversed (the
   flipped kernel) when flip */
static float *tap_major(const float *weight, int C, int Cp, int kk, int flip) {
    float *w = zeroed((size_t)kk * Cp);
    if (w)
        for (int c = 0; c < C; c++)
            for (int t = 0; t < kk; t++) w[(size_t)(flip ? kk - 1 - t : t) * Cp + c] = weight[(size_t)c * kk + t];
    return w;
}

/* o = add + conv(x, weight); weight (C, k * k) contiguous (PyTorch's (C, 1, k, k)), spatially flipped when flip;
   add may be NULL; x is also copied into the map cp unless cp is NULL. Returns 0 on success. OpenMP: linked against
   the libgomp PyTorch has loaded, this runs on PyTorch's own worker threads (a second pool would compete with them
   for the cores). */
int life_dw_conv(const float *x, long xsb, long xsp, long xsg, const float *weight, int flip, float *o, long osb,
                 long osp, long osg, const float *add, long asb, long asp, long asg, float *cp, long csb, long csp,
                 long csg, int B, int H, int W, int G, int cg, int k, int threads) {
    if (!life_dw_supports(k) || B < 1 || H < 1 || W < 1 || G < 1 || cg < 1) return 1;
    const geom_t g = geometry(B, H, W, G, cg, k);
    const map_t xm = {x, xsb, xsp, xsg}, om = {o, osb, osp, osg}, am = {add, asb, asp, asg}, cm = {cp, csb, csp, csg};
    const int nt = threads_for(threads, B);
    float *w = tap_major(weight, g.C, g.Cp, k * k, flip);
    if (!w) return 2;
    int failed = 0;
#pragma omp parallel num_threads(nt) reduction(| : failed)
    {
        float *pad = new_pad(&g, (size_t)g.Wp * g.Cp);
        float *row = pad ? pad + (size_t)(g.H + k - 1) * g.Wp * g.Cp : NULL; /* (Wp, Cp) */
        if (!pad) failed = 1;
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            if (!pad) continue;
            fill_pad(&g, &xm, b, pad, &cm);
            conv_image(&g, pad, w, row, &om, &am, b);
        }
        free(pad);
    }
    free(w);
    return failed ? 3 : 0;
}

/* gw (C, k * k) = the weight gradient for input x and output gradient gmap. Returns 0 on success. */
int life_dw_wgrad(const float *x, long xsb, long xsp, long xsg, const float *gmap, long gsb, long gsp, long gsg,
                  float *gw, int B, int H, int W, int G, int cg, int k, int threads) {
    if (!life_dw_supports(k) || B < 1 || H < 1 || W < 1 || G < 1 || cg < 1) return 1;
    const geom_t g = geometry(B, H, W, G, cg, k);
    const map_t xm = {x, xsb, xsp, xsg}, gm = {gmap, gsb, gsp, gsg}, none = {NULL, 0, 0, 0};
    const int nt = threads_for(threads, B), kk = k * k;
    const size_t n = (size_t)kk * g.C;
    float *part = zeroed(n * nt); /* each thread's sums, (k * k, C) */
    if (!part) return 2;
    int failed = 0;
#pragma omp parallel for num_threads(nt) schedule(static, 1) reduction(| : failed)
    for (int t = 0; t < nt; t++) {
        float *pad = new_pad(&g, 0);
        if (!pad) {
            failed = 1;
            continue;
        }
        for (int b = (int)((long)B * t / nt); b < (int)((long)B * (t + 1) / nt); b++) {
            fill_pad(&g, &xm, b, pad, &none);
            wgrad_image(&g, pad, &gm, b, part + n * t);
        }
        free(pad);
    }
    if (!failed) sum_parts(&g, part, nt, gw);
    free(part);
    return failed ? 3 : 0;
}

/* One backward pass of o = conv(x): xo = conv(x) again (the forward output, recomputed), gw (C, k * k) = its weight
   gradient for the output gradient gmap, and io = add + the flipped convolution of gmap (the input gradient; add
   optional). Each image of x and of gmap is read from memory once, into the thread's padded buffers. Returns 0 on
   success. */
int life_dw_backward(const float *x, long xsb, long xsp, long xsg, const float *gmap, long gsb, long gsp, long gsg,
                     const float *weight, float *xo, long osb, long osp, long osg, float *io, long isb, long isp,
                     long isg, const float *add, long asb, long asp, long asg, float *gw, int B, int H, int W, int G,
                     int cg, int k, int threads) {
    if (!life_dw_supports(k) || B < 1 || H < 1 || W < 1 || G < 1 || cg < 1) return 1;
    const geom_t g = geometry(B, H, W, G, cg, k);
    const map_t xm = {x, xsb, xsp, xsg}, gm = {gmap, gsb, gsp, gsg}, om = {xo, osb, osp, osg},
                im = {io, isb, isp, isg}, am = {add, asb, asp, asg}, none = {NULL, 0, 0, 0};
    const int nt = threads_for(threads, B), kk = k * k;
    const size_t n = (size_t)kk * g.C, pad_n = (size_t)(g.H + k - 1) * g.Wp * g.Cp;
    float *w = tap_major(weight, g.C, g.Cp, kk, 0), *wf = tap_major(weight, g.C, g.Cp, kk, 1);
    float *part = zeroed(n * nt); /* each thread's weight gradient sums, (k * k, C) */
    int failed = !w || !wf || !part;
    if (!failed) {
#pragma omp parallel for num_threads(nt) schedule(static, 1) reduction(| : failed)
        for (int t = 0; t < nt; t++) {
            float *pad = new_pad(&g, pad_n + (size_t)g.Wp * g.Cp); /* x's image, then gmap's image, then a row */
            if (!pad) {
                failed = 1;
                continue;
            }
            float *pad_g = pad + pad_n, *row = pad_g + pad_n;
            for (int b = (int)((long)B * t / nt); b < (int)((long)B * (t + 1) / nt); b++) {
                fill_pad(&g, &xm, b, pad, &none);
                fill_pad(&g, &gm, b, pad_g, &none);
                conv_image(&g, pad, w, row, &om, &none, b);
                wgrad_image(&g, pad, &gm, b, part + n * t); /* gmap's image is in cache: just read */
                conv_image(&g, pad_g, wf, row, &im, &am, b);
            }
            free(pad);
        }
    }
    if (!failed) sum_parts(&g, part, nt, gw);
    free(part);
    free(w);
    free(wf);
    return failed ? 3 : 0;
}

/* ------------------------------------------------------------------------------------------- LIFE's whole cascade
   One LIFE layer's scales a few images at a time (a tile), every intermediate in the thread's cache: for a tile,
     y_1 = x W_1^T + b_1         (n, 3 c_1)   (or y_1 given, the caller's scale-1 projection, when w1 is NULL)
     x_s = y_{s-1}, its patch tokens through the depthwise conv s (per image; prefix tokens as they are)
     y_s = x_s P_s^T + p_s       (n, 3 c_s)
   every y_s kept in cache until the tile's last scale is done, then the tile's rows of out (B, N, 3, D) contiguous
   written, each row whole: out[b, t, g, off_s : off_s + c_s] for every s. n = tile * N rows. What goes to memory is
   x (or y_1) read once and out written once, in order (written scale by scale instead, a third of each row's cache
   lines at a time, out costs about three times its bytes in memory traffic); the separate operations write and read
   every scale's input and output (several times the layer's own bytes) and run 2-3x slower than in cache. The
   projections are the Fortran BLAS sgemm of the caller (PyTorch's), one single-threaded call per tile on each of our
   threads. */
typedef void (*sgemm_t)(const char *, const char *, const int *, const int *, const int *, const float *,
                        const float *, const int *, const float *, const int *, const float *, float *, const int *);

/* c (n, m) row-major, leading dimension ldc, = a (n, k; leading dimension lda) w^T (w: (m, k) contiguous) + bias (m;
   may be NULL). The integers go to sgemm as 64-bit values: read as 32-bit (LP64 BLAS) or 64-bit (ILP64) on a
   little-endian machine, both are right. */
static void linear_rows(sgemm_t sgemm, const float *a, long lda, long n, long k, const float *w, const float *bias,
                        long m, float *c, long ldc) {
    const float one = 1, zero = 0;
    if (bias)
        for (long r = 0; r < n; r++) memcpy(c + r * ldc, bias, sizeof(float) * m);
    /* column-major: c^T (m, n) = w^T (w read as (k, m))^T a^T (a read as (k, n)) */
    sgemm("T", "N", (const int *)&m, (const int *)&n, (const int *)&k, &one, w, (const int *)&k, a,
          (const int *)&lda, bias ? &one : &zero, c, (const int *)&ldc);
}

/* One cascade call, forward or backward: its arguments, its shapes (cascade_shapes) and what its threads share. */
typedef struct {
    int S, B, N, P, H, W, D, cmax, tile, offs[8];
    long ld[8];           /* a row of scale s in the tile buffers (both passes): 3 c_s rounded up to 16 floats */
    const int *widths, *ks;
    geom_t geo[8];        /* conv s = 1 .. S - 1 (it reads scale s - 1) */
    size_t pad_n[8], rows; /* floats of conv s's padded image; of the longest padded row */
    size_t tn;            /* floats of one tile's scale, (tile * N, max ld) */
    float *taps[8], *flips[8];
    sgemm_t sgemm;
    const float *const *pws, *const *pbs;
    /* forward; x, w1 also in a backward pass that includes scale 1's projection */
    const float *x, *w1, *b1, *pwp[8], *pbp[8]; /* w1, b1, pws, pbs padded to ld (or themselves, see padded) */
    long xsb, xst;
    int dim;
    float *out;
    int stream; /* out written with streaming stores (to_rows) */
    int *next;  /* the forward's next tile to take (forward_tile), shared by its threads */
    /* backward */
    const float *y, *g; /* the forward's out and its gradient */
    float *gy1, *parts, *const *gpbs; /* gpbs[s] NULL: no bias (no bias gradient) */
    float *gx, *gw1, *gb1;            /* scale 1's projection's gradients, or NULL */
    size_t part_n, dw_n[8], pw_n[8], w1_off; /* w1_off: gw1's sums in a thread's part, then gb1's */
} cascade_t;

/* A cascade's shapes into c, checked: the widths' sum D, the largest width cmax, each scale's offset in a slot row
   offs[s], and for conv s its geometry geo[s], the floats of its padded image pad_n[s]; rows: the longest padded row of
   any conv. 0 if the kernel takes them. */
static int cascade_shapes(cascade_t *c) {
    const int S = c->S;
    if (S < 2 || S > 8 || c->B < 1 || c->P < 0 || c->tile < 1) return 1;
    const int H = c->H, W = c->W;
    if (H < 1 || W < 1 || c->N != c->P + H * W) return 1;
    c->D = c->cmax = 0;
    c->rows = 0;
    long ldmax = 0;
    for (int s = 0; s < S; s++) {
        if (c->widths[s] < 1 || (s && !life_dw_supports(c->ks[s - 1]))) return 1;
        c->offs[s] = c->D;
        c->ld[s] = (3L * c->widths[s] + 15) / 16 * 16;
        ldmax = c->ld[s] > ldmax ? c->ld[s] : ldmax;
        c->D += c->widths[s];
        c->cmax = c->widths[s] > c->cmax ? c->widths[s] : c->cmax;
        if (s) {
            c->geo[s] = geometry(1, H, W, 3, c->widths[s - 1], c->ks[s - 1]);
            const geom_t *g = &c->geo[s];
            c->pad_n[s] = (size_t)(H + g->k - 1) * g->Wp * g->Cp;
            c->rows = (size_t)g->Wp * g->Cp > c->rows ? (size_t)g->Wp * g->Cp : c->rows;
        }
    }
    c->tn = (size_t)c->tile * c->N * ldmax;
    return 0;
}

/* Run body(c, t, nt) for t = 0 .. nt - 1 on nt threads; on the calling thread alone when nt is 1, outside any parallel
   region: inside even a one-thread region MKL's own threads are started anew, several times the work of a small
   projection (a LIFE layer at batch 1: 0.60 in a region against 0.40 ms without, docs/performance.md). Returns the
   bodies' failures or-ed. */
static int run_threads(int (*body)(const cascade_t *, int, int), const cascade_t *c, int nt) {
    if (nt == 1) return body(c, 0, 1);
    int failed = 0;
#pragma omp parallel for num_threads(nt) schedule(static, 1) reduction(| : failed)
    for (int t = 0; t < nt; t++) failed |= body(c, t, nt);
    return failed;
}

/* w (rows, cols) row-major as a (prow, pcol) matrix, zero-padded: w itself where it needs no padding, else a copy
   that *own keeps for the caller to free; NULL for a NULL w, or (with *own NULL) when out of memory. Matmuls whose
   sizes are whole vectors run faster in MKL: at T2T-ViT-12's widths (86 / 85 / 85: rows of 258 and 255) 255 -> 255
   takes about 1.3x the time of 256 -> 256. */
static const float *padded(const float *w, int rows, int cols, long prow, long pcol, float **own) {
    *own = NULL;
    if (!w || (prow == rows && pcol == cols)) return w;
    if (!(*own = zeroed((size_t)prow * pcol))) return NULL;
    for (int r = 0; r < rows; r++) memcpy(*own + r * pcol, w + (size_t)r * cols, sizeof(float) * cols);
    return *own;
}

/* n floats from src to dst: with stream set, streaming stores where dst is aligned to a vector and n whole vectors,
   else memcpy; the caller fences (flush_streams) before anyone else reads dst */
static void put(int stream, float *dst, const float *src, long n) {
#if STREAMS
    if (stream && (size_t)dst % (VL * 4) == 0 && n % VL == 0) {
        for (long i = 0; i < n; i += VL) STREAM(dst + i, src + i);
        return;
    }
#else
    (void)stream;
#endif
    memcpy(dst, src, sizeof(float) * n);
}

static void flush_streams(void) {
#if STREAMS
    _mm_sfence(); /* streaming stores are weakly ordered: make them visible before the threads join */
#endif
}

/* rows [0, n) of a tile, each row whole: o[r, g, off_s : off_s + c_s] = ys[s][r, g * c_s : (g + 1) * c_s] for every
   scale s (ys[s]: rows of lds[s] floats; o: rows of 3 D). A large result (c->stream: STREAM_BYTES or more) goes to
   memory with streaming stores: cached stores first read every line they write, and a result that size is read back
   from memory by the attention anyway (DeiT-T, 64 images at 32 px, 9.4 MiB: this pass in about half the time, the
   inference step about 1.5 % faster); a small one stays in cache for the attention (8 images, 1.2 MiB: streamed,
   the step was 2 % slower) */
static void to_rows(const cascade_t *c, const float *const *ys, const long *lds, long n, float *o) {
    for (long r = 0; r < n; r++, o += 3 * c->D)
        for (int g = 0; g < 3; g++)
            for (int s = 0; s < c->S; s++)
                put(c->stream, o + g * c->D + c->offs[s], ys[s] + r * lds[s] + g * c->widths[s], c->widths[s]);
    if (c->stream) flush_streams();
}

/* the other way round, scales 0 .. S' - 1 of rows [0, n) of o into ys[s] (rows of ld[s] floats, 3 c_s of them set) */
static void from_rows(const cascade_t *c, const float *o, long n, int S, float *const *ys) {
    for (long r = 0; r < n; r++, o += 3 * c->D)
        for (int g = 0; g < 3; g++)
            for (int s = 0; s < S; s++)
                memcpy(ys[s] + r * c->ld[s] + g * c->widths[s], o + g * c->D + c->offs[s],
                       sizeof(float) * c->widths[s]);
}

/* The forward's tiles, the same for any timing: whole tiles (c->tile images) over the batch but its last nt * tile
   images, those in tiles of TAIL images (or tile, if fewer). Threads take them in turn (forward_tile), so that a thread that runs slower
   (on a shared host one core often lags the other by 5-10 % of a call) is caught up by the others in the small tiles at
   the end; every image's result is the same whichever thread computes it. Against an even split of the batch: one
   LIFE layer's inference call 0.954-0.986 of its time (2 threads, four shapes, docs/performance.md). */
#define TAIL 2

/* the images [*b0, *b0 + *nb) of the next tile not yet taken; 0 when none is left */
static int forward_tile(const cascade_t *c, int nt, int *b0, int *nb) {
    const int small = c->tile < TAIL ? c->tile : TAIL; /* never more than the buffers' tile */
    const int tail = c->B < nt * c->tile ? c->B : nt * c->tile, head = c->B - tail;
    const int nhead = (head + c->tile - 1) / c->tile, ntiles = nhead + (tail + small - 1) / small;
    const int i = __atomic_fetch_add(c->next, 1, __ATOMIC_RELAXED);
    if (i >= ntiles) return 0;
    *b0 = i < nhead ? i * c->tile : head + (i - nhead) * small;
    const int end = *b0 + (i < nhead ? c->tile : small), last = i < nhead ? head : c->B;
    *nb = (end < last ? end : last) - *b0;
    return 1;
}

/* thread t's share of life_cascade's tiles: buffers y_1 .. y_S, x_s, a padded image per conv, a row */
static int forward_images(const cascade_t *c, int t, int nt) {
    const int S = c->S, N = c->N, P = c->P;
    size_t total = (S + 1) * c->tn + c->rows;
    for (int s = 1; s < S; s++) total += c->pad_n[s];
    float *buf = zeroed(total);
    if (!buf) return 1;
    float *xs = buf + S * c->tn, *pad = xs + c->tn, *row = pad;
    for (int s = 1; s < S; s++) row += c->pad_n[s];
    (void)t; /* the tiles go to whichever thread is free, not by number (only TICK reads t) */
    TICK(t, 0, -1);
    for (int b0, nb; forward_tile(c, nt, &b0, &nb);) {
        const int n = nb * N;
        const float *ys[8]; /* scale s of the tile's images, rows of lds[s] floats */
        long lds[8];
        for (int s = 0; s < S; s++) ys[s] = buf + s * c->tn, lds[s] = c->ld[s];
        if (c->w1)
            linear_rows(c->sgemm, c->x + b0 * c->xsb, c->xst, n, c->dim, c->w1, c->b1, lds[0], buf, lds[0]);
        else /* y_1 given: read in place */
            ys[0] = c->x + b0 * c->xsb, lds[0] = c->xst;
        TICK(t, 0, PH_MATMUL1);
        float *p = pad;
        for (int s = 1; s < S; p += c->pad_n[s], s++) {
            const int cs = c->widths[s - 1];
            const long l = c->ld[s - 1]; /* x_s's rows: 3 cs floats, zeros up to l (the padded weights' zero columns) */
            for (int i = 0; i < nb; i++) {
                const float *ci = ys[s - 1] + (size_t)i * N * lds[s - 1];
                float *xi = xs + (size_t)i * N * l;
                const map_t src = {ci + (size_t)P * lds[s - 1], 0, lds[s - 1], cs},
                            dst = {xi + (size_t)P * l, 0, l, cs}, none = {NULL, 0, 0, 0};
                for (int r = 0; r < P; r++) /* prefix tokens skip the conv */
                    memcpy(xi + (size_t)r * l, ci + (size_t)r * lds[s - 1], sizeof(float) * 3 * cs);
                if (l > 3 * cs) /* xs held other scales' rows before: what lies past 3 cs is not zero */
                    for (int r = 0; r < N; r++) memset(xi + (size_t)r * l + 3 * cs, 0, sizeof(float) * (l - 3 * cs));
                fill_pad(&c->geo[s], &src, 0, p, &none);
                TICK(t, 0, PH_PAD);
                conv_image(&c->geo[s], p, c->taps[s], row, &dst, &none, 0);
                TICK(t, 0, PH_CONV);
            }
            linear_rows(c->sgemm, xs, l, n, l, c->pwp[s], c->pbp[s], lds[s], buf + s * c->tn, lds[s]);
            TICK(t, 0, PH_MATMUL);
        }
        to_rows(c, ys, lds, n, c->out + (size_t)b0 * N * 3 * c->D);
        TICK(t, 0, PH_WRITE);
    }
    free(buf);
    return 0;
}

/* Returns 0 on success. x: (B, N, dim) with batch stride xsb, token stride xst (y_1 (B, N, 3 c_1) when w1 is NULL);
   w1 (3 c_1, dim), b1 (3 c_1) or NULL; S scales of widths c_1 ... c_S (sum D), kernels ks[0 .. S - 2]; dws[s]
   (3 c_{s+1}, 1, k, k) the depthwise weights, pws[s] (3 c_{s+2}, 3 c_{s+1}) the pointwise ones, pbs[s] their biases or
   NULL; out (B, N, 3, D) contiguous; P prefix tokens then an H x W grid (N = P + H W); tile images per projection. */
int life_cascade(const float *x, long xsb, long xst, int dim, const float *w1, const float *b1, int S,
                 const int *widths, const int *ks, const float *const *dws, const float *const *pws,
                 const float *const *pbs, float *out, int B, int N, int P, int H, int W, int tile, void *sgemm_fn,
                 int threads) {
    if (tile < 1 || xsb != (long)N * xst) tile = 1; /* several images in one projection: their rows equally spaced */
    cascade_t c = {.S = S, .B = B, .N = N, .P = P, .H = H, .W = W, .tile = tile, .widths = widths, .ks = ks,
                   .sgemm = (sgemm_t)sgemm_fn, .pws = pws, .pbs = pbs, .x = x, .w1 = w1, .b1 = b1, .xsb = xsb,
                   .xst = xst, .dim = dim, .out = out};
    if (!sgemm_fn || cascade_shapes(&c)) return 1;
    c.stream = sizeof(float) * 3 * c.D * N * (size_t)B >= STREAM_BYTES;
    int failed = 0;
    float *own[2 * 8] = {NULL}; /* the padded projections: scale 1's weight and bias, then those of scales 2 .. S */
    c.w1 = padded(w1, 3 * widths[0], dim, c.ld[0], dim, &own[0]);
    c.b1 = padded(b1, 1, 3 * widths[0], 1, c.ld[0], &own[1]);
    failed |= (w1 && !c.w1) || (b1 && !c.b1);
    for (int s = 1; s < S; s++) {
        c.taps[s] = tap_major(dws[s - 1], c.geo[s].C, c.geo[s].Cp, ks[s - 1] * ks[s - 1], 0);
        c.pwp[s] = padded(pws[s - 1], 3 * widths[s], 3 * widths[s - 1], c.ld[s], c.ld[s - 1], &own[2 * s]);
        c.pbp[s] = padded(pbs[s - 1], 1, 3 * widths[s], 1, c.ld[s], &own[2 * s + 1]);
        failed |= !c.taps[s] || !c.pwp[s] || (pbs[s - 1] && !c.pbp[s]);
    }
    int next = 0; /* forward_tile's counter */
    c.next = &next;
    if (!failed) failed = run_threads(forward_images, &c, threads_for(threads, B));
    for (int s = 1; s < S; s++) free(c.taps[s]);
    for (int q = 0; q < 2 * S; q++) free(own[q]);
    return failed ? 3 : 0;
}

/* sum[q] += rows[r * ld + q] for every row r < n, q < w: a bias gradient's column sums, in double */
static void add_rows(const float *rows, long n, long ld, int w, double *sum) {
    for (long r = 0; r < n; r++)
        for (int q = 0; q < w; q++) sum[q] += rows[r * ld + q];
}

/* thread t's images of life_cascade_backward, its weight gradient sums into its part of c->parts: buffers y_1 ..
   y_{S-1} (the convs' inputs, from out), g_1 .. g_S (g's scales, each turned into the gradient reaching that scale in
   place), gx, x_j, two padded images per conv (y, gx), a row; rows of ld[s] floats as in the forward pass (the
   padded matmuls), where a row is longer than 3 c_s the pointwise weight gradient in a padded sum of its own */
static int backward_images(const cascade_t *c, int t, int nt) {
    const int S = c->S, N = c->N, P = c->P;
    size_t total = (2 * S + 1) * c->tn + c->rows, gpad[8] = {0};
    for (int s = 1; s < S; s++) {
        total += 2 * c->pad_n[s];
        if (c->pwp[s] != c->pws[s - 1]) /* P_s padded */
            total += gpad[s] = (size_t)c->ld[s] * c->ld[s - 1];
    }
    float *buf = zeroed(total);
    /* the bias gradients' sums (scale 1's, then p_s's for s = 1 .. S - 1), 3 cmax each, in double: a float sum over
       thousands of rows loses several digits */
    double *bsum = calloc((size_t)3 * c->cmax * S, sizeof(double));
    if (!buf || !bsum) {
        free(buf);
        free(bsum);
        return 1;
    }
    float *ys[8], *gs[8];
    for (int s = 0; s < S - 1; s++) ys[s] = buf + s * c->tn;
    for (int s = 0; s < S; s++) gs[s] = buf + (S - 1 + s) * c->tn; /* their padding stays zero */
    float *gx = buf + (2 * S - 1) * c->tn, *xs = gx + c->tn, *pad_y = xs + c->tn, *row = pad_y;
    for (int s = 1; s < S; s++) row += 2 * c->pad_n[s];
    float *part = c->parts + c->part_n * t, *gw[8], *gP[8], *gp[8], *gPs[8], *more = row + c->rows;
    for (int s = 1; s < S; s++) {
        gw[s] = part, gP[s] = gw[s] + c->dw_n[s], gp[s] = gP[s] + c->pw_n[s];
        part = gp[s] + 3 * c->widths[s];
        gPs[s] = gpad[s] ? more : gP[s]; /* the sum the matmuls add to: (ld[s - 1], ld[s]) column-major */
        more += gpad[s];
    }
    float *gW1 = c->w1 ? c->parts + c->part_n * t + c->w1_off : NULL; /* scale 1's sums, with w1 */
    float *gB1 = c->w1 ? gW1 + (size_t)3 * c->widths[0] * c->dim : NULL;
    const float one = 1, zero = 0;
    const int b_end = (int)((long)c->B * (t + 1) / nt);
    TICK(t, 1, -1);
    for (int b0 = (int)((long)c->B * t / nt); b0 < b_end; b0 += c->tile) {
        const int nb = b_end - b0 < c->tile ? b_end - b0 : c->tile, n = nb * N;
        const size_t base = (size_t)b0 * N * 3 * c->D; /* the tile's first row of out and g */
        const int c1 = 3 * c->widths[0], direct = c->gy1 && c->ld[0] == c1;
        float *g1 = c->gy1 ? c->gy1 + (size_t)b0 * N * c1 : NULL;
        if (direct) gs[0] = g1; /* rows of whole vectors: the gradient reaching scale 1 summed in gy1 itself */
        from_rows(c, c->y + base, n, S - 1, ys);          /* each read once, in order */
        from_rows(c, c->g + base, n, S, gs);
        TICK(t, 1, PH_READ);
        float *p = pad_y;
        for (int s = 1; s < S; s++) p += 2 * c->pad_n[s];
        for (int j = S - 1; j >= 1; j--) {
            const int cs = c->widths[j - 1], c2 = c->widths[j]; /* x_j: 3 cs channels; y_j: 3 c2 */
            const long l = c->ld[j - 1], l2 = c->ld[j];          /* their rows in the buffers */
            const float *gy = gs[j];                             /* the gradient reaching y_j, (n, l2) */
            const long m_ = l, n_ = n, k_ = l2;
            p -= 2 * c->pad_n[j];
            float *pad_g = p + c->pad_n[j];
            /* gx (n, l) = gy (n, l2) P_j (l2, l); column-major: gx^T = P_j^T gy^T */
            c->sgemm("N", "N", (const int *)&m_, (const int *)&n_, (const int *)&k_, &one, c->pwp[j],
                     (const int *)&m_, gy, (const int *)&k_, &zero, gx, (const int *)&m_);
            TICK(t, 1, PH_MATMUL);
            for (int i = 0; i < nb; i++) {
                const size_t r0 = (size_t)i * N * l, pr = (size_t)P * l;
                const map_t ym = {ys[j - 1] + r0 + pr, 0, l, cs}, xm = {xs + r0 + pr, 0, l, cs},
                            gm = {gx + r0 + pr, 0, l, cs}, am = {gs[j - 1] + r0 + pr, 0, l, cs},
                            none = {NULL, 0, 0, 0};
                for (int r = 0; r < P; r++) { /* prefix tokens: x_j = y_{j-1}, and their gradient */
                    const size_t q0 = r0 + (size_t)r * l;
                    memcpy(xs + q0, ys[j - 1] + q0, sizeof(float) * 3 * cs);
                    for (int q = 0; q < 3 * cs; q++) gs[j - 1][q0 + q] += gx[q0 + q];
                }
                fill_pad(&c->geo[j], &ym, 0, p, &none);
                TICK(t, 1, PH_PAD);
                conv_image(&c->geo[j], p, c->taps[j], row, &xm, &none, 0); /* x_j's patch tokens */
                TICK(t, 1, PH_CONV);
                fill_pad(&c->geo[j], &gm, 0, pad_g, &none);
                TICK(t, 1, PH_PAD);
                wgrad_image(&c->geo[j], p, &gm, 0, gw[j]);
                TICK(t, 1, PH_WGRAD);
                conv_image(&c->geo[j], pad_g, c->flips[j], row, &am, &am, 0); /* gy_{j-1}, added to g's in place */
                TICK(t, 1, PH_CONV);
            }
            /* gP_j (l2, l) += gy^T x_j; column-major: gP^T (l, l2) += x_j^T gy (what x_j's padding adds lies in
               the rows of gP^T that are dropped below) */
            c->sgemm("N", "T", (const int *)&m_, (const int *)&k_, (const int *)&n_, &one, xs, (const int *)&m_, gy,
                     (const int *)&k_, &one, gPs[j], (const int *)&m_);
            TICK(t, 1, PH_MATMUL);
            if (c->gpbs[j - 1]) add_rows(gy, n, l2, 3 * c2, bsum + (size_t)3 * c->cmax * j); /* where it has a bias */
            TICK(t, 1, PH_BIAS);
        }
        if (c->w1) { /* scale 1's projection y_1 = x W_1^T + b_1, from gy_1 (gs[0], (n, ld[0])) in cache */
            const long m_ = c->dim, n_ = n, k_ = c1, ldg = c->ld[0];
            /* gx (n, dim) = gy_1 W_1; column-major: gx^T = W_1^T gy_1^T */
            if (c->gx)
                c->sgemm("N", "N", (const int *)&m_, (const int *)&n_, (const int *)&k_, &one, c->w1, (const int *)&m_,
                         gs[0], (const int *)&ldg, &zero, c->gx + (size_t)b0 * N * c->dim, (const int *)&m_);
            /* gW_1 (3 c_1, dim) += gy_1^T x; column-major: gW_1^T (dim, 3 c_1) += x^T gy_1 */
            if (c->gw1)
                c->sgemm("N", "T", (const int *)&m_, (const int *)&k_, (const int *)&n_, &one, c->x + b0 * c->xsb,
                         (const int *)&c->xst, gs[0], (const int *)&ldg, &one, gW1, (const int *)&m_);
            TICK(t, 1, PH_MATMUL1);
            if (c->gb1) add_rows(gs[0], n, ldg, c1, bsum);
            TICK(t, 1, PH_BIAS);
        } else if (!direct) { /* else it is there already */
            for (int r = 0; r < n; r++) memcpy(g1 + (size_t)r * c1, gs[0] + (size_t)r * c->ld[0], sizeof(float) * c1);
        }
        TICK(t, 1, PH_WRITE);
    }
    for (int s = 0; s < S; s++) /* the bias sums into the thread's part */
        for (int q = 0; q < 3 * c->widths[s]; q++) {
            if (s) gp[s][q] = (float)bsum[(size_t)3 * c->cmax * s + q];
            else if (gB1) gB1[q] = (float)bsum[q];
        }
    free(bsum);
    for (int s = 1; s < S; s++) /* the padded sums' real part: gP^T (3 c_{s-1}, 3 c_s) */
        if (gpad[s])
            for (int q2 = 0; q2 < 3 * c->widths[s]; q2++)
                memcpy(gP[s] + (size_t)q2 * 3 * c->widths[s - 1], gPs[s] + (size_t)q2 * c->ld[s - 1],
                       sizeof(float) * 3 * c->widths[s - 1]);
    free(buf);
    return 0;
}

/* dst[q] = the sum over threads t = 0 .. nt - 1, in that order, of parts[t * stride + off + q], q < n; nothing when dst
   is NULL (a gradient not wanted) */
static void add_parts(const float *parts, size_t stride, int nt, size_t off, size_t n, float *dst) {
    if (dst)
        for (size_t q = 0; q < n; q++) {
            float sum = 0;
            for (int t = 0; t < nt; t++) sum += parts[stride * t + off + q];
            dst[q] = sum;
        }
}

/* The backward pass of life_cascade, tile by tile in cache as well. out (B, N, 3, D) is the forward
   result (every scale: the depthwise inputs), g (B, N, 3, D) contiguous its gradient; the tile's rows of both are
   read once, in order, into the scales' tile buffers. For scale j = S .. 2 of a tile:
     gx    = gy_j P_j                                  the gradient at the projection's input x_j (n, 3 c_{j-1})
     x_j   = y_{j-1} with its patch tokens through conv j again (recomputed from out)
     gP_j += gy_j^T x_j, gp_j += the column sums of gy_j, gw_j += the conv's weight gradient for gx's patch tokens
     gy_{j-1} = g's scale j - 1 + gx (prefix tokens) or the flipped conv of gx (patch tokens)
   and gy_1 goes to gy1 (B, N, 3 c_1) contiguous; or, with w1 (3 c_1, dim) given, into scale 1's projection from the
   tokens x (B, N, dim) contiguous, each tile's gy_1 still in cache (no gy1 written): gx (B, N, dim) contiguous,
   gw1 (3 c_1, dim), gb1 (3 c_1), each NULL where not wanted. Weight gradients: each thread's sums, added in a fixed
   order. gdws[s] (3 c_{s+1}, k * k), gpws[s] like pws[s], gpbs[s] (3 c_{s+2}) or NULL. Returns 0 on success. */
int life_cascade_backward(const float *out, const float *g, int S, const int *widths, const int *ks,
                          const float *const *dws, const float *const *pws, float *gy1, float *const *gdws,
                          float *const *gpws, float *const *gpbs, const float *x, int dim, const float *w1, float *gx,
                          float *gw1, float *gb1, int B, int N, int P, int H, int W, int tile, void *sgemm_fn,
                          int threads) {
    cascade_t c = {.S = S, .B = B, .N = N, .P = P, .H = H, .W = W, .tile = tile, .widths = widths, .ks = ks,
                   .sgemm = (sgemm_t)sgemm_fn, .pws = pws, .y = out, .g = g, .gy1 = gy1, .gpbs = gpbs, .x = x,
                   .xsb = (long)N * dim, .xst = dim, .dim = dim, .w1 = w1, .gx = gx, .gw1 = gw1, .gb1 = gb1};
    if (!sgemm_fn || cascade_shapes(&c) || (w1 ? !x || dim < 1 : !gy1)) return 1;
    const int nt = threads_for(threads, B);
    int failed = 0;
    float *own[8] = {NULL}; /* the padded pointwise weights */
    for (int s = 1; s < S; s++) { /* per thread: gw_j (k * k, C), gP_j, gp_j */
        const int kk = ks[s - 1] * ks[s - 1];
        c.taps[s] = tap_major(dws[s - 1], c.geo[s].C, c.geo[s].Cp, kk, 0);
        c.flips[s] = tap_major(dws[s - 1], c.geo[s].C, c.geo[s].Cp, kk, 1);
        c.pwp[s] = padded(pws[s - 1], 3 * widths[s], 3 * widths[s - 1], c.ld[s], c.ld[s - 1], &own[s]);
        failed |= !c.taps[s] || !c.flips[s] || !c.pwp[s];
        c.dw_n[s] = (size_t)kk * c.geo[s].C;
        c.pw_n[s] = (size_t)9 * widths[s] * widths[s - 1];
        c.part_n += c.dw_n[s] + c.pw_n[s] + (size_t)3 * widths[s];
    }
    c.w1_off = c.part_n; /* then scale 1's weight and bias gradient sums (3 c_1 (dim + 1)), with w1 */
    if (w1) c.part_n += (size_t)3 * widths[0] * (dim + 1);
    c.parts = failed ? NULL : zeroed(c.part_n * nt);
    failed |= !c.parts;
    if (!failed) failed = run_threads(backward_images, &c, nt);
    const float *parts = c.parts;
    if (!failed) /* the threads' sums in a fixed order */
        for (int s = 1; s < S; s++) {
            size_t off = 0;
            for (int q = 1; q < s; q++) off += c.dw_n[q] + c.pw_n[q] + (size_t)3 * widths[q];
            float *tmp = malloc(sizeof(float) * c.dw_n[s] * nt);
            if (!tmp) {
                failed = 1;
                break;
            }
            for (int t = 0; t < nt; t++)
                memcpy(tmp + c.dw_n[s] * t, parts + c.part_n * t + off, sizeof(float) * c.dw_n[s]);
            sum_parts(&c.geo[s], tmp, nt, gdws[s - 1]);
            free(tmp);
            /* column-major gP^T (3 c, 3 c2): gP (3 c2, 3 c) row-major */
            add_parts(parts, c.part_n, nt, off + c.dw_n[s], c.pw_n[s], gpws[s - 1]);
            add_parts(parts, c.part_n, nt, off + c.dw_n[s] + c.pw_n[s], 3 * widths[s], gpbs[s - 1]);
        }
    if (!failed && w1) { /* scale 1's sums, likewise */
        const size_t w1_n = (size_t)3 * widths[0] * dim;
        add_parts(parts, c.part_n, nt, c.w1_off, w1_n, gw1);
        add_parts(parts, c.part_n, nt, c.w1_off + w1_n, 3 * widths[0], gb1);
    }
    free(c.parts);
    for (int s = 1; s < S; s++) free(c.taps[s]), free(c.flips[s]), free(own[s]);
    return failed ? 3 : 0;
}
