/* Runs a network compiled by cnnc into an object file (`NAME.o`, `NAME.h`) on a raw
 * float32 input file and writes the raw float32 output file (native byte order, the
 * tensors one after another as NAME.h documents them), on one thread (`NAME_infer`) or
 * on THREADS threads sharing every layer (`NAME_infer_part`, with a pthread barrier).
 *
 * Build (NAME = lenet5 here):
 *   cnnc build lenet5.cnn --random-weights --target cpu --emit obj,header -o out
 *   cc -O2 -pthread -I out -DMODEL=lenet5 -DMODEL_HEADER='"lenet5.h"' main.c out/lenet5.o -lm -o lenet5
 * Run:
 *   ./lenet5 input.f32 output.f32 [THREADS]
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef MODEL
#error "define MODEL, the name the object was built with (-DMODEL=lenet5)"
#endif
#ifndef MODEL_HEADER
#error "define MODEL_HEADER, the header to include (-DMODEL_HEADER='\"lenet5.h\"')"
#endif
#include MODEL_HEADER

#define CONCAT_(a, b) a##b
#define CONCAT(a, b) CONCAT_(a, b)
#define MODEL_INFER CONCAT(MODEL, _infer)
#define MODEL_INFER_PART CONCAT(MODEL, _infer_part)
#define MODEL_ARENA_BYTES CONCAT(MODEL, _arena_bytes)
#define MODEL_INPUT_FLOATS CONCAT(MODEL, _input_floats)
#define MODEL_OUTPUT_FLOATS CONCAT(MODEL, _output_floats)

/* Reads exactly `count` floats from `path` into `data`; 0 on success. */
static int read_floats(const char *path, float *data, size_t count) {
    FILE *file = fopen(path, "rb");
    if (!file) {
        perror(path);
        return 1;
    }
    size_t got = fread(data, sizeof(float), count, file);
    int extra = fgetc(file);
    fclose(file);
    if (got != count || extra != EOF) {
        fprintf(stderr, "%s: expected exactly %zu float32 values\n", path, count);
        return 1;
    }
    return 0;
}

/* One thread's share of a run: every thread gets the same buffers and barrier. */
struct part {
    const float *input;
    float *output;
    void *arena;
    size_t index, count;
    pthread_barrier_t *barrier;
    int status;
};

/* The barrier the generated code calls between layers. */
static void sync_parts(void *barrier) {
    pthread_barrier_wait((pthread_barrier_t *)barrier);
}

static void *run_part(void *arg) {
    struct part *p = arg;
    p->status = MODEL_INFER_PART(p->input, p->output, p->arena, p->index, p->count, sync_parts, p->barrier);
    return NULL;
}

/* Runs the network on `threads` threads (this one and threads - 1 more); 0 on success. */
static int infer_on_threads(const float *input, float *output, void *arena, size_t threads) {
    pthread_barrier_t barrier;
    struct part parts[16];
    pthread_t handles[16];
    if (threads < 1 || threads > 16 || pthread_barrier_init(&barrier, NULL, (unsigned)threads) != 0) {
        return 1;
    }
    for (size_t i = 0; i < threads; i++) {
        parts[i] = (struct part){input, output, arena, i, threads, &barrier, 0};
    }
    size_t started = 1;
    for (; started < threads; started++) {
        if (pthread_create(&handles[started], NULL, run_part, &parts[started]) != 0) {
            /* The others would wait at the barrier for ever. */
            fprintf(stderr, "cannot start thread %zu\n", started);
            exit(1);
        }
    }
    run_part(&parts[0]);
    int status = parts[0].status;
    for (size_t i = 1; i < threads; i++) {
        pthread_join(handles[i], NULL);
        status |= parts[i].status;
    }
    pthread_barrier_destroy(&barrier);
    return status;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s INPUT.f32 OUTPUT.f32 [THREADS]\n", argv[0]);
        return 2;
    }
    long threads = argc == 4 ? strtol(argv[3], NULL, 10) : 1;
    if (threads < 1 || threads > 16) {
        fprintf(stderr, "THREADS must be 1 to 16\n");
        return 2;
    }
    float *input = malloc(sizeof(float) * MODEL_INPUT_FLOATS);
    float *output = malloc(sizeof(float) * MODEL_OUTPUT_FLOATS);
    void *arena = malloc(MODEL_ARENA_BYTES() > 0 ? MODEL_ARENA_BYTES() : 1);
    if (!input || !output || !arena) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    if (read_floats(argv[1], input, MODEL_INPUT_FLOATS) != 0) {
        return 1;
    }
    int status = threads == 1 ? MODEL_INFER(input, output, arena)
                              : infer_on_threads(input, output, arena, (size_t)threads);
    if (status != 0) {
        fprintf(stderr, "inference failed with status %d\n", status);
        return 1;
    }
    FILE *file = fopen(argv[2], "wb");
    if (!file || fwrite(output, sizeof(float), MODEL_OUTPUT_FLOATS, file) != (size_t)MODEL_OUTPUT_FLOATS) {
        perror(argv[2]);
        return 1;
    }
    fclose(file);
    free(input);
    free(output);
    free(arena);
    return 0;
}
