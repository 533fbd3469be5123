/*
 * cbvcard: a virtual sound card for alsa-lib (ALSA external I/O plugin, snd_pcm_ioplug).
 *
 * Runs inside whatever process opens the PCM (tests, bridges, alsa_in, zita-a2j, ...), in the
 * calling thread of each alsa-lib call. Every card has its own sample clock, shared by all the
 * streams of that card in every process through a small shared-memory file:
 *
 *   F(t) = base_pos + rate * ((t - base)(1 + ppm 1e-6) + W(t) - W(base))
 *   W(t) = wander_ppm 1e-6 * (P / 2 pi) * (1 - cos(2 pi (t - t0) / P))
 *
 * with t = CLOCK_MONOTONIC (ns), optionally quantised to `usb_step_us` (a USB-like pointer that
 * moves in steps), frozen while a stall is injected. Playback is looped back to capture: the
 * sample played at card frame T is what capture reads at card frame T (per-frame stamps make
 * frames never written read as silence). Unplug makes every call fail with -ENODEV.
 *
 * Shared file layout (little endian), mirrored by vcard.py:
 *   0 magic u32 'CBVC'   4 version u32      8 rate u32       12 capture_channels u32
 *  16 playback_ch u32   20 tl_channels u32 24 tl_frames u32  28 generation u32
 *  32 unplugged i32     40 t0_ns i64       48 base_ns i64    56 base_pos f64
 *  64 ppm f64           72 wander_ppm f64  80 wander_period f64 (s)  88 step_ns i64
 *  96 stall_start_ns i64  104 stall_until_ns i64   then at 128: u32 stamps[tl_frames],
 *  then float samples[tl_frames * tl_channels].
 *
 * ALSA configuration:
 *   pcm_type.cbvcard { lib "/abs/path/libasound_module_pcm_cbvcard.so" }
 *   pcm.NAME { type cbvcard  shm "/path/NAME.shm"  rate 48000  capture_channels 2
 *              playback_channels 2  ppm 0  wander_ppm 0  wander_period 60  usb_step_us 0 }
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

#define CB_MAGIC 0x43564243u
#define CB_VERSION 1u
#define CB_HEADER 128
#define CB_TL_FRAMES 65536u
#define CB_MAX_CH 64

struct cb_header {
	uint32_t magic, version, rate, capture_channels;
	uint32_t playback_channels, tl_channels, tl_frames, generation;
	int32_t unplugged, pad;
	int64_t t0_ns, base_ns;
	double base_pos, ppm, wander_ppm, wander_period;
	int64_t step_ns, stall_start_ns, stall_until_ns;
};

typedef struct {
	snd_pcm_ioplug_t io;
	struct cb_header *h;
	uint32_t *stamps;
	float *tl;
	size_t maplen;
	int tfd;
	uint32_t generation;
	int running;
	int64_t start_frame;           /* card frame of stream position 0 */
	snd_pcm_uframes_t avail_min;
	float *prefill;                /* playback data written before start */
	snd_pcm_uframes_t prefill_frames;
} cb_pcm;

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double wander(const struct cb_header *h, int64_t t)
{
	if (h->wander_ppm == 0.0 || h->wander_period <= 0.0)
		return 0.0;
	double s = (double)(t - h->t0_ns) * 1e-9;
	double p = h->wander_period;
	return h->wander_ppm * 1e-6 * (p / (2 * M_PI)) * (1 - cos(2 * M_PI * s / p));
}

/* card frame position (fractional) at time t */
static double card_pos(const struct cb_header *h, int64_t t)
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
	return h->base_pos + h->rate * (s * (1 + h->ppm * 1e-6) + wander(h, t) - wander(h, h->base_ns));
}

static int64_t card_frame(const struct cb_header *h, int64_t t)
{
	return (int64_t)floor(card_pos(h, t));
}

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
	case SND_PCM_FORMAT_FLOAT_LE: { float v; memcpy(&v, p, 4); return v; }
	default: return 0.0f;
	}
}

static void put_sample(const snd_pcm_channel_area_t *a, snd_pcm_uframes_t frame, snd_pcm_format_t fmt, float x)
{
	char *p = (char *)a->addr + (a->first + frame * a->step) / 8;
	double v = x > 1.0f ? 1.0 : (x < -1.0f ? -1.0 : x);
	switch (fmt) {
	case SND_PCM_FORMAT_S16_LE: { int16_t s = (int16_t)lrint(v * 32767.0); memcpy(p, &s, 2); break; }
	case SND_PCM_FORMAT_S32_LE: { int32_t s = (int32_t)llrint(v * 2147483647.0); memcpy(p, &s, 4); break; }
	case SND_PCM_FORMAT_S24_3LE: {
		int32_t s = (int32_t)lrint(v * 8388607.0);
		unsigned char *b = (unsigned char *)p;
		b[0] = s & 0xff; b[1] = (s >> 8) & 0xff; b[2] = (s >> 16) & 0xff;
		break;
	}
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
			return -EPIPE;                      /* ran out of data */
		if (hw > appl)
			hw = appl;
	} else if (hw - appl > (int64_t)io->buffer_size) {
		return -EPIPE;                              /* overrun */
	}
	return (snd_pcm_sframes_t)(hw % (int64_t)io->buffer_size);
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
};

static size_t map_size(unsigned int tl_channels)
{
	return CB_HEADER + (size_t)CB_TL_FRAMES * 4 + (size_t)CB_TL_FRAMES * tl_channels * sizeof(float);
}

static int map_card(cb_pcm *c, const struct cb_params *p)
{
	unsigned int tl_ch = p->capture_channels > p->playback_channels ? p->capture_channels : p->playback_channels;
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
		if (ftruncate(fd, (off_t)map_size(tl_ch)) < 0) {
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
	}
	size_t len = map_size(tl_ch);
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
		h->tl_frames = CB_TL_FRAMES;
		h->generation = 1;
		h->t0_ns = now_ns();
		h->base_ns = h->t0_ns;
		h->base_pos = 0.0;
		h->ppm = p->ppm;
		h->wander_ppm = p->wander_ppm;
		h->wander_period = p->wander_period;
		h->step_ns = (int64_t)(p->step_us * 1000.0);
		uint32_t *stamps = (uint32_t *)((char *)m + CB_HEADER);
		for (uint32_t i = 0; i < CB_TL_FRAMES; i++)
			stamps[i] = ~i;   /* never equal to a frame index that maps here soon */
		__atomic_store_n(&h->magic, CB_MAGIC, __ATOMIC_RELEASE);
	}
	c->h = h;
	c->maplen = len;
	c->stamps = (uint32_t *)((char *)m + CB_HEADER);
	c->tl = (float *)((char *)m + CB_HEADER + (size_t)CB_TL_FRAMES * 4);
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

SND_PCM_PLUGIN_DEFINE_FUNC(cbvcard)
{
	snd_config_iterator_t i, next;
	struct cb_params p = { NULL, 48000, 2, 2, 0.0, 0.0, 60.0, 0.0 };
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
		free(c);
		return err;
	}

	static const unsigned int access[] = {
		SND_PCM_ACCESS_RW_INTERLEAVED, SND_PCM_ACCESS_MMAP_INTERLEAVED,
	};
	static const unsigned int formats[] = {
		SND_PCM_FORMAT_S16_LE, SND_PCM_FORMAT_S24_3LE, SND_PCM_FORMAT_S32_LE, SND_PCM_FORMAT_FLOAT_LE,
	};
	if ((err = snd_pcm_ioplug_set_param_list(&c->io, SND_PCM_IOPLUG_HW_ACCESS, 2, access)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_list(&c->io, SND_PCM_IOPLUG_HW_FORMAT, 4, formats)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&c->io, SND_PCM_IOPLUG_HW_CHANNELS, nch, nch)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&c->io, SND_PCM_IOPLUG_HW_RATE, h->rate, h->rate)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&c->io, SND_PCM_IOPLUG_HW_PERIOD_BYTES, 16 * 2, 16384 * 4 * nch)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&c->io, SND_PCM_IOPLUG_HW_PERIODS, 2, 32)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(&c->io, SND_PCM_IOPLUG_HW_BUFFER_BYTES, 32 * 2,
						   (CB_TL_FRAMES / 2) * 4 * nch)) < 0) {
		snd_pcm_ioplug_delete(&c->io);
		return err;
	}
	*pcmp = c->io.pcm;
	return 0;
}

SND_PCM_PLUGIN_SYMBOL(cbvcard);
