/*
 * cbtap: the virtual card's playback tap. Reads, from outside every bridge, what the card
 * played and at which card frame: the card's timeline ring (vcard_clock.h) in its shared file,
 * every few milliseconds, each frame once the card's pointer has passed it (so it can no longer
 * change). Built by the Makefile into build/bench/, never installed; run as its own process by
 * testbench/tap.py. The ALSA plugin itself never writes files: it runs in the bridges'
 * real-time threads.
 *
 *   cbtap --shm PATH --out DIR --seconds S [--channels 0,1] [--poll-ms 5]
 *
 * Recordings go to memory allocated and touched before the run; files are written after it
 * (--seconds, or SIGTERM/SIGINT), in --out:
 *   tap.json        the card's clock parameters, first frame, frames, channels, frames lost
 *   tap_chC.f32     channel C as played, float32 from tap.json's first_frame; NaN for a frame
 *                   the card played without any data written for it (an underrun, a gap)
 *   polls.bin       one record per poll: mono ns (i64), the card's pointer frame (i64),
 *                   capture and playback xrun counts (u32 each)
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "benchio.h"
#include "vcard_clock.h"

struct poll_rec {
	int64_t mono_ns, hw_frame;
	uint32_t xruns_capture, xruns_playback;
};

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static void usage(void)
{
	fprintf(stderr, "usage: cbtap --shm PATH --out DIR --seconds S [--channels 0,1] [--poll-ms 5]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *shm = NULL, *out = NULL, *chan_text = "0,1";
	double seconds = 10.0, poll_ms = 5.0;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--shm")) shm = argv[i + 1];
		else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
		else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
		else if (!strcmp(argv[i], "--channels")) chan_text = argv[i + 1];
		else if (!strcmp(argv[i], "--poll-ms")) poll_ms = atof(argv[i + 1]);
		else usage();
	}
	if (!shm || !out || seconds <= 0 || poll_ms <= 0 || argc % 2 == 0)
		usage();
	mkdir(out, 0777);

	int fd = -1;
	for (int i = 0; i < 500 && fd < 0; i++) {       /* the card may be created just after us */
		fd = open(shm, O_RDONLY);
		if (fd < 0)
			usleep(10000);
	}
	if (fd < 0) {
		fprintf(stderr, "cbtap: cannot open %s: %s\n", shm, strerror(errno));
		return 1;
	}
	struct cb_header hdr;
	for (int i = 0; i < 500; i++) {
		if (pread(fd, &hdr, sizeof(hdr), 0) == (ssize_t)sizeof(hdr) && hdr.magic == CB_MAGIC)
			break;
		usleep(10000);
	}
	if (hdr.magic != CB_MAGIC || hdr.version != CB_VERSION) {
		fprintf(stderr, "cbtap: %s is not a version %u virtual card\n", shm, CB_VERSION);
		return 1;
	}
	size_t maplen = CB_HEADER + (size_t)hdr.tl_frames * 4 + (size_t)hdr.tl_frames * hdr.tl_channels * 4;
	void *map = mmap(NULL, maplen, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED) {
		fprintf(stderr, "cbtap: cannot map %s: %s\n", shm, strerror(errno));
		return 1;
	}
	const struct cb_header *h = map;
	const uint32_t *stamps = (const uint32_t *)((const char *)map + CB_HEADER);
	const float *tl = (const float *)((const char *)map + CB_HEADER + (size_t)h->tl_frames * 4);
	uint32_t mask = h->tl_frames - 1;

	int chans[CB_MAX_CH], nch = 0;
	for (const char *p = chan_text; *p;) {
		char *end;
		long c = strtol(p, &end, 10);
		if (end == p || c < 0 || c >= (long)h->tl_channels || nch >= CB_MAX_CH) {
			fprintf(stderr, "cbtap: bad channel list %s (the card keeps %u)\n", chan_text, h->tl_channels);
			return 2;
		}
		chans[nch++] = (int)c;
		p = *end == ',' ? end + 1 : end;
	}

	size_t cap = (size_t)((seconds + 2) * h->rate * 1.002) + 1;
	float *rec[CB_MAX_CH];
	for (int k = 0; k < nch; k++)
		rec[k] = bench_alloc(cap * sizeof(float), 0);
	size_t polls_cap = (size_t)((seconds + 2) * 1000.0 / poll_ms) + 16;
	struct poll_rec *polls = bench_alloc(polls_cap * sizeof(struct poll_rec), 0);
	size_t npolls = 0;
	if (mlockall(MCL_CURRENT | MCL_FUTURE) < 0)
		fprintf(stderr, "cbtap: mlockall failed (%s)\n", strerror(errno));
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);

	int64_t t_start = cb_now_ns();
	int64_t first = cb_card_frame(h, t_start);
	int64_t next = first;
	size_t missing = 0, lost = 0;
	printf("ready %lld\n", (long long)first);
	fflush(stdout);
	struct timespec wake;
	clock_gettime(CLOCK_MONOTONIC, &wake);
	while (!stop_flag) {
		int64_t now = cb_now_ns();
		int64_t hw = cb_card_frame(h, now);
		if (npolls < polls_cap) {
			polls[npolls].mono_ns = now;
			polls[npolls].hw_frame = hw;
			polls[npolls].xruns_capture = __atomic_load_n(&h->xruns_capture, __ATOMIC_ACQUIRE);
			polls[npolls].xruns_playback = __atomic_load_n(&h->xruns_playback, __ATOMIC_ACQUIRE);
			npolls++;
		}
		for (; next < hw && (size_t)(next - first) < cap; next++) {
			uint32_t idx = (uint32_t)next & mask;
			size_t at = (size_t)(next - first);
			uint32_t s1 = __atomic_load_n(&stamps[idx], __ATOMIC_ACQUIRE);
			const float *src = tl + (size_t)idx * h->tl_channels;
			for (int k = 0; k < nch; k++)
				rec[k][at] = src[chans[k]];
			uint32_t s2 = __atomic_load_n(&stamps[idx], __ATOMIC_ACQUIRE);
			if (s1 != (uint32_t)next || s2 != s1) {
				for (int k = 0; k < nch; k++)
					rec[k][at] = NAN;
				/* a frame a full ring ahead overwrote this one: the tap fell behind */
				if (s1 == (uint32_t)(next + h->tl_frames) || s2 == (uint32_t)(next + h->tl_frames))
					lost++;
				else
					missing++;
			}
		}
		if ((size_t)(next - first) >= cap || now - t_start >= (int64_t)(seconds * 1e9))
			break;
		wake.tv_nsec += (long)(poll_ms * 1e6);
		while (wake.tv_nsec >= 1000000000L) {
			wake.tv_nsec -= 1000000000L;
			wake.tv_sec++;
		}
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &wake, NULL);
	}

	int failed = 0;
	size_t frames = (size_t)(next - first);
	for (int k = 0; k < nch; k++) {
		char name[64];
		snprintf(name, sizeof(name), "tap_ch%d.f32", chans[k]);
		failed |= bench_write(out, name, rec[k], frames * sizeof(float));
	}
	failed |= bench_write(out, "polls.bin", polls, npolls * sizeof(struct poll_rec));
	char path[4096];
	snprintf(path, sizeof(path), "%s/tap.json", out);
	FILE *m = fopen(path, "w");
	if (!m)
		return 1;
	fprintf(m, "{\"first_frame\": %lld, \"frames\": %zu, \"missing\": %zu, \"lost\": %zu, "
		   "\"polls\": %zu, \"start_ns\": %lld, \"channels\": [",
		(long long)first, frames, missing, lost, npolls, (long long)t_start);
	for (int k = 0; k < nch; k++)
		fprintf(m, "%s%d", k ? ", " : "", chans[k]);
	fprintf(m, "],\n \"clock\": {\"rate\": %u, \"t0_ns\": %lld, \"base_ns\": %lld, \"base_pos\": %.17g, "
		   "\"ppm\": %.17g, \"wander_ppm\": %.17g, \"wander_period\": %.17g, \"step_ns\": %lld, "
		   "\"stall_start_ns\": %lld, \"stall_until_ns\": %lld},\n",
		h->rate, (long long)h->t0_ns, (long long)h->base_ns, h->base_pos, h->ppm, h->wander_ppm,
		h->wander_period, (long long)h->step_ns, (long long)h->stall_start_ns,
		(long long)h->stall_until_ns);
	fprintf(m, " \"xruns_capture\": %u, \"xruns_playback\": %u, \"capture_source\": %u, "
		   "\"sine_hz\": %u, \"sine_step_hz\": %u, \"sine_amp\": %.9g}\n",
		h->xruns_capture, h->xruns_playback, h->capture_source, h->sine_hz, h->sine_step_hz,
		(double)h->sine_amp);
	failed |= fclose(m) != 0;
	return failed ? 1 : 0;
}
