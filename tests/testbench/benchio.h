/*
 * Memory and files for the benchmarks' measuring tools (cbmeter.c, cbtap.c): recordings live in
 * memory allocated and touched before a run (no page fault while measuring) and are written to
 * files only after it.
 */

#ifndef CB_BENCHIO_H
#define CB_BENCHIO_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* `bytes` of zeroed (or NaN-filled: a float array where nothing was recorded yet) memory,
 * touched now; exits on failure */
static void *bench_alloc(size_t bytes, int nan_fill)
{
	void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		fprintf(stderr, "cannot allocate %zu bytes\n", bytes);
		exit(1);
	}
	if (nan_fill) {
		float *f = p;
		for (size_t i = 0; i < bytes / sizeof(float); i++)
			f[i] = NAN;
	} else {
		memset(p, 0, bytes);
	}
	return p;
}

/* dir/name := data; 0 on success */
static int bench_write(const char *dir, const char *name, const void *data, size_t bytes)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	size_t done = bytes ? fwrite(data, 1, bytes, f) : 0;
	return fclose(f) == 0 && done == bytes ? 0 : -1;
}

#endif
