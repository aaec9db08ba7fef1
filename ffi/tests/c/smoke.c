/*
 * Exercises the C ABI the way a C caller would: open an SAE on the CPU, query its
 * shape, encode (top-k and CSR, two-call sizing), decode, accumulate and merge
 * statistics, and hit the error paths. Prints "key value..." lines that
 * ffi/tests/c_smoke.rs checks against a reference; exits non-zero on any status
 * it did not expect.
 *
 * usage: smoke SAE_DIR
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sae_engine.h"

#define ROWS 3

static int failures = 0;

static void expect(const char *what, SaeStatus got, SaeStatus want) {
    if (got != want) {
        char msg[512];
        sae_last_error_message(msg, sizeof msg);
        fprintf(stderr, "%s: got %s, want %s: %s\n", what, sae_status_string((int)got),
                sae_status_string((int)want), msg);
        failures++;
    }
}

/* Prints "key STATUS message" for an expected failure. */
static void report_error(const char *key, SaeStatus st) {
    size_t need = sae_last_error_message(NULL, 0);
    char *msg = malloc(need);
    if (msg == NULL) { failures++; return; }
    size_t again = sae_last_error_message(msg, need);
    if (again != need || strlen(msg) + 1 != need) failures++;
    printf("%s %s %s\n", key, sae_status_string((int)st), msg);
    free(msg);
}

static void print_f(const char *key, const float *v, size_t n) {
    printf("%s", key);
    for (size_t i = 0; i < n; i++) printf(" %.9g", (double)v[i]);
    printf("\n");
}

static void print_i(const char *key, const int32_t *v, size_t n) {
    printf("%s", key);
    for (size_t i = 0; i < n; i++) printf(" %d", (int)v[i]);
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s SAE_DIR\n", argv[0]);
        return 2;
    }
    printf("version %s\n", sae_version());

    SaeHandle *h = NULL;
    SaeStatus st = sae_open(argv[1], NULL, "cpu", 0, &h);
    expect("sae_open", st, SAE_STATUS_OK);
    if (st != SAE_STATUS_OK) return 1;

    size_t d = sae_d_in(h), l = sae_n_latents(h), k = sae_k(h);
    printf("shape %zu %zu %zu %d\n", d, l, k, sae_is_topk(h) ? 1 : 0);
    char backend[64];
    sae_backend_name(h, backend, sizeof backend);
    printf("backend %s\n", backend);
    printf("device_pointers %d\n", sae_has_device_pointers(h) ? 1 : 0);

    float *x = malloc(ROWS * d * sizeof(float));
    for (size_t i = 0; i < ROWS * d; i++) x[i] = (float)((int)(i * 7 % 11) - 4) * 0.5f;
    print_f("x", x, ROWS * d);

    int32_t *idx = malloc(ROWS * k * sizeof(int32_t));
    float *val = malloc(ROWS * k * sizeof(float));
    expect("encode_topk", sae_encode_topk_host(h, x, ROWS, d, idx, val, k, NULL, NULL),
           SAE_STATUS_OK);
    print_i("topk_indices", idx, ROWS * k);
    print_f("topk_values", val, ROWS * k);

    /* CSR with two-call sizing. */
    int64_t row_ptr[ROWS + 1];
    size_t nnz = 0;
    st = sae_encode_csr_host(h, x, ROWS, d, row_ptr, NULL, NULL, 0, &nnz, NULL, NULL);
    if (nnz > 0) expect("encode_csr sizing", st, SAE_STATUS_BUFFER_TOO_SMALL);
    int32_t *cidx = malloc((nnz + 1) * sizeof(int32_t));
    float *cval = malloc((nnz + 1) * sizeof(float));
    expect("encode_csr",
           sae_encode_csr_host(h, x, ROWS, d, row_ptr, cidx, cval, nnz, &nnz, NULL, NULL),
           SAE_STATUS_OK);
    printf("csr_nnz %zu\n", nnz);
    printf("csr_row_ptr");
    for (int r = 0; r <= ROWS; r++) printf(" %lld", (long long)row_ptr[r]);
    printf("\n");
    print_i("csr_indices", cidx, nnz);
    print_f("csr_values", cval, nnz);

    float *xhat = malloc(ROWS * d * sizeof(float));
    expect("decode_topk", sae_decode_topk_host(h, idx, val, ROWS, k, NULL, NULL, xhat, d),
           SAE_STATUS_OK);
    print_f("decoded", xhat, ROWS * d);
    float *xhat2 = malloc(ROWS * d * sizeof(float));
    expect("decode_csr", sae_decode_csr_host(h, row_ptr, cidx, cval, ROWS, NULL, NULL, xhat2, d),
           SAE_STATUS_OK);
    int same = 1;
    for (size_t i = 0; i < ROWS * d; i++) same &= fabsf(xhat[i] - xhat2[i]) <= 1e-5f;
    printf("decode_csr_matches_topk %d\n", same);

    /* Statistics: rows 0 and 2 count; then merge a copy of itself. */
    SaeStats *s = NULL;
    expect("stats_new", sae_stats_new(h, &s), SAE_STATUS_OK);
    uint8_t mask[ROWS] = {1, 0, 1};
    expect("stats_accumulate", sae_stats_accumulate_topk(s, idx, val, ROWS, k, mask),
           SAE_STATUS_OK);
    SaeStats *s2 = NULL;
    expect("stats_new 2", sae_stats_new(h, &s2), SAE_STATUS_OK);
    expect("stats_accumulate_csr", sae_stats_accumulate_csr(s2, row_ptr, cidx, cval, ROWS, NULL),
           SAE_STATUS_OK);
    expect("stats_merge", sae_stats_merge(s, s2), SAE_STATUS_OK);
    printf("stats_tokens %llu\n", (unsigned long long)sae_stats_n_tokens(s));
    double *sum = malloc(l * sizeof(double));
    uint64_t *act = malloc(l * sizeof(uint64_t));
    float *mx = malloc(l * sizeof(float));
    expect("stats_get", sae_stats_get(s, l, sum, NULL, act, mx), SAE_STATUS_OK);
    printf("stats_sum");
    for (size_t i = 0; i < l; i++) printf(" %.17g", sum[i]);
    printf("\nstats_n_active");
    for (size_t i = 0; i < l; i++) printf(" %llu", (unsigned long long)act[i]);
    printf("\n");
    print_f("stats_max", mx, l);

    /* Error paths: each must fail with its own status and leave a message. */
    st = sae_encode_topk_host(h, NULL, ROWS, d, idx, val, k, NULL, NULL);
    expect("null x", st, SAE_STATUS_NULL_ARGUMENT);
    report_error("err_null", st);
    st = sae_encode_topk_host(h, x, ROWS, d + 1, idx, val, k, NULL, NULL);
    expect("wrong d", st, SAE_STATUS_SHAPE);
    report_error("err_shape", st);
    st = sae_encode_topk_host(h, x, (size_t)-1, d, idx, val, k, NULL, NULL);
    expect("overflow", st, SAE_STATUS_INVALID_ARGUMENT);
    report_error("err_overflow", st);
    x[d + 1] = NAN;
    st = sae_encode_topk_host(h, x, ROWS, d, idx, val, k, NULL, NULL);
    expect("nan", st, SAE_STATUS_NON_FINITE);
    report_error("err_nonfinite", st);
    st = sae_encode_topk_device(h, x, ROWS, d, idx, val, k, NULL, NULL, NULL);
    expect("device on cpu", st, SAE_STATUS_UNSUPPORTED);
    report_error("err_device", st);
    int32_t bad_idx[2] = {(int32_t)l, -1};
    float bad_val[2] = {1.0f, 0.0f};
    st = sae_decode_topk_host(h, bad_idx, bad_val, 1, 2, NULL, NULL, xhat, d);
    expect("bad index", st, SAE_STATUS_INVALID_ARGUMENT);
    report_error("err_index", st);
    SaeHandle *h2 = (SaeHandle *)1;
    st = sae_open("/nonexistent/sae-dir", NULL, "cpu", 0, &h2);
    if (st == SAE_STATUS_OK || h2 != NULL) failures++;
    report_error("err_open", st);
    st = sae_open(argv[1], NULL, "tpu", 0, &h2);
    expect("bad backend", st, SAE_STATUS_INVALID_ARGUMENT);
    report_error("err_backend", st);
    /* A success clears the message. */
    expect("shape again", sae_encode_topk_host(h, x, 0, d, idx, val, k, NULL, NULL),
           SAE_STATUS_OK);
    printf("cleared %zu\n", sae_last_error_message(NULL, 0));
    printf("status_name %s %s\n", sae_status_string(SAE_STATUS_PANIC), sae_status_string(99));

    sae_stats_free(s);
    sae_stats_free(s2);
    sae_stats_free(NULL);
    sae_free(h);
    sae_free(NULL);
    free(x); free(idx); free(val); free(cidx); free(cval); free(xhat); free(xhat2);
    free(sum); free(act); free(mx);
    printf("failures %d\n", failures);
    return failures == 0 ? 0 : 1;
}
