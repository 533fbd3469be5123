/* The compiled real-time core of a bridge worker: the types and functions Python sees.
 *
 * This header is read twice: by the C compiler (jackcore.c, periodpath.c include it) and by
 * cffi's cdef (rtcore_build.py), which accepts plain declarations only, so it holds no
 * preprocessor directives and no macros (includers bring <stdint.h> first).
 *
 * Who writes what (every field has exactly one writer thread):
 *   cb_ring.wr     the producer: capture ring -> the ALSA thread, playback ring -> JACK's thread
 *   cb_ring.rd     the consumer: capture ring -> JACK's thread, playback ring -> the ALSA thread
 *   cb_shared      the cycle record and the JACK-side counters: JACK's process thread;
 *                  mute_capture and the latencies: the ALSA thread (latency_rt only reads them)
 *   cb_jack        everything else: JACK's threads (set up by the control thread before the
 *                  client is activated)
 */

typedef struct {
    float *data;               /* interleaved frames x channels */
    uint64_t size;             /* frames, a power of two */
    uint32_t channels;
    uint64_t wr;               /* frames written so far (the producer) */
    uint64_t rd;               /* frames read so far (the consumer) */
} cb_ring;

typedef struct {
    /* The queues between the JACK callback and the ALSA thread: all the ALSA thread sees. */
    cb_ring capture;           /* card -> JACK */
    cb_ring playback;          /* JACK -> card */
    uint32_t mute_capture;     /* ALSA thread: not streaming, capture ports give silence */
    uint32_t capture_latency;  /* ALSA thread: frames for JackCaptureLatency ranges */
    uint32_t playback_latency; /* ALSA thread: frames for JackPlaybackLatency ranges */
    /* The last cycle's record, sequence-locked (odd while JACK's thread writes it). */
    uint32_t seq;
    uint32_t cyc_held;         /* the last cycle came late: its time is not known yet */
    uint64_t cyc_frames;       /* our frame count at its start (JACK's, plus lost time) */
    uint64_t cyc_usecs;        /* its start on the timeline (us, jack_get_time) */
    uint64_t cyc_next_usecs;
    uint32_t cyc_nframes;
    uint64_t cyc_capture_rd;   /* capture.rd at the start of that cycle */
    uint64_t cyc_playback_wr;  /* playback.wr at the start of that cycle */
    /* Counters of JACK's process thread, for the statistics. */
    uint64_t cycles;
    uint64_t capture_underruns;  /* cycles that found fewer frames than they needed */
    uint64_t playback_overruns;  /* cycles that overwrote frames not yet consumed */
    uint64_t skipped_frames;     /* JACK frames of skipped cycles, compensated */
    int64_t lost_frames;         /* frames of time the JACK server lost, skipped in the rings */
    uint64_t lost_times;         /* how often it lost time */
    uint64_t jack_frames;        /* JACK's frame counter at the last cycle, 64-bit */
} cb_shared;

typedef struct {
    /* The timeline of the driver's cycle starts (jackcore.c): JACK's process thread only. */
    uint32_t nframes;          /* its cycle length (0: not started) */
    uint64_t frames;           /* anchor: frame count (JACK's + lost_frames) ... */
    double usecs;              /* ... and when the driver started that cycle (us) */
    double us_per_frame;       /* its slope */
    uint64_t updates;
    uint64_t seg_frames;       /* the current stretch without a hold: its first frame ... */
    double seg_usecs;          /* ... and the timeline there (us) */
    uint32_t seg_open;
    uint32_t segments;         /* stretches that taught the slope */
    double slope_w;            /* the slope: weighted mean over the stretches (sum of weights */
    double slope_ws;           /* and of weight x slope, both fading) */
    uint64_t slope_at;         /* frame count when they last faded */
    uint32_t held;             /* cycles held since the timeline was left (0: on it) */
    uint32_t announced;        /* the server announced an xrun during this hold */
    double hist[3];            /* the last held cycles' offsets from the old schedule (us) */
    uint32_t verify;           /* cycles left to check where a moved schedule really is */
    uint32_t verify_n;         /* cycles counted in that check ... */
    double verify_sum;         /* ... and the sum of their offsets from the new anchor (us) */
    uint32_t verify_off;       /* cycles in a row off the new anchor during that check */
} cb_timeline;

typedef struct {
    cb_shared *shared;
    void *client;              /* jack_client_t * */
    void *capture_ports[64];   /* JACK output ports (card capture) */
    void *playback_ports[64];  /* JACK input ports (card playback) */
    cb_timeline timeline;
    uint64_t server_xruns;       /* xruns the server announced (JACK's notification thread) */
    uint64_t server_xruns_seen;  /* ... of which the process callback has taken note */
} cb_jack;

/* jackcore.c: the JACK client's callbacks (control thread installs them) */
int cb_install(void *client, cb_jack *jack);
int cb_recompute_latencies(cb_jack *jack);
int cb_rt_priority(void *client);
uint64_t cb_now_usecs(void);

/* jackcore.c: the ALSA thread's side of the queues */
int cb_read_cycle(cb_shared *shared, uint64_t *out);
void cb_capture_commit(cb_shared *shared, int64_t frames);
void cb_playback_consume(cb_shared *shared, int64_t frames);
uint64_t cb_load(uint64_t *where);

/* periodpath.c: one direction of the ALSA thread's per-period work */
typedef struct {
    void *src;                  /* SRC_STATE * of libsamplerate */
    uint32_t channels;
    uint32_t format;            /* index in bridgestats.FORMATS */
    uint32_t width;             /* bytes per sample in that format */
    uint32_t period;            /* device frames per period */
    float *in_buf;              /* resampler input: in_frames x channels */
    uint32_t in_frames;
    float *out_buf;             /* resampler output (playback: the fifo of device frames) */
    uint32_t out_frames;
    uint32_t fifo_len;          /* playback: device frames waiting in out_buf */
    char *bytes;                /* playback: one period in the device's format */
    double u_count;             /* playback: device frames produced, virtual (sum of take x ratio) */
    uint64_t underruns;         /* playback: pulls that found JACK frames missing */
    int error;                  /* the last libsamplerate error (0: none) */
} cb_side;

int cb_src_bind(const char *module_path);
int cb_side_open(cb_side *s, int converter);
void cb_side_close(cb_side *s);
const char *cb_src_strerror(int error);
uint32_t cb_format_width(uint32_t format);
void cb_decode(uint32_t format, const char *src, float *dst, uint64_t samples);
void cb_encode(uint32_t format, const float *src, char *dst, uint64_t samples);
int64_t cb_capture_period(cb_ring *ring, cb_side *s, const char *data, uint64_t nbytes,
                          double ratio);
int64_t cb_playback_period(cb_ring *ring, cb_side *s, double ratio);
