/* One direction of a bridge worker's per-period work, in the ALSA thread.
 *
 * Runs in the worker's ALSA thread (cffi releases the GIL around each call), once or twice per
 * device period: sample conversion between the device's format and float32, resampling with
 * libsamplerate, and the transfer between the resampler and a ring of the JACK side
 * (rtcore.h). Never allocates, locks or blocks: every buffer is allocated by Python
 * (periodpath.py) before the stream starts.
 *
 * libsamplerate is the one inside the `samplerate` package (python-samplerate links it in and
 * exports its C API): cb_src_bind looks its functions up in that already loaded module, so that
 * the bridge resamples with exactly the library the project depends on, without the Python call
 * and the output array of Resampler.process each period.
 */

#include <stdint.h>
#include <string.h>
#include <math.h>
#include <dlfcn.h>

#include "rtcore.h"

#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* The device formats, numbered as bridgestats.FORMATS (the same order; 0 is "not known"). */
typedef struct {
    uint8_t width;        /* bytes per sample */
    uint8_t big_endian;
    uint8_t kind;         /* FMT_INT (two's complement), FMT_UINT (offset binary), FMT_FLOAT */
    uint8_t bits;         /* significant bits of an integer, from the low end of the sample */
} cb_format;

enum { FMT_INT, FMT_UINT, FMT_FLOAT };

static const cb_format FORMATS[] = {
    {0, 0, FMT_INT, 0},
    {4, 0, FMT_FLOAT, 32},   /* FLOAT_LE */
    {4, 0, FMT_INT, 32},     /* S32_LE */
    {3, 0, FMT_INT, 24},     /* S24_3LE */
    {2, 0, FMT_INT, 16},     /* S16_LE */
    {4, 0, FMT_INT, 24},     /* S24_LE: 24 bits in the low three bytes of four */
    {8, 0, FMT_FLOAT, 64},   /* FLOAT64_LE */
    {4, 1, FMT_INT, 32},     /* S32_BE */
    {3, 1, FMT_INT, 24},     /* S24_3BE */
    {2, 1, FMT_INT, 16},     /* S16_BE */
    {4, 1, FMT_INT, 24},     /* S24_BE */
    {4, 1, FMT_FLOAT, 32},   /* FLOAT_BE */
    {4, 0, FMT_UINT, 32},    /* U32_LE */
    {3, 0, FMT_UINT, 24},    /* U24_3LE */
    {2, 0, FMT_UINT, 16},    /* U16_LE */
    {1, 0, FMT_INT, 8},      /* S8 */
    {1, 0, FMT_UINT, 8},     /* U8 */
};
#define N_FORMATS (sizeof(FORMATS) / sizeof(FORMATS[0]))

/* libsamplerate's public ABI (samplerate.h, stable since 0.1) */
typedef struct {
    const float *data_in;
    float *data_out;
    long input_frames, output_frames;
    long input_frames_used, output_frames_gen;
    int end_of_input;
    double src_ratio;
} cb_src_data;

static void *(*src_new_fn)(int, int, int *);
static void *(*src_delete_fn)(void *);
static int (*src_process_fn)(void *, cb_src_data *);
static const char *(*src_strerror_fn)(int);

int cb_src_bind(const char *module_path)
{
    if (src_process_fn)
        return 0;
    void *h = dlopen(module_path, RTLD_NOW | RTLD_NOLOAD);
    if (!h)
        return -1;
    src_new_fn = (void *(*)(int, int, int *))dlsym(h, "src_new");
    src_delete_fn = (void *(*)(void *))dlsym(h, "src_delete");
    src_strerror_fn = (const char *(*)(int))dlsym(h, "src_strerror");
    src_process_fn = (int (*)(void *, cb_src_data *))dlsym(h, "src_process");
    if (!src_new_fn || !src_delete_fn || !src_strerror_fn || !src_process_fn) {
        src_process_fn = 0;
        return -2;
    }
    return 0;
}

int cb_side_open(cb_side *s, int converter)
{
    int err = 0;
    if (!src_process_fn)
        return -1;
    s->src = src_new_fn(converter, (int)s->channels, &err);
    s->error = s->src ? 0 : err;
    return s->src ? 0 : (err ? err : -1);
}

void cb_side_close(cb_side *s)
{
    if (s->src)
        src_delete_fn(s->src);
    s->src = 0;
}

const char *cb_src_strerror(int error)
{
    return src_strerror_fn ? src_strerror_fn(error) : "libsamplerate is not bound";
}

uint32_t cb_format_width(uint32_t format)
{
    return format < N_FORMATS ? FORMATS[format].width : 0;
}

/* A sample's bytes as an unsigned integer, and back (either byte order, 1 to 8 bytes). */
static inline uint64_t get_bytes(const unsigned char *p, const cb_format *f)
{
    uint64_t u = 0;
    for (int k = 0; k < f->width; k++)
        u |= (uint64_t)p[f->big_endian ? f->width - 1 - k : k] << (8 * k);
    return u;
}

static inline void put_bytes(unsigned char *p, uint64_t u, const cb_format *f)
{
    for (int k = 0; k < f->width; k++)
        p[f->big_endian ? f->width - 1 - k : k] = (unsigned char)(u >> (8 * k));
}

/* Device bytes -> float32, full scale = 2^(bits-1); an unknown format decodes as silence. */
void cb_decode(uint32_t format, const char *src, float *dst, uint64_t samples)
{
    if (format == 0 || format >= N_FORMATS) {
        memset(dst, 0, samples * sizeof(float));
        return;
    }
    const cb_format *f = &FORMATS[format];
    const unsigned char *b = (const unsigned char *)src;
    double scale = 1.0 / (double)(1ull << (f->bits - 1));
    uint64_t mask = f->bits == 64 ? ~0ull : (1ull << f->bits) - 1;
    for (uint64_t i = 0; i < samples; i++) {
        uint64_t u = get_bytes(b + f->width * i, f);
        if (f->kind == FMT_FLOAT) {
            if (f->width == 4) {
                uint32_t w = (uint32_t)u;
                memcpy(&dst[i], &w, sizeof(float));
            } else {
                double d;
                memcpy(&d, &u, sizeof d);
                dst[i] = (float)d;
            }
            continue;
        }
        u &= mask;
        int64_t v;
        if (f->kind == FMT_UINT)
            v = (int64_t)u - (int64_t)(1ull << (f->bits - 1));
        else   /* sign-extend from the top significant bit */
            v = (int64_t)(u << (64 - f->bits)) >> (64 - f->bits);
        dst[i] = (float)((double)v * scale);
    }
}

/* x scaled to full scale `scale`, rounded to the nearest code, clipped to [lo, hi]; NaN -> 0 */
static inline int64_t to_code(float x, double scale, int64_t lo, int64_t hi)
{
    double v = (double)x * scale;
    if (!(v == v))
        return 0;
    if (v >= (double)hi)
        return hi;
    if (v <= (double)lo)
        return lo;
    return (int64_t)llrint(v);
}

/* float32 -> device bytes, clipped to full scale (+1.0 gives the largest code; NaN silence). */
void cb_encode(uint32_t format, const float *src, char *dst, uint64_t samples)
{
    if (format == 0 || format >= N_FORMATS)
        return;
    const cb_format *f = &FORMATS[format];
    unsigned char *b = (unsigned char *)dst;
    double scale = (double)(1ull << (f->bits - 1));
    int64_t hi = (int64_t)(1ull << (f->bits - 1)) - 1;
    int64_t lo = -hi - 1;
    uint64_t mask = f->bits == 64 ? ~0ull : (1ull << f->bits) - 1;
    for (uint64_t i = 0; i < samples; i++) {
        float x = src[i];
        uint64_t u;
        if (f->kind == FMT_FLOAT) {
            x = !(x == x) ? 0.0f : x > 1.0f ? 1.0f : x < -1.0f ? -1.0f : x;
            if (f->width == 4) {
                uint32_t w;
                memcpy(&w, &x, sizeof w);
                u = w;
            } else {
                double d = x;
                memcpy(&u, &d, sizeof u);
            }
        } else {
            int64_t v = to_code(x, scale, lo, hi);
            if (f->kind == FMT_UINT)
                v += (int64_t)(1ull << (f->bits - 1));
            u = (uint64_t)v & mask;
        }
        put_bytes(b + f->width * i, u, f);
    }
}

/* Resample `frames` frames of s->in_buf into s->out_buf + at (room for `room` frames); all the
   input is taken (libsamplerate keeps what its filter still needs). libsamplerate ramps a new
   ratio across the output buffer it is given, so each call offers about what the input will
   make at that ratio (as samplerate's Resampler.process does): the ratio is reached within the
   period, and the virtual counts of the drift loops (frames x ratio) hold. Returns the frames
   produced, or -1 with s->error set. */
static int64_t resample(cb_side *s, uint32_t frames, uint32_t at, uint32_t room, double ratio)
{
    uint32_t ch = s->channels;
    int64_t made = 0;
    cb_src_data d;
    d.data_in = s->in_buf;
    d.input_frames = frames;
    d.end_of_input = 0;
    d.src_ratio = ratio;
    while (d.input_frames > 0) {
        long want = (long)ceil((double)d.input_frames * ratio);
        long left = (long)room - (long)made;
        if (want < 1)
            want = 1;
        if (want > left)
            want = left;
        if (want <= 0) {
            s->error = -1;
            return -1;
        }
        d.data_out = s->out_buf + (uint64_t)(at + made) * ch;
        d.output_frames = want;
        d.input_frames_used = d.output_frames_gen = 0;
        int err = src_process_fn(s->src, &d);
        if (err) {
            s->error = err;
            return -1;
        }
        made += d.output_frames_gen;
        if (!d.input_frames_used && !d.output_frames_gen) {
            s->error = -1;
            return -1;
        }
        d.data_in += (uint64_t)d.input_frames_used * ch;
        d.input_frames -= d.input_frames_used;
    }
    return made;
}

/* Capture, one device period of `nbytes` bytes: decode, resample at `ratio`, append to the
   capture ring. Returns the JACK frames appended, or -1 (libsamplerate error in s->error). */
int64_t cb_capture_period(cb_ring *r, cb_side *s, const char *data, uint64_t nbytes, double ratio)
{
    uint32_t ch = s->channels;
    if (ch != r->channels) {
        s->error = -2;
        return -1;
    }
    uint64_t whole = nbytes / ((uint64_t)ch * s->width);
    uint32_t frames = whole < s->in_frames ? (uint32_t)whole : s->in_frames;
    cb_decode(s->format, data, s->in_buf, (uint64_t)frames * ch);
    int64_t m = resample(s, frames, 0, s->out_frames, ratio);
    if (m < 0)
        return -1;
    uint64_t wr = r->wr;
    uint64_t mask = r->size - 1;
    uint64_t start = wr & mask;
    uint64_t first = (uint64_t)m < r->size - start ? (uint64_t)m : r->size - start;
    memcpy(r->data + start * ch, s->out_buf, first * ch * sizeof(float));
    memcpy(r->data, s->out_buf + first * ch, ((uint64_t)m - first) * ch * sizeof(float));
    STORE_REL(&r->wr, wr + (uint64_t)m);
    return m;
}

/* Playback, one device period: resample JACK frames from the playback ring at `ratio` until
   the fifo holds a period, encode that period into s->bytes and drop it from the fifo. Frames
   JACK has not written yet are silence (the ring still holds what it wrote a ring length ago,
   which must not be played again: a late echo), counted in s->underruns. Returns the JACK
   frames taken, or -1 (libsamplerate error in s->error). */
int64_t cb_playback_period(cb_ring *r, cb_side *s, double ratio)
{
    uint32_t ch = s->channels;
    uint32_t period = s->period;
    uint64_t mask = r->size - 1;
    if (ch != r->channels) {
        s->error = -2;
        return -1;
    }
    uint64_t c_pos = r->rd;
    uint64_t w_now = LOAD_ACQ(&r->wr);
    int64_t taken = 0;
    while (s->fifo_len < period) {
        uint64_t take = (uint64_t)ceil((double)(period - s->fifo_len) / ratio) + 1;
        if (take > s->in_frames)
            take = s->in_frames;
        int64_t have = (int64_t)(w_now - c_pos);
        uint64_t start = c_pos & mask;
        uint64_t first = take < r->size - start ? take : r->size - start;
        memcpy(s->in_buf, r->data + start * ch, first * ch * sizeof(float));
        memcpy(s->in_buf + first * ch, r->data, (take - first) * ch * sizeof(float));
        if (have < (int64_t)take) {
            uint64_t keep = have > 0 ? (uint64_t)have : 0;
            s->underruns++;
            memset(s->in_buf + keep * ch, 0, (take - keep) * ch * sizeof(float));
        }
        int64_t k = resample(s, (uint32_t)take, s->fifo_len, s->out_frames - s->fifo_len, ratio);
        if (k < 0)
            return -1;
        s->fifo_len += (uint32_t)k;
        STORE_REL(&r->rd, c_pos + take);
        c_pos += take;
        taken += (int64_t)take;
        s->u_count += (double)take * ratio;
    }
    cb_encode(s->format, s->out_buf, s->bytes, (uint64_t)period * ch);
    s->fifo_len -= period;
    memmove(s->out_buf, s->out_buf + (uint64_t)period * ch, (uint64_t)s->fifo_len * ch * sizeof(float));
    return taken;
}
