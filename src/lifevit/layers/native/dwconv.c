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
#define UW 8 /* output pixels per register block */
#define XREGS (VL == 16) /* AVX-512 has 32 vector registers: room for a row of inputs */

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
