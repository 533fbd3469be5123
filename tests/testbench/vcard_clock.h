/*
 * The virtual card's shared file and its clock: one definition for the ALSA plugin (vcard.c,
 * inside whatever process opens the card) and the playback tap (cbtap.c, a measuring process
 * of the benchmarks). vcard.py mirrors the layout for Python.
 *
 *   F(t) = base_pos + rate * ((t - base)(1 + ppm 1e-6) + W(t) - W(base))
 *   W(t) = wander_ppm 1e-6 * (P / 2 pi) * (1 - cos(2 pi (t - t0) / P))
 *
 * t = CLOCK_MONOTONIC (ns), optionally quantised to `step_ns` (a USB-like pointer that moves in
 * steps), frozen while a stall is injected. The card's sample clock itself is the unquantised,
 * unfrozen F: the pointer is what moves in steps or stalls.
 *
 * Shared file layout (little endian), version 2:
 *   0 magic u32 'CBVC'   4 version u32      8 rate u32       12 capture_channels u32
 *  16 playback_ch u32   20 tl_channels u32 24 tl_frames u32  28 generation u32
 *  32 unplugged i32   36 busy i32 (opens fail with EBUSY)   40 t0_ns i64       48 base_ns i64    56 base_pos f64
 *  64 ppm f64           72 wander_ppm f64  80 wander_period f64 (s)  88 step_ns i64
 *  96 stall_start_ns i64  104 stall_until_ns i64
 * 112 capture_source u32 (0 = playback looped back, 1 = a sine per channel)
 * 116 sine_hz u32       120 sine_step_hz u32 (channel c: sine_hz + c * sine_step_hz)
 * 124 sine_amp f32     128 xruns_capture u32  132 xruns_playback u32
 * 136 last_xrun_capture_frame i64   144 last_xrun_playback_frame i64
 *   then at 256: u32 stamps[tl_frames], then float samples[tl_frames * tl_channels].
 *
 * In sine mode capture channel c delivers sine_amp * sin(2 pi (sine_hz + c sine_step_hz) n / rate)
 * at card frame n: a function of the card's own frame index only.
 */

#ifndef CB_VCARD_CLOCK_H
#define CB_VCARD_CLOCK_H

#include <math.h>
#include <stdint.h>
#include <time.h>

#define CB_MAGIC 0x43564243u
#define CB_VERSION 2u
#define CB_HEADER 256
#define CB_TL_FRAMES 65536u
#define CB_MAX_CH 64

#define CB_SOURCE_LOOP 0u
#define CB_SOURCE_SINE 1u

struct cb_header {
	uint32_t magic, version, rate, capture_channels;
	uint32_t playback_channels, tl_channels, tl_frames, generation;
	int32_t unplugged, busy;
	int64_t t0_ns, base_ns;
	double base_pos, ppm, wander_ppm, wander_period;
	int64_t step_ns, stall_start_ns, stall_until_ns;
	uint32_t capture_source, sine_hz, sine_step_hz;
	float sine_amp;
	uint32_t xruns_capture, xruns_playback;
	int64_t last_xrun_capture_frame, last_xrun_playback_frame;
};

static inline int64_t cb_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline double cb_wander(const struct cb_header *h, int64_t t)
{
	if (h->wander_ppm == 0.0 || h->wander_period <= 0.0)
		return 0.0;
	double s = (double)(t - h->t0_ns) * 1e-9;
	double p = h->wander_period;
	return h->wander_ppm * 1e-6 * (p / (2 * M_PI)) * (1 - cos(2 * M_PI * s / p));
}

/* the card's pointer position (fractional frames) at time t */
static inline double cb_card_pos(const struct cb_header *h, int64_t t)
{
	int64_t stall_start = __atomic_load_n(&h->stall_start_ns, __ATOMIC_ACQUIRE);
	int64_t stall_until = __atomic_load_n(&h->stall_until_ns, __ATOMIC_ACQUIRE);
	if (t >= stall_start && t < stall_until)
		t = stall_start;
	if (h->step_ns > 0) {
		int64_t rel = t - h->t0_ns;
		t = h->t0_ns + (rel / h->step_ns) * h->step_ns;
	}
	double s = (double)(t - h->base_ns) * 1e-9;
	return h->base_pos + h->rate * (s * (1 + h->ppm * 1e-6) + cb_wander(h, t) - cb_wander(h, h->base_ns));
}

static inline int64_t cb_card_frame(const struct cb_header *h, int64_t t)
{
	return (int64_t)floor(cb_card_pos(h, t));
}

#endif
