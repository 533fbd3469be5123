/*
 * cbmeter: the benchmarks' measuring JACK client, in C (a Python process callback is itself a
 * source of JACK xruns at small periods with several bridges). Built by the Makefile into
 * build/bench/, never installed; run as its own process by testbench/meter.py.
 *
 * One JACK client that either plays or records (run one of each, so that the graph
 * player -> bridges -> recorder has no cycle):
 *   --play PORT@CH   an output port out_CH plays the sine of channel CH into PORT (repeatable;
 *                    every PORT with the same CH is fed by the same out_CH):
 *                    level * sin(2 pi (sine_hz + CH sine_step_hz) j / rate) at JACK frame j
 *   --record PORT    an input port in_K records PORT (K counts from 0 in the order given)
 * Every cycle it stamps: CLOCK_MONOTONIC before and after CLOCK_MONOTONIC_RAW, jack_get_time(),
 * jack_last_frame_time() and jack_get_cycle_times(), the xrun count. Recordings go to memory
 * allocated, touched and locked before activation, indexed by JACK frame (a cycle it missed is
 * a gap of NaN). A non-real-time thread connects the ports as soon as they exist, and once a
 * second reads every peer port's latency range and JACK's DSP load. Files are written after the
 * run (--seconds, or SIGTERM/SIGINT), in --out:
 *   meter.json        what ran and the facts of the run (rate, first frame, connections, ...)
 *   cycles.bin        one record per cycle (layout: struct cycle below, 72 bytes)
 *   xruns.bin         one record per xrun callback: mono ns (i64), delayed usecs (f32), pad
 *   latency.txt       "mono_ns port_index min max" per port per second (port_index into ports)
 *   load.txt          "mono_ns dsp_load_percent" per second
 *   rec_K.f32         what in_K received, float32 from meter.json's first_frame
 */

#define _GNU_SOURCE
#include <errno.h>
#include <jack/jack.h>
#include <jack/statistics.h>
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

#define MAX_PORTS 256
#define MAX_XRUNS 100000

struct cycle {
	int64_t mono_ns, mono2_ns, raw_ns;
	uint64_t jack_us, cur_us, next_us;
	float period_us;
	uint32_t frame_time, cur_frames, nframes, xruns, pad;
};

struct xrun_rec {
	int64_t mono_ns;
	float delayed_us;
	uint32_t pad;
};

static jack_client_t *client;
static volatile sig_atomic_t stop_flag;
static unsigned int rate;

/* play */
static int nplay;
static char *play_target[MAX_PORTS];
static int play_chan[MAX_PORTS];
static int nout;
static int out_chan[MAX_PORTS];
static jack_port_t *out_port[MAX_PORTS];
static float *sine;               /* sin(2 pi m / rate), m < rate */
static double level = 0.5;
static unsigned int sine_hz = 997, sine_step_hz = 2;

/* record */
static int nrec;
static char *rec_source[MAX_PORTS];
static jack_port_t *in_port[MAX_PORTS];
static float *rec_buf[MAX_PORTS];
static size_t rec_cap;            /* frames per recording */

/* cycles */
static struct cycle *cycles;
static size_t ncycles_cap;
static volatile size_t ncycles;
static volatile uint32_t xruns;
static struct xrun_rec *xrun_log;
static volatile size_t nxrun_log;
static volatile int have_first;
static uint32_t first_frame;

static int64_t clock_ns(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int process(jack_nframes_t nframes, void *arg)
{
	(void)arg;
	struct cycle c;
	c.mono_ns = clock_ns(CLOCK_MONOTONIC);
	c.raw_ns = clock_ns(CLOCK_MONOTONIC_RAW);
	c.mono2_ns = clock_ns(CLOCK_MONOTONIC);
	c.jack_us = jack_get_time();
	c.frame_time = jack_last_frame_time(client);
	jack_nframes_t cur_frames = 0;
	jack_time_t cur_us = 0, next_us = 0;
	float period_us = 0;
	jack_get_cycle_times(client, &cur_frames, &cur_us, &next_us, &period_us);
	c.cur_frames = cur_frames;
	c.cur_us = cur_us;
	c.next_us = next_us;
	c.period_us = period_us;
	c.nframes = nframes;
	c.xruns = __atomic_load_n(&xruns, __ATOMIC_RELAXED);
	c.pad = 0;
	if (ncycles < ncycles_cap) {
		cycles[ncycles] = c;
		__atomic_store_n(&ncycles, ncycles + 1, __ATOMIC_RELEASE);
	}
	if (!have_first) {
		first_frame = c.frame_time;
		__atomic_store_n(&have_first, 1, __ATOMIC_RELEASE);
	}
	for (int k = 0; k < nout; k++) {
		float *buf = jack_port_get_buffer(out_port[k], nframes);
		uint64_t f = ((uint64_t)sine_hz + (uint64_t)out_chan[k] * sine_step_hz) % rate;
		uint64_t idx = (f * ((uint64_t)c.frame_time % rate)) % rate;
		for (jack_nframes_t i = 0; i < nframes; i++) {
			buf[i] = (float)(level * sine[idx]);
			idx += f;
			if (idx >= rate)
				idx -= rate;
		}
	}
	uint32_t at = c.frame_time - first_frame;
	for (int k = 0; k < nrec; k++) {
		const float *buf = jack_port_get_buffer(in_port[k], nframes);
		if ((size_t)at + nframes <= rec_cap)
			memcpy(rec_buf[k] + at, buf, sizeof(float) * nframes);
	}
	return 0;
}

static int on_xrun(void *arg)
{
	(void)arg;
	__atomic_add_fetch(&xruns, 1, __ATOMIC_RELAXED);
	size_t n = nxrun_log;
	if (n < MAX_XRUNS) {
		xrun_log[n].mono_ns = clock_ns(CLOCK_MONOTONIC);
		xrun_log[n].delayed_us = jack_get_xrun_delayed_usecs(client);
		xrun_log[n].pad = 0;
		nxrun_log = n + 1;
	}
	return 0;
}

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', f);
		fputc(*s, f);
	}
	fputc('"', f);
}

static void usage(void)
{
	fprintf(stderr, "usage: cbmeter --server NAME --name CLIENT --seconds S --out DIR "
			"[--play PORT@CH]... [--record PORT]... [--sine-hz 997] [--sine-step-hz 2] "
			"[--level-db -6]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *server = NULL, *name = "cbmeter", *out = NULL;
	double seconds = 10.0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v)
			usage();
		if (!strcmp(a, "--server")) server = v;
		else if (!strcmp(a, "--name")) name = v;
		else if (!strcmp(a, "--out")) out = v;
		else if (!strcmp(a, "--seconds")) seconds = atof(v);
		else if (!strcmp(a, "--sine-hz")) sine_hz = (unsigned int)atoi(v);
		else if (!strcmp(a, "--sine-step-hz")) sine_step_hz = (unsigned int)atoi(v);
		else if (!strcmp(a, "--level-db")) level = pow(10.0, atof(v) / 20.0);
		else if (!strcmp(a, "--play")) {
			char *at = strrchr(v, '@');
			if (!at || nplay >= MAX_PORTS)
				usage();
			play_target[nplay] = strndup(v, (size_t)(at - v));
			play_chan[nplay++] = atoi(at + 1);
		} else if (!strcmp(a, "--record")) {
			if (nrec >= MAX_PORTS)
				usage();
			rec_source[nrec++] = strdup(v);
		} else
			usage();
		i++;
	}
	if (!out || seconds <= 0 || (nplay && nrec))
		usage();
	mkdir(out, 0777);

	jack_status_t status;
	jack_options_t opts = JackNoStartServer | (server ? JackServerName : 0);
	client = jack_client_open(name, opts, &status, server);
	if (!client) {
		fprintf(stderr, "cbmeter: cannot connect to JACK server %s (status 0x%x)\n",
			server ? server : "(default)", status);
		return 1;
	}
	rate = jack_get_sample_rate(client);
	jack_nframes_t period = jack_get_buffer_size(client);

	sine = bench_alloc(sizeof(float) * rate, 0);
	for (unsigned int m = 0; m < rate; m++)
		sine[m] = (float)sin(2 * M_PI * (double)m / rate);
	for (int k = 0; k < nplay; k++) {
		int found = -1;
		for (int o = 0; o < nout; o++)
			if (out_chan[o] == play_chan[k])
				found = o;
		if (found < 0) {
			char pname[64];
			snprintf(pname, sizeof(pname), "out_%d", play_chan[k]);
			out_chan[nout] = play_chan[k];
			out_port[nout] = jack_port_register(client, pname, JACK_DEFAULT_AUDIO_TYPE,
							    JackPortIsOutput, 0);
			if (!out_port[nout]) {
				fprintf(stderr, "cbmeter: cannot register %s\n", pname);
				return 1;
			}
			nout++;
		}
	}
	rec_cap = (size_t)(seconds * rate) + 4 * (size_t)rate;
	for (int k = 0; k < nrec; k++) {
		char pname[64];
		snprintf(pname, sizeof(pname), "in_%d", k);
		in_port[k] = jack_port_register(client, pname, JACK_DEFAULT_AUDIO_TYPE, JackPortIsInput, 0);
		if (!in_port[k]) {
			fprintf(stderr, "cbmeter: cannot register %s\n", pname);
			return 1;
		}
		rec_buf[k] = bench_alloc(sizeof(float) * rec_cap, 1);
	}
	ncycles_cap = (size_t)((seconds + 4) * rate / (period < 16 ? 16 : period)) * 2 + 1024;
	cycles = bench_alloc(sizeof(struct cycle) * ncycles_cap, 0);
	xrun_log = bench_alloc(sizeof(struct xrun_rec) * MAX_XRUNS, 0);
	if (mlockall(MCL_CURRENT | MCL_FUTURE) < 0)
		fprintf(stderr, "cbmeter: mlockall failed (%s); page faults may cost cycles\n", strerror(errno));

	jack_set_process_callback(client, process, NULL);
	jack_set_xrun_callback(client, on_xrun, NULL);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	if (jack_activate(client)) {
		fprintf(stderr, "cbmeter: cannot activate\n");
		return 1;
	}
	int64_t t_start = clock_ns(CLOCK_MONOTONIC);
	printf("ready %u %u\n", rate, period);
	fflush(stdout);

	/* the ports we watch: play targets, then record sources */
	int nwatch = nplay + nrec;
	int64_t connected_at[2 * MAX_PORTS];
	for (int k = 0; k < nwatch; k++)
		connected_at[k] = 0;
	char latpath[4096], loadpath[4096];
	snprintf(latpath, sizeof(latpath), "%s/latency.txt", out);
	snprintf(loadpath, sizeof(loadpath), "%s/load.txt", out);
	FILE *lat = fopen(latpath, "w"), *load = fopen(loadpath, "w");
	int64_t next_second = t_start;
	while (!stop_flag) {
		int64_t now = clock_ns(CLOCK_MONOTONIC);
		if (now - t_start >= (int64_t)(seconds * 1e9))
			break;
		for (int k = 0; k < nwatch; k++) {
			if (connected_at[k])
				continue;
			const char *peer = k < nplay ? play_target[k] : rec_source[k - nplay];
			if (!jack_port_by_name(client, peer))
				continue;
			int r;
			if (k < nplay) {
				int o = 0;
				while (out_chan[o] != play_chan[k])
					o++;
				r = jack_connect(client, jack_port_name(out_port[o]), peer);
			} else {
				r = jack_connect(client, peer, jack_port_name(in_port[k - nplay]));
			}
			if (r == 0 || r == EEXIST)
				connected_at[k] = clock_ns(CLOCK_MONOTONIC);
		}
		if (now >= next_second) {
			next_second += 1000000000LL;
			for (int k = 0; k < nwatch && lat; k++) {
				const char *peer = k < nplay ? play_target[k] : rec_source[k - nplay];
				jack_port_t *p = jack_port_by_name(client, peer);
				if (!p)
					continue;
				jack_latency_range_t range;
				jack_port_get_latency_range(p, k < nplay ? JackPlaybackLatency : JackCaptureLatency, &range);
				fprintf(lat, "%lld %d %u %u\n", (long long)now, k, range.min, range.max);
			}
			if (load)
				fprintf(load, "%lld %.3f\n", (long long)now, jack_cpu_load(client));
		}
		usleep(20000);
	}
	int64_t t_end = clock_ns(CLOCK_MONOTONIC);
	jack_deactivate(client);
	if (lat)
		fclose(lat);
	if (load)
		fclose(load);

	int failed = 0;
	size_t n = ncycles;
	failed |= bench_write(out, "cycles.bin", cycles, n * sizeof(struct cycle));
	failed |= bench_write(out, "xruns.bin", xrun_log, nxrun_log * sizeof(struct xrun_rec));
	size_t frames = 0;
	if (n)
		frames = (size_t)(uint32_t)(cycles[n - 1].frame_time + cycles[n - 1].nframes - first_frame);
	if (frames > rec_cap)
		frames = rec_cap;
	for (int k = 0; k < nrec; k++) {
		char fname[64];
		snprintf(fname, sizeof(fname), "rec_%d.f32", k);
		failed |= bench_write(out, fname, rec_buf[k], frames * sizeof(float));
	}
	char metapath[4096];
	snprintf(metapath, sizeof(metapath), "%s/meter.json", out);
	FILE *m = fopen(metapath, "w");
	if (!m)
		return 1;
	fprintf(m, "{\"rate\": %u, \"period\": %u, \"first_frame\": %u, \"frames\": %zu, "
		   "\"cycles\": %zu, \"xruns\": %u, \"start_ns\": %lld, \"end_ns\": %lld, "
		   "\"sine_hz\": %u, \"sine_step_hz\": %u, \"level\": %.9g, \"cycle_bytes\": %zu,\n",
		rate, period, first_frame, frames, n, xruns, (long long)t_start, (long long)t_end,
		sine_hz, sine_step_hz, level, sizeof(struct cycle));
	fprintf(m, " \"ports\": [");
	for (int k = 0; k < nwatch; k++) {
		fprintf(m, "%s{\"peer\": ", k ? ", " : "");
		json_string(m, k < nplay ? play_target[k] : rec_source[k - nplay]);
		fprintf(m, ", \"role\": \"%s\", \"channel\": %d, \"connected_ns\": %lld}",
			k < nplay ? "play" : "record", k < nplay ? play_chan[k] : k - nplay,
			(long long)connected_at[k]);
	}
	fprintf(m, "]}\n");
	failed |= fclose(m) != 0;
	jack_client_close(client);
	return failed ? 1 : 0;
}
