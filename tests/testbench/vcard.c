/*
 * cbvcard: a virtual sound card for alsa-lib (ALSA external I/O plugin, snd_pcm_ioplug).
 *
 * Runs inside whatever process opens the PCM (tests, bridges, alsa_in, zita-a2j, ...), in the
 * calling thread of each alsa-lib call. Every card has its own sample clock, shared by all the
 * streams of that card in every process through a small shared-memory file (its layout and the
 * clock formula are in vcard_clock.h, shared with the benchmarks' playback tap).
 *
 * Capture delivers, by the card's `capture_source`, either the playback looped back (the sample
 * played at card frame T is what capture reads at card frame T; per-frame stamps make frames
 * never written read as silence) or a sine per channel that is an exact function of the card's
 * frame index (for measurements against the card's own clock). Every played frame goes to the
 * timeline ring with its card frame, whatever the source: a tap process reads it from outside.
 * Unplug makes every call fail with -ENODEV. Each xrun (capture overrun, playback underrun) is
 * counted once in the shared header, with the card frame where it was seen.
 *
 * ALSA configuration:
 *   pcm_type.cbvcard { lib "/abs/path/libasound_module_pcm_cbvcard.so" }
 *   pcm.NAME { type cbvcard  shm "/path/NAME.shm"  rate 48000  capture_channels 2
 *              playback_channels 2  ppm 0  wander_ppm 0  wander_period 60  usb_step_us 0
 *              capture_source "loop"  sine_hz 997  sine_step_hz 2  sine_level_db -6
 *              formats "S16_LE S24_3LE S32_LE FLOAT_LE"  timeline_frames 65536 }
 * The clock and signal fields take effect when the shared file is created (the first open, or
 * vcard.py's create_card); `formats` restricts the sample formats every open offers (any of
 * S16_LE S24_3LE S24_LE S32_LE FLOAT_LE; default all but S24_LE).
 */

#include <alsa/asoundlib.h>
#include <alsa/pcm_external.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "vcard_clock.h"

typedef struct {
	snd_pcm_ioplug_t io;
	struct cb_header *h;
	uint32_t *stamps;
	float *tl;
	size_t maplen;
	int tfd;
	uint32_t generation;
	int running;
	int in_xrun;                   /* this xrun was counted already */
	int64_t start_frame;           /* card frame of stream position 0 */
	snd_pcm_uframes_t avail_min;
	float *prefill;                /* playback data written before start */
	snd_pcm_uframes_t prefill_frames;
	float *sine;                   /* capture in sine mode: sin(2 pi m / rate), m < rate */
} cb_pcm;

#define now_ns cb_now_ns
#define card_frame cb_card_frame

static int gone(cb_pcm *c)
{
	return __atomic_load_n(&c->h->unplugged, __ATOMIC_ACQUIRE) ||
	       __atomic_load_n(&c->h->generation, __ATOMIC_ACQUIRE) != c->generation;
}

/* continuous hardware position since start */
static int64_t hw_pos(cb_pcm *c)
{
	if (!c->running)
		return 0;
	return card_frame(c->h, now_ns()) - c->start_frame;
}

static int64_t appl_pos(cb_pcm *c)
{
	return (int64_t)c->io.appl_ptr;
}

static snd_pcm_sframes_t avail_at(cb_pcm *c, int64_t hw)
{
	if (c->io.stream == SND_PCM_STREAM_PLAYBACK)
		return (snd_pcm_sframes_t)(c->io.buffer_size - (appl_pos(c) - hw));
	return (snd_pcm_sframes_t)(hw - appl_pos(c));
}

/* ---- sample conversion ---------------------------------------------------------------------- */

static float get_sample(const snd_pcm_channel_area_t *a, snd_pcm_uframes_t frame, snd_pcm_format_t fmt)
{
	const char *p = (const char *)a->addr + (a->first + frame * a->step) / 8;
	switch (fmt) {
	case SND_PCM_FORMAT_S16_LE: { int16_t v; memcpy(&v, p, 2); return v / 32768.0f; }
	case SND_PCM_FORMAT_S32_LE: { int32_t v; memcpy(&v, p, 4); return (float)(v / 2147483648.0); }
	case SND_PCM_FORMAT_S24_3LE: {
		const unsigned char *b = (const unsigned char *)p;
		int32_t v = (int32_t)((uint32_t)b[0] << 8 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 24);
		return (float)(v / 2147483648.0);
	}
	case SND_PCM_FORMAT_S24_LE: {   /* 24 bits in the low three bytes of a 32-bit word */
		int32_t v; memcpy(&v, p, 4);
		v = (int32_t)((uint32_t)v << 8) >> 8;
		return (float)(v / 8388608.0);
	}
	case SND_PCM_FORMAT_FLOAT_LE: { float v; memcpy(&v, p, 4); return v; }
	default: return 0.0f;
	}
}

/* float -> integer code, the inverse of get_sample's scaling (so integer formats loop back
 * bit-exact), clipped to the format's range */
static int64_t to_code(double v, int bits)
{
	double full = (double)(1LL << (bits - 1));
	double r = nearbyint(v * full);
	return (int64_t)(r > full - 1 ? full - 1 : (r < -full ? -full : r));
}

static void put_sample(const snd_pcm_channel_area_t *a, snd_pcm_uframes_t frame, snd_pcm_format_t fmt, float x)
{
	char *p = (char *)a->addr + (a->first + frame * a->step) / 8;
	double v = x > 1.0f ? 1.0 : (x < -1.0f ? -1.0 : x);
	switch (fmt) {
	case SND_PCM_FORMAT_S16_LE: { int16_t s = (int16_t)to_code(v, 16); memcpy(p, &s, 2); break; }
	case SND_PCM_FORMAT_S32_LE: { int32_t s = (int32_t)to_code(v, 32); memcpy(p, &s, 4); break; }
	case SND_PCM_FORMAT_S24_3LE: {
		int32_t s = (int32_t)to_code(v, 24);
		unsigned char *b = (unsigned char *)p;
		b[0] = s & 0xff; b[1] = (s >> 8) & 0xff; b[2] = (s >> 16) & 0xff;
		break;
	}
	case SND_PCM_FORMAT_S24_LE: { int32_t s = (int32_t)to_code(v, 24); memcpy(p, &s, 4); break; }
	case SND_PCM_FORMAT_FLOAT_LE: { float f = (float)v; memcpy(p, &f, 4); break; }
	default: break;
	}
}

/* ---- timeline ------------------------------------------------------------------------------------ */

static void tl_write(cb_pcm *c, int64_t frame, const float *samples, unsigned int nch)
{
	struct cb_header *h = c->h;
	uint32_t idx = (uint32_t)frame & (h->tl_frames - 1);
	float *dst = c->tl + (size_t)idx * h->tl_channels;
	__atomic_store_n(&c->stamps[idx], (uint32_t)~(uint32_t)frame, __ATOMIC_RELEASE); /* invalid while writing */
	for (unsigned int ch = 0; ch < h->tl_channels; ch++)
		dst[ch] = ch < nch ? samples[ch] : 0.0f;
	__atomic_store_n(&c->stamps[idx], (uint32_t)frame, __ATOMIC_RELEASE);
}

static void tl_read(cb_pcm *c, int64_t frame, float *out, unsigned int nch)
{
	struct cb_header *h = c->h;
	uint32_t idx = (uint32_t)frame & (h->tl_frames - 1);
	const float *src = c->tl + (size_t)idx * h->tl_channels;
	uint32_t s1 = __atomic_load_n(&c->stamps[idx], __ATOMIC_ACQUIRE);
	for (unsigned int ch = 0; ch < nch; ch++)
		out[ch] = ch < h->tl_channels ? src[ch] : 0.0f;
	uint32_t s2 = __atomic_load_n(&c->stamps[idx], __ATOMIC_ACQUIRE);
	if (s1 != (uint32_t)frame || s2 != s1)
		memset(out, 0, sizeof(float) * nch);
}

/* ---- timer --------------------------------------------------------------------------------------- */

static void arm_at(cb_pcm *c, int64_t when)
{
	struct itimerspec its;
	memset(&its, 0, sizeof(its));
	if (when <= 0)
		when = 1;
	its.it_value.tv_sec = when / 1000000000LL;
	its.it_value.tv_nsec = when % 1000000000LL;
	timerfd_settime(c->tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* Arm the timer for the moment avail reaches avail_min (now if it already has). */
static int arm(cb_pcm *c)
{
	int64_t t = now_ns();
	if (gone(c)) {
		arm_at(c, t);
		return -ENODEV;
	}
	if (!c->running) {
		if (c->io.stream == SND_PCM_STREAM_PLAYBACK && avail_at(c, 0) >= (snd_pcm_sframes_t)c->avail_min)
			arm_at(c, t);
		else
			arm_at(c, t + 20000000LL);
		return 0;
	}
	int64_t hw = card_frame(c->h, t) - c->start_frame;
	snd_pcm_sframes_t av = avail_at(c, hw);
	if (av >= (snd_pcm_sframes_t)c->avail_min) {
		arm_at(c, t);
		return 1;
	}
	double missing = (double)((snd_pcm_sframes_t)c->avail_min - av);
	double rate = c->h->rate * (1 + c->h->ppm * 1e-6 + fabs(c->h->wander_ppm) * 1e-6);
	int64_t when = t + (int64_t)(missing / rate * 1e9);
	int64_t stall_until = __atomic_load_n(&c->h->stall_until_ns, __ATOMIC_ACQUIRE);
	if (stall_until > t && when < stall_until)
		when = stall_until;
	if (c->h->step_ns > 0) {
		int64_t rel = when - c->h->t0_ns;
		when = c->h->t0_ns + ((rel + c->h->step_ns - 1) / c->h->step_ns) * c->h->step_ns;
	}
	if (when > t + 20000000LL)
		when = t + 20000000LL;   /* look again at least every 20 ms (unplug, parameter changes) */
	arm_at(c, when);
	return 0;
}

/* ---- callbacks ----------------------------------------------------------------------------------- */

static int cb_start(snd_pcm_ioplug_t *io)
{
	cb_pcm *c = io->private_data;
	if (gone(c))
		return -ENODEV;
	c->start_frame = card_frame(c->h, now_ns());
	c->running = 1;
	c->in_xrun = 0;
	if (io->stream == SND_PCM_STREAM_PLAYBACK && c->prefill) {
		unsigned int nch = io->channels;
		for (snd_pcm_uframes_t i = 0; i < c->prefill_frames; i++)
			tl_write(c, c->start_frame + (int64_t)i, c->prefill + i * nch, nch);
		c->prefill_frames = 0;
	}
	arm(c);
	return 0;
}

static int cb_stop(snd_pcm_ioplug_t *io)
{
	cb_pcm *c = io->private_data;
	c->running = 0;
	c->prefill_frames = 0;
	arm(c);
	return 0;
}

/* An xrun, counted once until the stream is prepared or started again. */
static snd_pcm_sframes_t count_xrun(cb_pcm *c, int64_t card_frame_now)
{
	if (!c->in_xrun) {
		c->in_xrun = 1;
		if (c->io.stream == SND_PCM_STREAM_PLAYBACK) {
			__atomic_store_n(&c->h->last_xrun_playback_frame, card_frame_now, __ATOMIC_RELEASE);
			__atomic_add_fetch(&c->h->xruns_playback, 1, __ATOMIC_ACQ_REL);
		} else {
			__atomic_store_n(&c->h->last_xrun_capture_frame, card_frame_now, __ATOMIC_RELEASE);
			__atomic_add_fetch(&c->h->xruns_capture, 1, __ATOMIC_ACQ_REL);
		}
	}
	return -EPIPE;
}

static snd_pcm_sframes_t cb_pointer(snd_pcm_ioplug_t *io)
{
	cb_pcm *c = io->private_data;
	if (gone(c))
		return -ENODEV;
	if (!c->running)
		return 0;
	int64_t hw = hw_pos(c);
	int64_t appl = appl_pos(c);
	if (io->stream == SND_PCM_STREAM_PLAYBACK) {
		if (hw >= appl && io->state == SND_PCM_STATE_RUNNING)
			return count_xrun(c, c->start_frame + hw);   /* ran out of data */
		if (hw > appl)
			hw = appl;
	} else if (hw - appl > (int64_t)io->buffer_size) {
		return count_xrun(c, c->start_frame + hw);           /* overrun */
	}
	return (snd_pcm_sframes_t)(hw % (int64_t)io->buffer_size);
}

/* Capture in sine mode: channel ch at card frame n is amp sin(2 pi f_ch n / rate), exactly, from
 * a table of one second (the phase index (f_ch n) mod rate advances by f_ch per frame). */
static void sine_transfer(cb_pcm *c, const snd_pcm_channel_area_t *areas, snd_pcm_uframes_t offset,
			  snd_pcm_uframes_t size, int64_t first)
{
	const struct cb_header *h = c->h;
	unsigned int nch = c->io.channels, rate = h->rate;
	uint64_t step[CB_MAX_CH], idx[CB_MAX_CH];
	float amp = h->sine_amp;
	for (unsigned int ch = 0; ch < nch; ch++) {
		step[ch] = ((uint64_t)h->sine_hz + (uint64_t)ch * h->sine_step_hz) % rate;
		uint64_t n = first >= 0 ? (uint64_t)first % rate : (uint64_t)(rate - (uint64_t)(-first) % rate) % rate;
		idx[ch] = (step[ch] * n) % rate;
	}
	for (snd_pcm_uframes_t i = 0; i < size; i++) {
		for (unsigned int ch = 0; ch < nch; ch++) {
			put_sample(&areas[ch], offset + i, c->io.format, amp * c->sine[idx[ch]]);
			idx[ch] += step[ch];
			if (idx[ch] >= rate)
				idx[ch] -= rate;
		}
	}
}

static snd_pcm_sframes_t cb_transfer(snd_pcm_ioplug_t *io, const snd_pcm_channel_area_t *areas,
				     snd_pcm_uframes_t offset, snd_pcm_uframes_t size)
{
	cb_pcm *c = io->private_data;
	unsigned int nch = io->channels;
	float frame[CB_MAX_CH];
	if (gone(c))
		return -ENODEV;
	int64_t pos = appl_pos(c);
	if (io->stream == SND_PCM_STREAM_CAPTURE &&
	    __atomic_load_n(&c->h->capture_source, __ATOMIC_ACQUIRE) == CB_SOURCE_SINE && c->sine) {
		sine_transfer(c, areas, offset, size, c->start_frame + pos);
		return (snd_pcm_sframes_t)size;
	}
	for (snd_pcm_uframes_t i = 0; i < size; i++) {
		if (io->stream == SND_PCM_STREAM_PLAYBACK) {
			for (unsigned int ch = 0; ch < nch; ch++)
				frame[ch] = get_sample(&areas[ch], offset + i, io->format);
			if (c->running) {
				tl_write(c, c->start_frame + pos + (int64_t)i, frame, nch);
			} else if (c->prefill && pos + (int64_t)i < (int64_t)io->buffer_size) {
				memcpy(c->prefill + (pos + i) * nch, frame, sizeof(float) * nch);
				if ((snd_pcm_uframes_t)(pos + i + 1) > c->prefill_frames)
					c->prefill_frames = pos + i + 1;
			}
		} else {
			tl_read(c, c->start_frame + pos + (int64_t)i, frame, nch);
			for (unsigned int ch = 0; ch < nch; ch++)
				put_sample(&areas[ch], offset + i, io->format, frame[ch]);
		}
	}
	return (snd_pcm_sframes_t)size;
}

static int cb_prepare(snd_pcm_ioplug_t *io)
{
	cb_pcm *c = io->private_data;
	if (gone(c))
		return -ENODEV;
	c->running = 0;
	c->in_xrun = 0;
	c->prefill_frames = 0;
	if (io->stream == SND_PCM_STREAM_PLAYBACK) {
		free(c->prefill);
		c->prefill = calloc(io->buffer_size * io->channels, sizeof(float));
		if (!c->prefill)
			return -ENOMEM;
	}
	arm(c);
	return 0;
}

static int cb_sw_params(snd_pcm_ioplug_t *io, snd_pcm_sw_params_t *params)
{
	cb_pcm *c = io->private_data;
	snd_pcm_uframes_t v;
	if (snd_pcm_sw_params_get_avail_min(params, &v) == 0 && v > 0)
		c->avail_min = v;
	return 0;
}

static int cb_hw_params(snd_pcm_ioplug_t *io, snd_pcm_hw_params_t *params)
{
	cb_pcm *c = io->private_data;
	(void)params;
	c->avail_min = io->period_size;
	return 0;
}

static int cb_poll_revents(snd_pcm_ioplug_t *io, struct pollfd *pfd, unsigned int nfds,
			   unsigned short *revents)
{
	cb_pcm *c = io->private_data;
	uint64_t expirations;
	(void)nfds;
	if (pfd[0].revents & POLLIN) {
		ssize_t r = read(c->tfd, &expirations, sizeof(expirations));
		(void)r;
	}
	int ready = arm(c);
	if (ready < 0) {
		io->state = SND_PCM_STATE_DISCONNECTED;
		*revents = POLLERR;
		return 0;
	}
	if (!c->running && io->stream == SND_PCM_STREAM_PLAYBACK &&
	    avail_at(c, 0) >= (snd_pcm_sframes_t)c->avail_min)
		ready = 1;
	*revents = ready ? (io->stream == SND_PCM_STREAM_PLAYBACK ? POLLOUT : POLLIN) : 0;
	return 0;
}

static int cb_close(snd_pcm_ioplug_t *io)
{
	cb_pcm *c = io->private_data;
	if (c->tfd >= 0)
		close(c->tfd);
	if (c->h)
		munmap(c->h, c->maplen);
	free(c->prefill);
	free(c->sine);
	free(c);
	return 0;
}

static const snd_pcm_ioplug_callback_t callbacks = {
	.start = cb_start,
	.stop = cb_stop,
	.pointer = cb_pointer,
	.transfer = cb_transfer,
	.close = cb_close,
	.hw_params = cb_hw_params,
	.sw_params = cb_sw_params,
	.prepare = cb_prepare,
	.poll_revents = cb_poll_revents,
};

/* ---- shared memory ------------------------------------------------------------------------------- */

struct cb_params {
	const char *shm;
	unsigned int rate, capture_channels, playback_channels;
	double ppm, wander_ppm, wander_period, step_us;
	unsigned int capture_source, sine_hz, sine_step_hz, timeline_frames;
	double sine_level_db;
	unsigned int nformats;
	snd_pcm_format_t formats[8];
};

static size_t map_size(unsigned int tl_channels, unsigned int tl_frames)
{
	return CB_HEADER + (size_t)tl_frames * 4 + (size_t)tl_frames * tl_channels * sizeof(float);
}

static int map_card(cb_pcm *c, const struct cb_params *p)
{
	unsigned int tl_ch = p->capture_channels > p->playback_channels ? p->capture_channels : p->playback_channels;
	unsigned int tl_frames = p->timeline_frames;
	if (tl_ch == 0)
		tl_ch = 1;
	int fd = open(p->shm, O_RDWR | O_CREAT | O_EXCL, 0666);
	int created = fd >= 0;
	if (!created) {
		if (errno != EEXIST)
			return -errno;
		fd = open(p->shm, O_RDWR);
		if (fd < 0)
			return -errno;
	}
	if (created) {
		if (ftruncate(fd, (off_t)map_size(tl_ch, tl_frames)) < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
	} else {
		/* wait for the creator to finish its header */
		struct stat st;
		for (int i = 0; i < 200; i++) {
			if (fstat(fd, &st) == 0 && (size_t)st.st_size >= CB_HEADER) {
				uint32_t magic = 0;
				if (pread(fd, &magic, 4, 0) == 4 && magic == CB_MAGIC)
					break;
			}
			usleep(1000);
		}
		struct cb_header hdr;
		if (pread(fd, &hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr) || hdr.magic != CB_MAGIC ||
		    hdr.version != CB_VERSION) {
			close(fd);
			return -EINVAL;
		}
		tl_ch = hdr.tl_channels;
		tl_frames = hdr.tl_frames;
	}
	size_t len = map_size(tl_ch, tl_frames);
	void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return -errno;
	struct cb_header *h = m;
	if (created) {
		h->version = CB_VERSION;
		h->rate = p->rate;
		h->capture_channels = p->capture_channels;
		h->playback_channels = p->playback_channels;
		h->tl_channels = tl_ch;
		h->tl_frames = tl_frames;
		h->generation = 1;
		h->t0_ns = now_ns();
		h->base_ns = h->t0_ns;
		h->base_pos = 0.0;
		h->ppm = p->ppm;
		h->wander_ppm = p->wander_ppm;
		h->wander_period = p->wander_period;
		h->step_ns = (int64_t)(p->step_us * 1000.0);
		h->capture_source = p->capture_source;
		h->sine_hz = p->sine_hz;
		h->sine_step_hz = p->sine_step_hz;
		h->sine_amp = (float)pow(10.0, p->sine_level_db / 20.0);
		uint32_t *stamps = (uint32_t *)((char *)m + CB_HEADER);
		for (uint32_t i = 0; i < tl_frames; i++)
			stamps[i] = ~i;   /* never equal to a frame index that maps here soon */
		__atomic_store_n(&h->magic, CB_MAGIC, __ATOMIC_RELEASE);
	}
	c->h = h;
	c->maplen = len;
	c->stamps = (uint32_t *)((char *)m + CB_HEADER);
	c->tl = (float *)((char *)m + CB_HEADER + (size_t)tl_frames * 4);
	return 0;
}

static int get_real(snd_config_t *n, double *out)
{
	long l;
	if (snd_config_get_real(n, out) == 0)
		return 0;
	if (snd_config_get_integer(n, &l) == 0) {
		*out = (double)l;
		return 0;
	}
	const char *s;
	if (snd_config_get_string(n, &s) == 0) {
		char *end;
		*out = strtod(s, &end);
		return *end ? -EINVAL : 0;
	}
	return -EINVAL;
}

/* "S16_LE S24_3LE ..." (spaces or commas) → the formats a card offers; -EINVAL on a format the
 * card cannot convert */
static int parse_formats(const char *text, struct cb_params *p)
{
	static const snd_pcm_format_t known[] = {
		SND_PCM_FORMAT_S16_LE, SND_PCM_FORMAT_S24_3LE, SND_PCM_FORMAT_S24_LE,
		SND_PCM_FORMAT_S32_LE, SND_PCM_FORMAT_FLOAT_LE,
	};
	char word[32];
	p->nformats = 0;
	while (*text) {
		size_t len = strcspn(text, " ,\t");
		if (len > 0) {
			if (len >= sizeof(word) || p->nformats >= sizeof(p->formats) / sizeof(p->formats[0]))
				return -EINVAL;
			memcpy(word, text, len);
			word[len] = 0;
			snd_pcm_format_t f = snd_pcm_format_value(word);
			int ok = 0;
			for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
				ok |= known[k] == f;
			if (!ok) {
				SNDERR("cbvcard: unsupported format %s", word);
				return -EINVAL;
			}
			p->formats[p->nformats++] = f;
		}
		text += len;
		if (*text)
			text++;
	}
	return p->nformats ? 0 : -EINVAL;
}

SND_PCM_PLUGIN_DEFINE_FUNC(cbvcard)
{
	snd_config_iterator_t i, next;
	struct cb_params p = { NULL, 48000, 2, 2, 0.0, 0.0, 60.0, 0.0,
			       CB_SOURCE_LOOP, 997, 2, CB_TL_FRAMES, -6.0, 4,
			       { SND_PCM_FORMAT_S16_LE, SND_PCM_FORMAT_S24_3LE, SND_PCM_FORMAT_S32_LE,
				 SND_PCM_FORMAT_FLOAT_LE } };
	int err;
	(void)root;

	snd_config_for_each(i, next, conf) {
		snd_config_t *n = snd_config_iterator_entry(i);
		const char *id;
		double v;
		if (snd_config_get_id(n, &id) < 0)
			continue;
		if (!strcmp(id, "comment") || !strcmp(id, "type") || !strcmp(id, "hint") || !strcmp(id, "card"))
			continue;
		if (!strcmp(id, "shm")) {
			if (snd_config_get_string(n, &p.shm) < 0)
				return -EINVAL;
			continue;
		}
		if (!strcmp(id, "formats")) {
			const char *text;
			if (snd_config_get_string(n, &text) < 0 || parse_formats(text, &p) < 0) {
				SNDERR("cbvcard: bad value for formats");
				return -EINVAL;
			}
			continue;
		}
		if (!strcmp(id, "capture_source")) {
			const char *text;
			if (snd_config_get_string(n, &text) < 0 ||
			    (strcmp(text, "loop") && strcmp(text, "sine"))) {
				SNDERR("cbvcard: capture_source is \"loop\" or \"sine\"");
				return -EINVAL;
			}
			p.capture_source = strcmp(text, "sine") ? CB_SOURCE_LOOP : CB_SOURCE_SINE;
			continue;
		}
		if (get_real(n, &v) < 0) {
			SNDERR("cbvcard: bad value for %s", id);
			return -EINVAL;
		}
		if (!strcmp(id, "rate")) p.rate = (unsigned int)v;
		else if (!strcmp(id, "capture_channels")) p.capture_channels = (unsigned int)v;
		else if (!strcmp(id, "playback_channels")) p.playback_channels = (unsigned int)v;
		else if (!strcmp(id, "ppm")) p.ppm = v;
		else if (!strcmp(id, "wander_ppm")) p.wander_ppm = v;
		else if (!strcmp(id, "wander_period")) p.wander_period = v;
		else if (!strcmp(id, "usb_step_us")) p.step_us = v;
		else if (!strcmp(id, "sine_hz")) p.sine_hz = (unsigned int)v;
		else if (!strcmp(id, "sine_step_hz")) p.sine_step_hz = (unsigned int)v;
		else if (!strcmp(id, "sine_level_db")) p.sine_level_db = v;
		else if (!strcmp(id, "timeline_frames")) p.timeline_frames = (unsigned int)v;
		else {
			SNDERR("cbvcard: unknown field %s", id);
			return -EINVAL;
		}
	}
	if (!p.shm) {
		SNDERR("cbvcard: shm is required");
		return -EINVAL;
	}
	if (p.capture_channels > CB_MAX_CH || p.playback_channels > CB_MAX_CH)
		return -EINVAL;
	if (p.timeline_frames < 4096 || (p.timeline_frames & (p.timeline_frames - 1))) {
		SNDERR("cbvcard: timeline_frames must be a power of two, at least 4096");
		return -EINVAL;
	}
	if (p.rate < 1000 || p.rate > 768000) {
		SNDERR("cbvcard: rate out of range");
		return -EINVAL;
	}

	cb_pcm *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->tfd = -1;
	err = map_card(c, &p);
	if (err < 0) {
		free(c);
		return err;
	}
	struct cb_header *h = c->h;
	unsigned int nch = stream == SND_PCM_STREAM_PLAYBACK ? h->playback_channels : h->capture_channels;
	if (__atomic_load_n(&h->unplugged, __ATOMIC_ACQUIRE)) {
		munmap(c->h, c->maplen);
		free(c);
		return -ENODEV;
	}
	if (__atomic_load_n(&h->busy, __ATOMIC_ACQUIRE)) {    /* someone else has the card open */
		munmap(c->h, c->maplen);
		free(c);
		return -EBUSY;
	}
	if (nch == 0) {
		munmap(c->h, c->maplen);
		free(c);
		return -ENOENT;
	}
	c->generation = __atomic_load_n(&h->generation, __ATOMIC_ACQUIRE);
	c->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (c->tfd < 0) {
		err = -errno;
		munmap(c->h, c->maplen);
		free(c);
		return err;
	}
	if (stream == SND_PCM_STREAM_CAPTURE) {
		/* the sine source's table, ready whatever the source now: it can be switched live */
		c->sine = malloc(sizeof(float) * h->rate);
		if (!c->sine) {
			close(c->tfd);
			munmap(c->h, c->maplen);
			free(c);
			return -ENOMEM;
		}
		for (unsigned int m = 0; m < h->rate; m++)
			c->sine[m] = (float)sin(2 * M_PI * (double)m / h->rate);
	}

	c->io.version = SND_PCM_IOPLUG_VERSION;
	c->io.name = "cardbridge virtual card";
	c->io.callback = &callbacks;
	c->io.private_data = c;
	c->io.poll_fd = c->tfd;
	c->io.poll_events = POLLIN;
	c->io.mmap_rw = 0;

	err = snd_pcm_ioplug_create(&c->io, name, stream, mode);
	if (err < 0) {
		close(c->tfd);
		munmap(c->h, c->maplen);
		free(c->sine);
		free(c);
		return err;
	}

	static const unsigned int access[] = {
		SND_PCM_ACCESS_RW_INTERLEAVED, SND_PCM_ACCESS_MMAP_INTERLEAVED,
	};
	unsigned int formats[8];
	for (unsigned int k = 0; k < p.nformats; k++)
		formats[k] = (unsigned int)p.formats[k];
	if ((err = snd_pcm_ioplug_set_param_list(&c->io, SND_PCM_IOPLUG_HW_ACCESS, 2, access)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_list(&c->io, SND_PCM_IOPLUG_HW_FORMAT, p.nformats, formats)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&c->io, SND_PCM_IOPLUG_HW_CHANNELS, nch, nch)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&c->io, SND_PCM_IOPLUG_HW_RATE, h->rate, h->rate)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&c->io, SND_PCM_IOPLUG_HW_PERIOD_BYTES, 16 * 2, 16384 * 4 * nch)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&c->io, SND_PCM_IOPLUG_HW_PERIODS, 2, 32)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&c->io, SND_PCM_IOPLUG_HW_BUFFER_BYTES, 32 * 2,
						   (h->tl_frames / 2) * 4 * nch)) < 0) {
		snd_pcm_ioplug_delete(&c->io);
		return err;
	}
	*pcmp = c->io.pcm;
	return 0;
}

SND_PCM_PLUGIN_SYMBOL(cbvcard);
