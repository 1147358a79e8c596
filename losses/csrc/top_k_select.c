/*
 * Top-K selection by radix select: the indices of the `keep` largest |scores| of each row.
 *
 * Built and loaded by losses/native.py (plain C, no Python or torch headers; OpenMP when the
 * compiler has it). Used by losses.topk.top_k_indices for float32 CPU tensors of scores that
 * are never below zero (a per-pixel cross-entropy, an absolute error).
 *
 * Order: a float32 x ranks by the integer (bits(x) & 0x7fffffff), which orders exactly as |x|
 * does (-0.0 with +0.0), every NaN above +inf: the order of losses.topk.magnitude_key.
 *
 * Per row of n scores, three counting passes find the keep-th largest key T:
 *   1. a histogram of key bits 30..20 over the row (2048 bins) gives T's top 11 bits;
 *   2. the keys of that bin are copied out (branch-free) and counted on bits 19..9;
 *   3. those candidates are counted on bits 8..0, which gives T and how many of the keys equal
 *      to T are needed.
 * A last pass writes the indices of the keys > T and of the first needed keys == T in
 * increasing index order: among scores tied at the threshold the lowest indices are kept, so
 * the result is deterministic. Cost O(n) per row (torch.topk on the CPU runs nth_element on
 * (value, index) pairs), and the increasing indices make a later gather or scatter of the
 * selected pixels walk memory forwards.
 *
 * Rows run in parallel (OpenMP `num_threads`, the caller passes torch.get_num_threads();
 * with torch's own libgomp already loaded, this library shares its thread pool).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAGNITUDE 0x7fffffffu

/* Walk the bins from the top, subtracting full bins from *need; return the bin that holds the
 * need-th largest key. */
static int find_bin(const uint32_t *counts, int num_bins, int64_t *need) {
    int bin = num_bins - 1;
    for (; bin > 0; bin--) {
        if ((int64_t)counts[bin] >= *need) break;
        *need -= counts[bin];
    }
    return bin;
}

/* Select in one row. `candidates`: n + 1 scratch keys; `picked`: keep + 1 scratch indices (the
 * branch-free write may touch one slot past the last selected index). */
static void select_row(const uint32_t *bits, int64_t n, int64_t keep, int64_t *out,
                       uint32_t *candidates, int64_t *picked) {
    uint32_t counts[4][2048];
    memset(counts, 0, sizeof counts);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) { /* four histograms: no store-to-load stall on repeated bins */
        counts[0][(bits[i] & MAGNITUDE) >> 20]++;
        counts[1][(bits[i + 1] & MAGNITUDE) >> 20]++;
        counts[2][(bits[i + 2] & MAGNITUDE) >> 20]++;
        counts[3][(bits[i + 3] & MAGNITUDE) >> 20]++;
    }
    for (; i < n; i++) counts[0][(bits[i] & MAGNITUDE) >> 20]++;
    for (int b = 0; b < 2048; b++) counts[0][b] += counts[1][b] + counts[2][b] + counts[3][b];

    int64_t need = keep; /* how many keys of the current bin still belong to the top `keep` */
    const uint32_t top = (uint32_t)find_bin(counts[0], 2048, &need);

    int64_t m = 0; /* pass 2: the keys in bin `top`, counted on bits 19..9 */
    for (i = 0; i < n; i++) {
        const uint32_t key = bits[i] & MAGNITUDE;
        candidates[m] = key;
        m += (key >> 20) == top;
    }
    memset(counts[0], 0, sizeof counts[0]);
    for (int64_t j = 0; j < m; j++) counts[0][(candidates[j] >> 9) & 0x7ffu]++;
    const uint32_t middle = (uint32_t)find_bin(counts[0], 2048, &need);

    const uint32_t prefix = (top << 11) | middle; /* pass 3: bits 8..0 of the keys with both */
    uint32_t low_counts[512] = {0};
    for (int64_t j = 0; j < m; j++) {
        if ((candidates[j] >> 9) == prefix) low_counts[candidates[j] & 0x1ffu]++;
    }
    const uint32_t low = (uint32_t)find_bin(low_counts, 512, &need);
    const uint32_t threshold = (prefix << 9) | low;

    int64_t o = 0;
    if (need == (int64_t)low_counts[low]) { /* every key equal to the threshold is kept */
        for (i = 0; i < n; i++) {
            picked[o] = i;
            o += (bits[i] & MAGNITUDE) >= threshold;
        }
    } else { /* ties at the threshold: the first `need` of them */
        for (i = 0; i < n; i++) {
            const uint32_t key = bits[i] & MAGNITUDE;
            if (key > threshold || (key == threshold && need-- > 0)) picked[o++] = i;
        }
    }
    memcpy(out, picked, (size_t)keep * sizeof(int64_t));
}

/*
 * scores: rows x n float32 (row-major, contiguous); out: rows x keep int64.
 * Requires 1 <= keep <= n < 2^32. Returns 0, or 1 when scratch memory could not be allocated.
 */
int top_k_magnitude_rows_f32(const float *scores, int64_t rows, int64_t n, int64_t keep,
                             int64_t *out, int num_threads) {
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(num_threads) reduction(| : failed)
#endif
    {
        uint32_t *candidates = malloc((size_t)(n + 1) * sizeof(uint32_t));
        int64_t *picked = malloc((size_t)(keep + 1) * sizeof(int64_t));
        const int ok = candidates != NULL && picked != NULL;
        failed |= !ok;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t r = 0; r < rows; r++) {
            if (ok) {
                select_row((const uint32_t *)(scores + r * n), n, keep, out + r * keep,
                           candidates, picked);
            }
        }
        free(candidates);
        free(picked);
    }
    (void)num_threads;
    return failed;
}

/* 1 when built with OpenMP (rows in parallel), else 0. */
int top_k_select_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
