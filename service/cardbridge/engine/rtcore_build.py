"""cffi build script of `cardbridge.engine._rtcore`: the compiled real-time core of a bridge worker.

Built at install time (setup.py cffi_modules). The C code runs in JACK's process thread (and its
latency callback; the xrun callback, in JACK's notification thread, only increments a counter),
never takes the GIL, never allocates, never blocks: per cycle it copies between
the port buffers and two lock-free single-producer/single-consumer rings of interleaved float
frames, keeps a timeline of its own of when the driver started each cycle, compensates skipped
cycles and time the server lost so that ring counters keep the card's pace, and publishes the
cycle's frame time through a sequence-locked slot that the ALSA thread reads.
"""

import importlib.util
import os

import cffi


def _sibling(name: str):
    """A module next to this file: the build runs this file as a plain script, outside the
    package, so a relative import is not possible."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


periodpath_c = _sibling("periodpath_c")

STRUCT = """
typedef struct {
    uint32_t n_capture;          /* JACK output ports (card capture)  */
    uint32_t n_playback;         /* JACK input ports (card playback)  */
    void *capture_ports[64];
    void *playback_ports[64];
    float *capture_ring;         /* interleaved, capture_size frames x n_capture   */
    float *playback_ring;        /* interleaved, playback_size frames x n_playback */
    uint64_t capture_size;       /* power of two */
    uint64_t playback_size;
    uint64_t capture_wr;         /* written by the ALSA thread */
    uint64_t capture_rd;         /* written by the JACK thread */
    uint64_t playback_wr;        /* written by the JACK thread */
    uint64_t playback_rd;        /* written by the ALSA thread */
    uint32_t mute_capture;       /* not streaming: silence on the capture ports, no counting */
    uint32_t seq;                /* cycle record sequence lock (odd while writing) */
    uint64_t cyc_frames;         /* our frame count at its start (JACK's, plus lost time) */
    uint64_t cyc_usecs;          /* its start on the timeline (us, jack_get_time)  */
    uint64_t cyc_next_usecs;
    uint32_t cyc_nframes;
    uint64_t cyc_capture_rd;     /* capture_rd at the start of that cycle  */
    uint64_t cyc_playback_wr;    /* playback_wr at the start of that cycle */
    uint64_t cycles;
    uint64_t capture_underruns;  /* cycles that found fewer frames than they needed */
    uint64_t playback_overruns;  /* cycles that overwrote frames not yet consumed  */
    uint64_t skipped_frames;     /* JACK frames of skipped cycles, compensated */
    uint32_t capture_latency;    /* frames reported in JackCaptureLatency ranges  */
    uint32_t playback_latency;   /* frames reported in JackPlaybackLatency ranges */
    void *client;
    uint32_t cyc_held;           /* the last cycle came late: its time is not known yet */
    uint32_t tl_nframes;         /* the timeline's cycle length (0: not started) */
    uint64_t tl_frames;          /* timeline anchor: frame count (JACK's + lost_frames) ... */
    double tl_usecs;             /* ... and when the driver started that cycle (us) */
    double tl_us_per_frame;      /* the timeline's slope, filtered */
    uint64_t tl_updates;
    uint64_t tl_seg_frames;      /* the current stretch without a hold: its first frame ... */
    double tl_seg_usecs;         /* ... and the timeline there (us) */
    uint32_t tl_seg_open;
    uint32_t tl_segments;        /* stretches that taught the slope */
    double tl_slope_w;           /* the slope: weighted mean over the stretches (sum of weights */
    double tl_slope_ws;          /* and of weight x slope, both fading) */
    uint64_t tl_slope_at;        /* frame count when they last faded */
    uint32_t tl_held;            /* cycles held since the timeline was left (0: on it) */
    uint32_t tl_announced;       /* the server announced an xrun during this hold */
    double tl_hist[3];           /* the last held cycles' offsets from the old schedule (us) */
    uint32_t tl_verify;          /* cycles left to check where a moved schedule really is */
    uint32_t tl_verify_n;        /* cycles counted in that check ... */
    double tl_verify_sum;        /* ... and the sum of their offsets from the new anchor (us) */
    uint32_t tl_verify_off;      /* cycles in a row off the new anchor during that check */
    int64_t lost_frames;         /* frames of time the JACK server lost, skipped in the rings */
    uint64_t lost_times;         /* how often it lost time */
    uint64_t jack_frames;        /* JACK's frame counter at the last cycle, 64-bit */
    uint64_t server_xruns;       /* xruns the server announced (JACK's notification thread) */
    uint64_t server_xruns_seen;  /* ... of which the process callback has taken note */
} cb_core;
"""

CDEF = STRUCT + """
int cb_install(void *client, cb_core *core);
void cb_capture_commit(cb_core *core, int64_t frames);
void cb_playback_consume(cb_core *core, int64_t frames);
uint64_t cb_load(uint64_t *where);
int cb_read_cycle(cb_core *core, uint64_t *out);
void cb_set_mute(cb_core *core, uint32_t mute);
uint64_t cb_now_usecs(void);
int cb_recompute_latencies(cb_core *core);
int cb_rt_priority(void *client);
""" + periodpath_c.CDEF

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <jack/jack.h>

""" + STRUCT + r"""

#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

static void capture_rt(cb_core *c, jack_nframes_t n)
{
    uint64_t rd = c->capture_rd;
    uint64_t wr = LOAD_ACQ(&c->capture_wr);
    uint64_t mask = c->capture_size - 1;
    uint32_t nch = c->n_capture;
    int64_t have = (int64_t)(wr - rd);
    if (have < (int64_t)n && !c->mute_capture)
        c->capture_underruns++;
    for (uint32_t ch = 0; ch < nch; ch++) {
        float *out = (float *)jack_port_get_buffer((jack_port_t *)c->capture_ports[ch], n);
        if (c->mute_capture) {
            memset(out, 0, sizeof(float) * n);
            continue;
        }
        for (jack_nframes_t i = 0; i < n; i++) {
            int64_t pos = (int64_t)i;
            out[i] = (pos < have && pos >= have - (int64_t)c->capture_size)
                ? c->capture_ring[((rd + i) & mask) * nch + ch] : 0.0f;
        }
    }
    STORE_REL(&c->capture_rd, rd + n);
}

static void playback_rt(cb_core *c, jack_nframes_t n)
{
    uint64_t wr = c->playback_wr;
    uint64_t rd = LOAD_ACQ(&c->playback_rd);
    uint64_t mask = c->playback_size - 1;
    uint32_t nch = c->n_playback;
    if ((int64_t)(wr + n - rd) > (int64_t)c->playback_size && !c->mute_capture)
        c->playback_overruns++;
    for (uint32_t ch = 0; ch < nch; ch++) {
        const float *in = (const float *)jack_port_get_buffer((jack_port_t *)c->playback_ports[ch], n);
        for (jack_nframes_t i = 0; i < n; i++)
            c->playback_ring[((wr + i) & mask) * nch + ch] = in[i];
    }
    STORE_REL(&c->playback_wr, wr + n);
}

static void skip_rt(cb_core *c, int64_t gap)
{
    /* Frames JACK's graph will never see (skipped cycles, time the server lost): both ring
       counters move on with the card's time. A negative gap takes back frames skipped too many. */
    if (c->n_playback) {
        uint64_t mask = c->playback_size - 1;
        uint32_t nch = c->n_playback;
        uint64_t wr = c->playback_wr;
        uint64_t clear = gap <= 0 ? 0 : (uint64_t)gap < c->playback_size ? (uint64_t)gap : c->playback_size;
        for (uint64_t i = 0; i < clear; i++)
            memset(&c->playback_ring[((wr + i) & mask) * nch], 0, sizeof(float) * nch);
        STORE_REL(&c->playback_wr, wr + (uint64_t)gap);
    }
    if (c->n_capture)
        STORE_REL(&c->capture_rd, c->capture_rd + (uint64_t)gap);
}

/* The timeline: when the driver started each cycle, on a frame count that also counts the time
   the server lost. JACK's own cycle times come from a DLL that a late server cycle drags along
   for seconds (its frame counter stops while time goes on, and the DLL slews back slowly), and a
   bridge measuring against them would chase that slew. Here the driver's start of each cycle is
   filtered by a DLL of our own.

   A cycle that starts more than a quarter period off the timeline, or one after the server
   announced an xrun, begins a hold: held cycles are neither measured (the ALSA thread skips
   them) nor learnt from, and are compared with the old schedule until three in a row agree (a
   late wake-up is one late cycle, often two on a busy host; they do not agree with those after).
   Their median is where the schedule is now. Without an xrun the schedule stays where it was
   unless it moved by more than the quarter period. jack2 restarts its schedule after an xrun
   from the end of the cycle that followed the late one, so a move can be of any size, a small
   part of a period as often as several.

   A move is skipped in the rings at once, to the frame, so that the audio goes on with the
   card's time. Three cycles just after a stall are often late, though, and every frame skipped
   wrongly would add up, event after event, into a drift the bridge would learn. So the hold goes
   on for a quarter second on the new anchor: the mean offset of those cycles (what the DLL would
   have converged to) corrects the skip and the anchor, and the timeline goes on from there,
   continuous for the ALSA thread.

   The timeline's slope (JACK's frame rate against jack_get_time) must be right to a few ppm:
   the offsets above are taken on lines drawn over a good part of a second, and an error there
   would be skipped at every move. A DLL learning the slope from each cycle wanders by tens of
   ppm on a busy host, so the DLL here only follows the phase; the slope is measured over each
   stretch without a hold (the DLL's line from its start to its end, which the jitter of single
   cycles hardly moves), and averaged over the stretches, weighted by their length squared and
   fading over a minute; the nominal rate counts as a stretch of two seconds, so that the short
   stretches of a busy host do not outweigh it. */
#define TL_WIDE_UPDATES 200     /* about a second at 256/48k */
#define TL_WIDE_HZ 2.0
#define TL_NARROW_HZ 0.25
#define TL_MAX_SKIP ((int64_t)1 << 24)
#define TL_MAX_HOLD 64          /* cycles: a schedule that never settles is taken as it is then */
#define TL_VERIFY_SECONDS 0.25
#define TL_MAX_PPM 2000.0      /* a JACK clock further off than that is nonsense */
#define TL_SEG_MIN_SECONDS 0.1  /* a shorter stretch does not teach the slope */
#define TL_SEG_MAX_SECONDS 8.0  /* a stretch is closed after that (the first ones sooner) */
#define TL_SLOPE_MEMORY 60.0    /* seconds: older stretches fade out */
#define TL_SLOPE_PRIOR 2.0      /* seconds: the nominal rate counts as a stretch this long */

static double median3(const double *x)
{
    double a = x[0], b = x[1], m = x[2];
    if ((a <= b && b <= m) || (m <= b && b <= a))
        return b;
    if ((b <= a && a <= m) || (m <= a && a <= b))
        return a;
    return m;
}

static int settled(const double *x, double tolerance)
{
    double lo = x[0], hi = x[0];
    for (int i = 1; i < 3; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    return hi - lo <= tolerance;
}

/* The schedule is `shift` us off the anchor's line at frame count v (anchor moved to v already):
   skip its frames in the rings and re-anchor there. Returns the frames skipped. */
static int64_t tl_move(cb_core *c, uint64_t *v, double pred, double shift)
{
    int64_t lost = (int64_t)llround(shift / c->tl_us_per_frame);
    if (lost <= -TL_MAX_SKIP || lost >= TL_MAX_SKIP)
        return 0;
    if (lost)
        skip_rt(c, lost);
    c->lost_frames += lost;
    *v += (uint64_t)lost;
    c->tl_frames = *v;
    c->tl_usecs = pred + shift;
    return lost;
}

/* End the current stretch without a hold at frame count v; a long enough one teaches the slope. */
static void tl_close_stretch(cb_core *c, uint64_t v, double rate, double nominal)
{
    if (!c->tl_seg_open)
        return;
    c->tl_seg_open = 0;
    double frames = (double)(int64_t)(v - c->tl_seg_frames);
    if (frames < TL_SEG_MIN_SECONDS * rate)
        return;
    double slope = (c->tl_usecs - c->tl_seg_usecs) / frames;
    if (slope > nominal * (1.0 + TL_MAX_PPM * 1e-6) || slope < nominal * (1.0 - TL_MAX_PPM * 1e-6))
        return;
    double weight = frames * frames;
    double fade = exp(-(double)(int64_t)(v - c->tl_slope_at) / (TL_SLOPE_MEMORY * rate));
    c->tl_slope_at = v;
    c->tl_slope_w = fade * c->tl_slope_w + weight;
    c->tl_slope_ws = fade * c->tl_slope_ws + weight * slope;
    c->tl_us_per_frame = c->tl_slope_ws / c->tl_slope_w;
    c->tl_segments++;
}

/* A cycle on the timeline: the DLL follows its phase; the stretch goes on (or is closed when
   long enough, and a new one starts here). */
static void tl_follow(cb_core *c, uint64_t v, double pred, double e, double dv, double rate,
                      double nominal)
{
    double bw = c->tl_updates < TL_WIDE_UPDATES ? TL_WIDE_HZ : TL_NARROW_HZ;
    double w = 2.0 * 3.14159265358979 * bw * dv * c->tl_us_per_frame * 1e-6;
    c->tl_usecs = pred + 1.41421356 * w * e;
    c->tl_updates++;
    if (c->tl_updates < TL_WIDE_UPDATES)
        return;
    double longest = TL_SEG_MIN_SECONDS * (double)(2u << (c->tl_segments < 8 ? c->tl_segments : 8));
    if (longest > TL_SEG_MAX_SECONDS)
        longest = TL_SEG_MAX_SECONDS;
    if (c->tl_seg_open && (double)(int64_t)(v - c->tl_seg_frames) >= longest * rate)
        tl_close_stretch(c, v, rate, nominal);
    if (!c->tl_seg_open) {
        c->tl_seg_open = 1;
        c->tl_seg_frames = v;
        c->tl_seg_usecs = c->tl_usecs;
    }
}

static uint64_t timeline_rt(cb_core *c, jack_client_t *client, uint64_t frames, jack_nframes_t n)
{
    jack_nframes_t rate = jack_get_sample_rate(client);
    double nominal = rate ? 1e6 / (double)rate : 1.0;
    /* when the driver started this cycle: now, less the frames JACK says have passed since (a
       count beyond a few cycles is nonsense, e.g. a start time later than now: then use now) */
    jack_nframes_t since = jack_frames_since_cycle_start(client);
    if (since > 4 * n)
        since = 0;
    double start = (double)jack_get_time() - (double)since * nominal;
    uint64_t xruns = LOAD_ACQ(&c->server_xruns);
    int announced = xruns != c->server_xruns_seen;
    c->server_xruns_seen = xruns;
    uint64_t v = frames;
    if (!c->cycles || c->tl_nframes != n) {
        c->tl_nframes = n;
        c->tl_frames = v;
        c->tl_usecs = start;
        c->tl_us_per_frame = nominal;
        c->tl_updates = 0;
        c->tl_held = 0;
        c->tl_announced = 0;
        c->tl_verify = 0;
        c->tl_seg_open = 0;
        c->tl_segments = 0;
        c->tl_slope_w = (TL_SLOPE_PRIOR * (double)rate) * (TL_SLOPE_PRIOR * (double)rate);
        c->tl_slope_ws = c->tl_slope_w * nominal;
        c->tl_slope_at = v;
        return v;
    }
    double dv = (double)(int64_t)(v - c->tl_frames);
    double pred = c->tl_usecs + dv * c->tl_us_per_frame;
    double e = start - pred;
    double limit = 0.25 * (double)n * nominal;
    int off = e > limit || e < -limit;
    c->tl_frames = v;
    c->tl_usecs = pred;
    if (c->tl_verify && !announced && (!off || c->tl_verify_off < 2)) {
        /* checking a move: the anchor's line goes on, the offsets of the cycles on it are
           summed (a late one is left out; three in a row off it: it moved again, a hold) */
        if (off) {
            c->tl_verify_off++;
        } else {
            c->tl_verify_off = 0;
            c->tl_verify_sum += e;
            c->tl_verify_n++;
        }
        if (--c->tl_verify == 0 && c->tl_verify_n)
            tl_move(c, &v, pred, c->tl_verify_sum / (double)c->tl_verify_n);
        return v;
    }
    if (!c->tl_held && !c->tl_verify && !announced && !off) {
        tl_follow(c, v, pred, e, dv, (double)rate, nominal);
        return v;
    }
    /* held: the old schedule (or the anchor of a move being checked) goes on as the reference */
    tl_close_stretch(c, v, (double)rate, nominal);
    if (announced || c->tl_verify) {
        c->tl_held = 0;
        c->tl_announced |= (uint32_t)announced;
        c->tl_verify = 0;
    }
    c->tl_hist[c->tl_held % 3] = e;
    c->tl_held++;
    if (c->tl_held < 4 || (c->tl_held < TL_MAX_HOLD && !settled(c->tl_hist, 0.5 * limit)))
        return v;
    double shift = median3(c->tl_hist);
    int moved = c->tl_announced || shift > limit || shift < -limit;
    c->tl_held = 0;
    c->tl_announced = 0;
    if (moved && tl_move(c, &v, pred, shift)) {
        c->lost_times++;
        double cycles = TL_VERIFY_SECONDS * (double)rate / (double)n;
        c->tl_verify = cycles < 16.0 ? 16 : (uint32_t)cycles;
        c->tl_verify_n = 0;
        c->tl_verify_sum = 0.0;
        c->tl_verify_off = 0;
    }
    return v;
}

static int process_rt(jack_nframes_t n, void *arg)
{
    cb_core *c = (cb_core *)arg;
    jack_client_t *client = (jack_client_t *)c->client;
    /* JACK's frame counter, extended to 64 bits by its signed advance since the last cycle. */
    uint32_t frames = jack_last_frame_time(client);
    int64_t advance = (int32_t)(frames - (uint32_t)c->jack_frames);
    uint64_t full = c->cycles ? c->jack_frames + (uint64_t)advance : (uint64_t)frames;
    /* Our count: every cycle moves the rings by its length; cycles JACK skipped (its counter
       ran further) are skipped in the rings too. A counter that ran less (a cycle called late
       had already read the next cycle's time) is not followed back: the rings did move. */
    uint64_t v = c->cyc_frames + c->cyc_nframes;
    if (c->cycles) {
        int64_t gap = advance - (int64_t)c->cyc_nframes;
        if (gap > 0 && gap < ((int64_t)1 << 24)) {
            skip_rt(c, gap);
            c->skipped_frames += (uint64_t)gap;
            v += (uint64_t)gap;
        }
    } else {
        v = full;
    }
    c->jack_frames = full;
    v = timeline_rt(c, client, v, n);
    uint32_t s = c->seq;
    STORE_REL(&c->seq, s + 1);
    c->cyc_frames = v;
    c->cyc_held = c->tl_held != 0 || c->tl_verify != 0;
    c->cyc_usecs = (uint64_t)llround(c->tl_usecs);
    c->cyc_next_usecs = (uint64_t)llround(c->tl_usecs + (double)n * c->tl_us_per_frame);
    c->cyc_nframes = n;
    c->cyc_capture_rd = c->capture_rd;
    c->cyc_playback_wr = c->playback_wr;
    STORE_REL(&c->seq, s + 2);
    if (c->n_capture)
        capture_rt(c, n);
    if (c->n_playback)
        playback_rt(c, n);
    c->cycles++;
    return 0;
}

static void latency_rt(jack_latency_callback_mode_t mode, void *arg)
{
    cb_core *c = (cb_core *)arg;
    jack_latency_range_t r;
    if (mode == JackCaptureLatency) {
        r.min = r.max = c->capture_latency;
        for (uint32_t i = 0; i < c->n_capture; i++)
            jack_port_set_latency_range((jack_port_t *)c->capture_ports[i], JackCaptureLatency, &r);
    } else {
        r.min = r.max = c->playback_latency;
        for (uint32_t i = 0; i < c->n_playback; i++)
            jack_port_set_latency_range((jack_port_t *)c->playback_ports[i], JackPlaybackLatency, &r);
    }
}

/* JACK's notification thread: the server announced an xrun (its schedule may have moved). */
static int xrun_nrt(void *arg)
{
    cb_core *c = (cb_core *)arg;
    __atomic_add_fetch(&c->server_xruns, 1, __ATOMIC_RELEASE);
    return 0;
}

int cb_install(void *client, cb_core *core)
{
    core->client = client;
    int err = jack_set_process_callback((jack_client_t *)client, process_rt, core);
    if (!err)
        err = jack_set_xrun_callback((jack_client_t *)client, xrun_nrt, core);
    if (!err)
        err = jack_set_latency_callback((jack_client_t *)client, latency_rt, core);
    return err;
}

void cb_capture_commit(cb_core *core, int64_t frames)
{
    STORE_REL(&core->capture_wr, core->capture_wr + (uint64_t)frames);
}

void cb_playback_consume(cb_core *core, int64_t frames)
{
    STORE_REL(&core->playback_rd, core->playback_rd + (uint64_t)frames);
}

uint64_t cb_load(uint64_t *where)
{
    return LOAD_ACQ(where);
}

int cb_read_cycle(cb_core *core, uint64_t *out)
{
    /* out: frames, usecs, next_usecs, nframes, capture_rd, playback_wr. 0 = a consistent copy
       of a cycle whose time is known; -1 = none yet, or the last one is held. */
    for (int attempt = 0; attempt < 8; attempt++) {
        uint32_t s1 = LOAD_ACQ(&core->seq);
        if (s1 & 1)
            continue;
        out[0] = core->cyc_frames;
        out[1] = core->cyc_usecs;
        out[2] = core->cyc_next_usecs;
        out[3] = core->cyc_nframes;
        out[4] = core->cyc_capture_rd;
        out[5] = core->cyc_playback_wr;
        uint32_t held = core->cyc_held;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (LOAD_ACQ(&core->seq) == s1)
            return (core->cycles && !held) ? 0 : -1;
    }
    return -1;
}

void cb_set_mute(cb_core *core, uint32_t mute)
{
    STORE_REL(&core->mute_capture, mute);
}

uint64_t cb_now_usecs(void)
{
    return jack_get_time();
}

int cb_recompute_latencies(cb_core *core)
{
    return jack_recompute_total_latencies((jack_client_t *)core->client);
}

/* JACK's real-time priority for its clients' process threads, -1 when JACK is not real-time. */
int cb_rt_priority(void *client)
{
    if (!jack_is_realtime((jack_client_t *)client))
        return -1;
    return jack_client_real_time_priority((jack_client_t *)client);
}
""" + periodpath_c.SOURCE

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("cardbridge.engine._rtcore", SOURCE, libraries=["jack", "m", "dl"],
                      extra_compile_args=["-O2", "-Wall"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
