/* The JACK side of a bridge worker's real-time core.
 *
 * Runs in JACK's process thread (process_rt, latency_rt) and notification thread (xrun_nrt);
 * never takes the GIL, never allocates, never blocks. Per cycle it keeps a timeline of its own
 * of when the driver started the cycle, compensates skipped cycles and time the server lost so
 * that the ring counters keep the card's pace, publishes the cycle's record (sequence-locked)
 * for the ALSA thread, and copies between the port buffers and the two rings.
 *
 * The small functions at the end are the ALSA thread's side of the queues (reading the cycle
 * record, moving its own ring positions) and what the control thread needs of libjack.
 */

#include <stdint.h>
#include <string.h>
#include <math.h>
#include <jack/jack.h>

#include "rtcore.h"

#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

static void capture_rt(cb_shared *sh, cb_jack *j, jack_nframes_t n)
{
    cb_ring *r = &sh->capture;
    uint64_t rd = r->rd;
    uint64_t wr = LOAD_ACQ(&r->wr);
    uint64_t mask = r->size - 1;
    uint32_t nch = r->channels;
    int64_t have = (int64_t)(wr - rd);
    uint32_t mute = LOAD_ACQ(&sh->mute_capture);
    if (have < (int64_t)n && !mute)
        sh->capture_underruns++;
    for (uint32_t ch = 0; ch < nch; ch++) {
        float *out = (float *)jack_port_get_buffer((jack_port_t *)j->capture_ports[ch], n);
        if (mute) {
            memset(out, 0, sizeof(float) * n);
            continue;
        }
        for (jack_nframes_t i = 0; i < n; i++) {
            int64_t pos = (int64_t)i;
            out[i] = (pos < have && pos >= have - (int64_t)r->size)
                ? r->data[((rd + i) & mask) * nch + ch] : 0.0f;
        }
    }
    STORE_REL(&r->rd, rd + n);
}

static void playback_rt(cb_shared *sh, cb_jack *j, jack_nframes_t n)
{
    cb_ring *r = &sh->playback;
    uint64_t wr = r->wr;
    uint64_t rd = LOAD_ACQ(&r->rd);
    uint64_t mask = r->size - 1;
    uint32_t nch = r->channels;
    if ((int64_t)(wr + n - rd) > (int64_t)r->size && !LOAD_ACQ(&sh->mute_capture))
        sh->playback_overruns++;
    for (uint32_t ch = 0; ch < nch; ch++) {
        const float *in = (const float *)jack_port_get_buffer((jack_port_t *)j->playback_ports[ch], n);
        for (jack_nframes_t i = 0; i < n; i++)
            r->data[((wr + i) & mask) * nch + ch] = in[i];
    }
    STORE_REL(&r->wr, wr + n);
}

static void skip_rt(cb_shared *sh, int64_t gap)
{
    /* Frames JACK's graph will never see (skipped cycles, time the server lost): both ring
       positions JACK's thread owns move on with the card's time. A negative gap takes back
       frames skipped too many. */
    cb_ring *p = &sh->playback;
    if (p->channels) {
        uint64_t mask = p->size - 1;
        uint32_t nch = p->channels;
        uint64_t wr = p->wr;
        uint64_t clear = gap <= 0 ? 0 : (uint64_t)gap < p->size ? (uint64_t)gap : p->size;
        for (uint64_t i = 0; i < clear; i++)
            memset(&p->data[((wr + i) & mask) * nch], 0, sizeof(float) * nch);
        STORE_REL(&p->wr, wr + (uint64_t)gap);
    }
    if (sh->capture.channels)
        STORE_REL(&sh->capture.rd, sh->capture.rd + (uint64_t)gap);
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
static int64_t tl_move(cb_jack *j, uint64_t *v, double pred, double shift)
{
    cb_timeline *tl = &j->timeline;
    int64_t lost = (int64_t)llround(shift / tl->us_per_frame);
    if (lost <= -TL_MAX_SKIP || lost >= TL_MAX_SKIP)
        return 0;
    if (lost)
        skip_rt(j->shared, lost);
    j->shared->lost_frames += lost;
    *v += (uint64_t)lost;
    tl->frames = *v;
    tl->usecs = pred + shift;
    return lost;
}

/* End the current stretch without a hold at frame count v; a long enough one teaches the slope. */
static void tl_close_stretch(cb_timeline *tl, uint64_t v, double rate, double nominal)
{
    if (!tl->seg_open)
        return;
    tl->seg_open = 0;
    double frames = (double)(int64_t)(v - tl->seg_frames);
    if (frames < TL_SEG_MIN_SECONDS * rate)
        return;
    double slope = (tl->usecs - tl->seg_usecs) / frames;
    if (slope > nominal * (1.0 + TL_MAX_PPM * 1e-6) || slope < nominal * (1.0 - TL_MAX_PPM * 1e-6))
        return;
    double weight = frames * frames;
    double fade = exp(-(double)(int64_t)(v - tl->slope_at) / (TL_SLOPE_MEMORY * rate));
    tl->slope_at = v;
    tl->slope_w = fade * tl->slope_w + weight;
    tl->slope_ws = fade * tl->slope_ws + weight * slope;
    tl->us_per_frame = tl->slope_ws / tl->slope_w;
    tl->segments++;
}

/* A cycle on the timeline: the DLL follows its phase; the stretch goes on (or is closed when
   long enough, and a new one starts here). */
static void tl_follow(cb_timeline *tl, uint64_t v, double pred, double e, double dv, double rate,
                      double nominal)
{
    double bw = tl->updates < TL_WIDE_UPDATES ? TL_WIDE_HZ : TL_NARROW_HZ;
    double w = 2.0 * 3.14159265358979 * bw * dv * tl->us_per_frame * 1e-6;
    tl->usecs = pred + 1.41421356 * w * e;
    tl->updates++;
    if (tl->updates < TL_WIDE_UPDATES)
        return;
    double longest = TL_SEG_MIN_SECONDS * (double)(2u << (tl->segments < 8 ? tl->segments : 8));
    if (longest > TL_SEG_MAX_SECONDS)
        longest = TL_SEG_MAX_SECONDS;
    if (tl->seg_open && (double)(int64_t)(v - tl->seg_frames) >= longest * rate)
        tl_close_stretch(tl, v, rate, nominal);
    if (!tl->seg_open) {
        tl->seg_open = 1;
        tl->seg_frames = v;
        tl->seg_usecs = tl->usecs;
    }
}

static uint64_t timeline_rt(cb_jack *j, jack_client_t *client, uint64_t frames, jack_nframes_t n)
{
    cb_timeline *tl = &j->timeline;
    jack_nframes_t rate = jack_get_sample_rate(client);
    double nominal = rate ? 1e6 / (double)rate : 1.0;
    /* when the driver started this cycle: now, less the frames JACK says have passed since (a
       count beyond a few cycles is nonsense, e.g. a start time later than now: then use now) */
    jack_nframes_t since = jack_frames_since_cycle_start(client);
    if (since > 4 * n)
        since = 0;
    double start = (double)jack_get_time() - (double)since * nominal;
    uint64_t xruns = LOAD_ACQ(&j->server_xruns);
    int announced = xruns != j->server_xruns_seen;
    j->server_xruns_seen = xruns;
    uint64_t v = frames;
    if (!j->shared->cycles || tl->nframes != n) {
        memset(tl, 0, sizeof(*tl));
        tl->nframes = n;
        tl->frames = v;
        tl->usecs = start;
        tl->us_per_frame = nominal;
        tl->slope_w = (TL_SLOPE_PRIOR * (double)rate) * (TL_SLOPE_PRIOR * (double)rate);
        tl->slope_ws = tl->slope_w * nominal;
        tl->slope_at = v;
        return v;
    }
    double dv = (double)(int64_t)(v - tl->frames);
    double pred = tl->usecs + dv * tl->us_per_frame;
    double e = start - pred;
    double limit = 0.25 * (double)n * nominal;
    int off = e > limit || e < -limit;
    tl->frames = v;
    tl->usecs = pred;
    if (tl->verify && !announced && (!off || tl->verify_off < 2)) {
        /* checking a move: the anchor's line goes on, the offsets of the cycles on it are
           summed (a late one is left out; three in a row off it: it moved again, a hold) */
        if (off) {
            tl->verify_off++;
        } else {
            tl->verify_off = 0;
            tl->verify_sum += e;
            tl->verify_n++;
        }
        if (--tl->verify == 0 && tl->verify_n)
            tl_move(j, &v, pred, tl->verify_sum / (double)tl->verify_n);
        return v;
    }
    if (!tl->held && !tl->verify && !announced && !off) {
        tl_follow(tl, v, pred, e, dv, (double)rate, nominal);
        return v;
    }
    /* held: the old schedule (or the anchor of a move being checked) goes on as the reference */
    tl_close_stretch(tl, v, (double)rate, nominal);
    if (announced || tl->verify) {
        tl->held = 0;
        tl->announced |= (uint32_t)announced;
        tl->verify = 0;
    }
    tl->hist[tl->held % 3] = e;
    tl->held++;
    if (tl->held < 4 || (tl->held < TL_MAX_HOLD && !settled(tl->hist, 0.5 * limit)))
        return v;
    double shift = median3(tl->hist);
    int moved = tl->announced || shift > limit || shift < -limit;
    tl->held = 0;
    tl->announced = 0;
    if (moved && tl_move(j, &v, pred, shift)) {
        j->shared->lost_times++;
        double cycles = TL_VERIFY_SECONDS * (double)rate / (double)n;
        tl->verify = cycles < 16.0 ? 16 : (uint32_t)cycles;
        tl->verify_n = 0;
        tl->verify_sum = 0.0;
        tl->verify_off = 0;
    }
    return v;
}

static int process_rt(jack_nframes_t n, void *arg)
{
    cb_jack *j = (cb_jack *)arg;
    cb_shared *sh = j->shared;
    jack_client_t *client = (jack_client_t *)j->client;
    /* JACK's frame counter, extended to 64 bits by its signed advance since the last cycle. */
    uint32_t frames = jack_last_frame_time(client);
    int64_t advance = (int32_t)(frames - (uint32_t)sh->jack_frames);
    uint64_t full = sh->cycles ? sh->jack_frames + (uint64_t)advance : (uint64_t)frames;
    /* Our count: every cycle moves the rings by its length; cycles JACK skipped (its counter
       ran further) are skipped in the rings too. A counter that ran less (a cycle called late
       had already read the next cycle's time) is not followed back: the rings did move. */
    uint64_t v = sh->cyc_frames + sh->cyc_nframes;
    if (sh->cycles) {
        int64_t gap = advance - (int64_t)sh->cyc_nframes;
        if (gap > 0 && gap < ((int64_t)1 << 24)) {
            skip_rt(sh, gap);
            sh->skipped_frames += (uint64_t)gap;
            v += (uint64_t)gap;
        }
    } else {
        v = full;
    }
    sh->jack_frames = full;
    v = timeline_rt(j, client, v, n);
    cb_timeline *tl = &j->timeline;
    uint32_t s = sh->seq;
    STORE_REL(&sh->seq, s + 1);
    sh->cyc_frames = v;
    sh->cyc_held = tl->held != 0 || tl->verify != 0;
    sh->cyc_usecs = (uint64_t)llround(tl->usecs);
    sh->cyc_next_usecs = (uint64_t)llround(tl->usecs + (double)n * tl->us_per_frame);
    sh->cyc_nframes = n;
    sh->cyc_capture_rd = sh->capture.rd;
    sh->cyc_playback_wr = sh->playback.wr;
    STORE_REL(&sh->seq, s + 2);
    if (sh->capture.channels)
        capture_rt(sh, j, n);
    if (sh->playback.channels)
        playback_rt(sh, j, n);
    sh->cycles++;
    return 0;
}

static void latency_rt(jack_latency_callback_mode_t mode, void *arg)
{
    cb_jack *j = (cb_jack *)arg;
    cb_shared *sh = j->shared;
    jack_latency_range_t r;
    if (mode == JackCaptureLatency) {
        r.min = r.max = LOAD_ACQ(&sh->capture_latency);
        for (uint32_t i = 0; i < sh->capture.channels; i++)
            jack_port_set_latency_range((jack_port_t *)j->capture_ports[i], JackCaptureLatency, &r);
    } else {
        r.min = r.max = LOAD_ACQ(&sh->playback_latency);
        for (uint32_t i = 0; i < sh->playback.channels; i++)
            jack_port_set_latency_range((jack_port_t *)j->playback_ports[i], JackPlaybackLatency, &r);
    }
}

/* JACK's notification thread: the server announced an xrun (its schedule may have moved). */
static int xrun_nrt(void *arg)
{
    cb_jack *j = (cb_jack *)arg;
    __atomic_add_fetch(&j->server_xruns, 1, __ATOMIC_RELEASE);
    return 0;
}

int cb_install(void *client, cb_jack *jack)
{
    jack->client = client;
    int err = jack_set_process_callback((jack_client_t *)client, process_rt, jack);
    if (!err)
        err = jack_set_xrun_callback((jack_client_t *)client, xrun_nrt, jack);
    if (!err)
        err = jack_set_latency_callback((jack_client_t *)client, latency_rt, jack);
    return err;
}

int cb_recompute_latencies(cb_jack *jack)
{
    return jack_recompute_total_latencies((jack_client_t *)jack->client);
}

/* JACK's real-time priority for its clients' process threads, -1 when JACK is not real-time. */
int cb_rt_priority(void *client)
{
    if (!jack_is_realtime((jack_client_t *)client))
        return -1;
    return jack_client_real_time_priority((jack_client_t *)client);
}

uint64_t cb_now_usecs(void)
{
    return jack_get_time();
}

/* ---- the ALSA thread's side of the queues ---------------------------------------------------- */

int cb_read_cycle(cb_shared *sh, uint64_t *out)
{
    /* out: frames, usecs, next_usecs, nframes, capture_rd, playback_wr. 0 = a consistent copy
       of a cycle whose time is known; -1 = none yet, or the last one is held. */
    for (int attempt = 0; attempt < 8; attempt++) {
        uint32_t s1 = LOAD_ACQ(&sh->seq);
        if (s1 & 1)
            continue;
        out[0] = sh->cyc_frames;
        out[1] = sh->cyc_usecs;
        out[2] = sh->cyc_next_usecs;
        out[3] = sh->cyc_nframes;
        out[4] = sh->cyc_capture_rd;
        out[5] = sh->cyc_playback_wr;
        uint32_t held = sh->cyc_held;
        uint64_t cycles = sh->cycles;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (LOAD_ACQ(&sh->seq) == s1)
            return (cycles && !held) ? 0 : -1;
    }
    return -1;
}

void cb_capture_commit(cb_shared *sh, int64_t frames)
{
    STORE_REL(&sh->capture.wr, sh->capture.wr + (uint64_t)frames);
}

void cb_playback_consume(cb_shared *sh, int64_t frames)
{
    STORE_REL(&sh->playback.rd, sh->playback.rd + (uint64_t)frames);
}

uint64_t cb_load(uint64_t *where)
{
    return LOAD_ACQ(where);
}
