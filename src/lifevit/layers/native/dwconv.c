/* Depthwise k x k convolutions (stride 1, zero padding k / 2) over channels-last token maps, for LIFE on CPU.
 *
 * A map is B images of H x W pixels, each pixel G groups of cg dense channels (C = G * cg channels), at any
 * batch / pixel / group stride: the patch tokens of LIFE's (B, N, 3, D) buffer are such a map (G = 3: q, k, v)
 * and can be read and written in place, without gathering them into a dense grid first.
 *
 *   life_dw_conv:  o[b, p, c] = add[b, p, c] + sum_t x[b, p + t, c] * w[t][c]   (add optional; t over the k x k taps)
 *                  with w flipped by the caller this is the input gradient of the convolution
 *   life_dw_wgrad: gw[t][c]   = sum_{b, p} g[b, p, c] * x[b, p + t, c]           (the weight gradient)
 *
 * w and gw are (k * k, C), tap-major. Each thread zero-pads one image at a time into a dense buffer; the
 * convolution keeps 8 output pixels of 16 channels in vector registers and loads each input row once per kernel row,
 * the weight gradient keeps the k * k sums of 16 channels in registers. Threads split the batch; partial weight
 * gradients are added in a fixed order, so results do not depend on timing. C99 with GCC vector extensions and
 * OpenMP; built and loaded by dwconv.py.
 */
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64), aligned(4))); /* 16 floats, unaligned access allowed */
#define VL 16
#define UW 8 /* output pixels per register block */

typedef struct {
    const float *p;
    long sb, sp, sg; /* batch, pixel (h * W + w), group strides, in floats; channels of a group are dense */
} map_t;

typedef struct {
    int B, H, W, G, cg, C, k, Wp; /* Wp: padded row width, rounded so that rows are whole register blocks */
} geom_t;

static geom_t geometry(int B, int H, int W, int G, int cg, int k) {
    geom_t g = {B, H, W, G, cg, G * cg, k, 0};
    g.Wp = (W + UW - 1) / UW * UW + k - 1;
    return g;
}

/* image b of m, zero-padded (k / 2 above, below and left; the rest right), into pad: (H + k - 1, Wp, C) dense */
static void pad_image(const geom_t *g, const map_t *m, int b, float *pad) {
    const int r = g->k / 2;
    memset(pad, 0, sizeof(float) * (size_t)(g->H + g->k - 1) * g->Wp * g->C);
    for (int h = 0; h < g->H; h++)
        for (int w = 0; w < g->W; w++) {
            const float *src = m->p + b * m->sb + (long)(h * g->W + w) * m->sp;
            float *dst = pad + ((size_t)(h + r) * g->Wp + w + r) * g->C;
            for (int gi = 0; gi < g->G; gi++) memcpy(dst + gi * g->cg, src + gi * m->sg, sizeof(float) * g->cg);
        }
}

/* one output row h of image b into row (Wp, C) dense; K known at compile time */
#define DEFINE_CONV(K)                                                                                             \
    static void conv_row_##K(const geom_t *g, const float *pad, const float *w, int h, float *row) {            \
        const int C = g->C;                                                                                        \
        int c0 = 0;                                                                                                \
        for (; c0 + VL <= C; c0 += VL)                                                                             \
            for (int w0 = 0; w0 < g->W; w0 += UW) {                                                                \
                v16 acc[UW] = {{0}};                                                                               \
                for (int i = 0; i < K; i++) {                                                                      \
                    const float *in = pad + ((size_t)(h + i) * g->Wp + w0) * C + c0;                               \
                    v16 xs[UW + K - 1], ws[K];                                                                     \
                    for (int u = 0; u < UW + K - 1; u++) xs[u] = *(const v16 *)(in + (size_t)u * C);               \
                    for (int j = 0; j < K; j++) ws[j] = *(const v16 *)(w + (size_t)(i * K + j) * C + c0);          \
                    for (int j = 0; j < K; j++)                                                                    \
                        for (int u = 0; u < UW; u++) acc[u] += xs[u + j] * ws[j];                                  \
                }                                                                                                  \
                for (int u = 0; u < UW; u++) *(v16 *)(row + (size_t)(w0 + u) * C + c0) = acc[u];                   \
            }                                                                                                      \
        for (; c0 < C; c0++) /* channels after the last full vector */                                             \
            for (int x = 0; x < g->W; x++) {                                                                       \
                float acc = 0;                                                                                     \
                for (int i = 0; i < K; i++)                                                                        \
                    for (int j = 0; j < K; j++)                                                                    \
                        acc += pad[((size_t)(h + i) * g->Wp + x + j) * C + c0] * w[(size_t)(i * K + j) * C + c0];  \
                row[(size_t)x * C + c0] = acc;                                                                     \
            }                                                                                                      \
    }

/* image b's contribution to gw (k * k, C), from the padded input and the output gradient map gm; vectors of 16
   channels within each group (gm's groups need not be adjacent), the channels after a group's last vector one by one */
#define DEFINE_WGRAD(K)                                                                                            \
    static void wgrad_##K(const geom_t *g, const float *pad, const map_t *gm, int b, float *gw) {                \
        const int C = g->C;                                                                                        \
        for (int gi = 0; gi < g->G; gi++) {                                                                        \
            const float *grad = gm->p + b * gm->sb + gi * gm->sg;                                                  \
            int cc = 0;                                                                                            \
            for (; cc + VL <= g->cg; cc += VL) {                                                                   \
                const int c0 = gi * g->cg + cc;                                                                    \
                v16 acc[K * K];                                                                                    \
                for (int t = 0; t < K * K; t++) acc[t] = *(v16 *)(gw + (size_t)t * C + c0);                       \
                for (int h = 0; h < g->H; h++)                                                                     \
                    for (int x = 0; x < g->W; x++) {                                                               \
                        const v16 gv = *(const v16 *)(grad + (long)(h * g->W + x) * gm->sp + cc);                  \
                        const float *p = pad + ((size_t)h * g->Wp + x) * C + c0;                                   \
                        for (int i = 0; i < K; i++)                                                                \
                            for (int j = 0; j < K; j++)                                                            \
                                acc[i * K + j] += gv * *(const v16 *)(p + ((size_t)i * g->Wp + j) * C);            \
                    }                                                                                              \
                for (int t = 0; t < K * K; t++) *(v16 *)(gw + (size_t)t * C + c0) = acc[t];                       \
            }                                                                                                      \
            for (; cc < g->cg; cc++) {                                                                             \
                const int c0 = gi * g->cg + cc;                                                                    \
                for (int h = 0; h < g->H; h++)                                                                     \
                    for (int x = 0; x < g->W; x++) {                                                               \
                        const float gv = grad[(long)(h * g->W + x) * gm->sp + cc];                                 \
                        for (int i = 0; i < K; i++)                                                                \
                            for (int j = 0; j < K; j++)                                                            \
                                gw[(size_t)(i * K + j) * C + c0] += gv * pad[((size_t)(h + i) * g->Wp + x + j) * C + c0]; \
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

int life_dw_supports(int k) { return k == 3 || k == 5 || k == 7; }

static int threads_for(int threads, int B) {
    int nt = threads < 1 ? 1 : threads > 256 ? 256 : threads;
    return nt > B ? B : nt;
}

/* o = add + conv(x, w); add may be NULL. Returns 0 on success. OpenMP: linked against the libgomp PyTorch has
   loaded, this runs on PyTorch's own worker threads (a second pool would compete with them for the cores). */
int life_dw_conv(const float *x, long xsb, long xsp, long xsg, const float *w, float *o, long osb, long osp, long osg,
                 const float *add, long asb, long asp, long asg, int B, int H, int W, int G, int cg, int k, int threads) {
    if (!life_dw_supports(k) || B < 1 || H < 1 || W < 1 || G < 1 || cg < 1) return 1;
    const geom_t g = geometry(B, H, W, G, cg, k);
    const map_t xm = {x, xsb, xsp, xsg};
    const int nt = threads_for(threads, B);
    int failed = 0;
#pragma omp parallel num_threads(nt) reduction(| : failed)
    {
        float *pad = malloc(sizeof(float) * ((size_t)(g.H + k - 1) * g.Wp + (size_t)g.Wp) * g.C);
        float *row = pad ? pad + (size_t)(g.H + k - 1) * g.Wp * g.C : NULL; /* (Wp, C) */
        if (!pad) failed = 1;
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            if (!pad) continue;
            pad_image(&g, &xm, b, pad);
            for (int h = 0; h < H; h++) {
                if (k == 3) conv_row_3(&g, pad, w, h, row);
                else if (k == 5) conv_row_5(&g, pad, w, h, row);
                else conv_row_7(&g, pad, w, h, row);
                for (int x = 0; x < W; x++) {
                    const long p = (long)(h * W + x);
                    for (int gi = 0; gi < G; gi++) {
                        float *dst = o + b * osb + p * osp + gi * osg;
                        const float *src = row + (size_t)x * g.C + gi * cg;
                        if (add) {
                            const float *a = add + b * asb + p * asp + gi * asg;
                            for (int c = 0; c < cg; c++) dst[c] = a[c] + src[c];
                        } else {
                            memcpy(dst, src, sizeof(float) * cg);
                        }
                    }
                }
            }
        }
        free(pad);
    }
    return failed ? 3 : 0;
}

/* gw (k * k, C) = the weight gradient for input x and output gradient gmap. Returns 0 on success. */
int life_dw_wgrad(const float *x, long xsb, long xsp, long xsg, const float *gmap, long gsb, long gsp, long gsg,
                  float *gw, int B, int H, int W, int G, int cg, int k, int threads) {
    if (!life_dw_supports(k) || B < 1 || H < 1 || W < 1 || G < 1 || cg < 1) return 1;
    const geom_t g = geometry(B, H, W, G, cg, k);
    const map_t xm = {x, xsb, xsp, xsg}, gm = {gmap, gsb, gsp, gsg};
    const int nt = threads_for(threads, B);
    const size_t n = (size_t)k * k * g.C;
    float *part = calloc(n * nt, sizeof(float));
    if (!part) return 2;
    int failed = 0;
#pragma omp parallel for num_threads(nt) schedule(static, 1) reduction(| : failed)
    for (int t = 0; t < nt; t++) {
        float *pad = malloc(sizeof(float) * (size_t)(g.H + k - 1) * g.Wp * g.C);
        if (!pad) {
            failed = 1;
            continue;
        }
        for (int b = (int)((long)B * t / nt); b < (int)((long)B * (t + 1) / nt); b++) {
            pad_image(&g, &xm, b, pad);
            if (k == 3) wgrad_3(&g, pad, &gm, b, part + n * t);
            else if (k == 5) wgrad_5(&g, pad, &gm, b, part + n * t);
            else wgrad_7(&g, pad, &gm, b, part + n * t);
        }
        free(pad);
    }
    if (!failed)
        for (size_t i = 0; i < n; i++) {
            float s = 0;
            for (int t = 0; t < nt; t++) s += part[n * t + i];
            gw[i] = s;
        }
    free(part);
    return failed ? 3 : 0;
}
