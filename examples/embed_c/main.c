/* Runs a network compiled by cnnc into an object file (`NAME.o`, `NAME.h`) on a raw
 * float32 input file and writes the raw float32 output file (native byte order, the
 * tensors one after another as NAME.h documents them).
 *
 * Build (NAME = lenet5 here):
 *   cnnc build lenet5.cnn --random-weights --target cpu --emit obj,header -o out
 *   cc -O2 -I out -DMODEL=lenet5 -DMODEL_HEADER='"lenet5.h"' main.c out/lenet5.o -lm -o lenet5
 * Run:
 *   ./lenet5 input.f32 output.f32
 */
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

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s INPUT.f32 OUTPUT.f32\n", argv[0]);
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
    int status = MODEL_INFER(input, output, arena);
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
