/* leakyspanner.capture._heap owns the allocator hooks and the table of live sampled allocations (global, under the GIL,
 * written by whichever thread allocates).
 *
 * A sampled heap profiler engine.
 *
 * Hooks the MEM and OBJ allocator domains, chaining to whatever allocators are
 * in place (pymalloc, the debug hooks, tracemalloc). Allocations are sampled by
 * bytes as a Poisson process: a countdown of exponentially distributed gaps with
 * mean sample_bytes, so an allocation of s bytes is sampled with probability
 * p = 1 - exp(-s / sample_bytes) and stands for f(s) / p bytes, where f(s) is
 * its footprint in the allocator (s rounded as pymalloc or glibc round it). A sampled
 * allocation records its request tag (route, method) and an interned Python
 * stack in a hash table keyed by pointer, removed again when the block is freed.
 *
 * Everything the hooks touch is global state protected by the GIL: the MEM and
 * OBJ domains are only called with it held. Our own tables use libc malloc,
 * never PyMem_* / PyObject_*, so they never re-enter the hooks.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
/* initial-exec: a plain %fs-relative load instead of a __tls_get_addr call. */
#define THREAD_LOCAL static __thread __attribute__((tls_model("initial-exec")))
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#define THREAD_LOCAL static _Thread_local
#endif

#if defined(Py_GIL_DISABLED) || PY_VERSION_HEX < 0x030A0000 || PY_VERSION_HEX >= 0x030E0000
#define SUPPORTED 0
#else
#define SUPPORTED 1
#endif

#if SUPPORTED

#if PY_VERSION_HEX >= 0x030D0000
#define IS_FINALIZING() Py_IsFinalizing()
#define CURRENT_TSTATE() PyThreadState_GetUnchecked()
#else
#define IS_FINALIZING() _Py_IsFinalizing()
#define CURRENT_TSTATE() _PyThreadState_UncheckedGet()
#endif

#define MAX_FRAMES_LIMIT 128
#define MAX_STACKS 65536          /* stack ids, the overflow id 0 included */
#define MAX_FRAME_RECORDS 262144  /* distinct (file, line, qualname) */
#define MIN_TABLE_SLOTS 1024
#define OVERFLOW_STACK 0
#define FIB 0x9E3779B97F4A7C15ULL

/* ---------------------------------------------------------------- state */

typedef struct hook_ctx {
    PyMemAllocatorEx prev;
    struct hook_ctx *next; /* every context ever made, so none is ever freed (see install) */
} hook_ctx_t;

typedef struct {
    uintptr_t route_id;
    uint64_t size;
    double inv_p;      /* 1 / inclusion probability */
    uint32_t stack_id;
    uint32_t method;
} sample_t;

/* One frame of an interned stack: keyed by (code, addr) while `code` is held; file,
   function and line are filled in when a stack is first read, or the code released. */
typedef struct {
    PyObject *code;     /* strong; NULL once released (then the record is out of the index) */
    PyObject *filename; /* strong; NULL until resolved */
    PyObject *name;
    int addr;           /* byte offset of the instruction in co_code, -1 before the first */
    int lineno;
    uint32_t hash;
} frame_rec_t;

typedef struct {
    uint32_t hash;
    uint32_t nframes;
    uint32_t frame_ids[];
} stack_rec_t;

/* An open-addressing index of ids: slot = (hash32 << 32) | (id + 1), 0 when empty. */
typedef struct {
    uint64_t *slots;
    size_t mask;
    size_t count;
} id_index_t;

static hook_ctx_t *g_ctx[2];        /* our install per domain (MEM, OBJ); NULL when not installed */
static hook_ctx_t *g_all_ctx;
static const PyMemAllocatorDomain g_domains[2] = {PYMEM_DOMAIN_MEM, PYMEM_DOMAIN_OBJ};

static int g_running;
static int64_t g_countdown = INT64_MAX; /* bytes to the next sample point */
static int g_probing, g_probe_seen;
static uint64_t g_rng;

static long long g_sample_bytes;
static double g_mean;
static int g_max_frames;
static size_t g_max_samples;
static PyObject *g_tag_var;

/* live samples: keys and values in parallel, so a free's probe touches only g_keys */
static void **g_keys;
static sample_t *g_vals;
static size_t g_mask, g_live;
static unsigned g_shift;
static double g_live_est_bytes;
static uint64_t g_samples_total, g_samples_dropped;

static frame_rec_t *g_frames;
static uint32_t g_nframes, g_frames_cap, g_pinned_codes;
static id_index_t g_frame_index;
static stack_rec_t **g_stacks;
static uint32_t g_nstacks, g_stacks_cap;
static size_t g_stack_bytes;
static id_index_t g_stack_index;
static uint64_t g_stacks_dropped;

THREAD_LOCAL int t_reentrant;

static PyObject *g_key_route, *g_key_endpoint;
static PyTypeObject RequestTag_Type;

/* ---------------------------------------------------------------- random gaps */

static uint64_t
splitmix64(uint64_t *state)
{
    uint64_t z = (*state += FIB);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void
seed_rng(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t s = ((uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec) ^ ((uint64_t)getpid() << 32);
    g_rng = splitmix64(&s);
}

/* A child must not draw the same gaps as its parent. */
static void
atfork_child(void)
{
    seed_rng();
}

/* ceil of an exponential variate of mean g_mean: P(gap <= s) = 1 - exp(-s / mean) for integer s */
static int64_t
next_gap(void)
{
    double u = (double)((splitmix64(&g_rng) >> 11) + 1) * 0x1.0p-53; /* (0, 1] */
    double gap = ceil(-log(u) * g_mean);
    if (gap < 1.0)
        return 1;
    if (gap > 9.0e18)
        return INT64_MAX;
    return (int64_t)gap;
}

/* ---------------------------------------------------------------- id index */

static int
index_init(id_index_t *ix, size_t cap)
{
    ix->slots = calloc(cap, sizeof(uint64_t));
    if (ix->slots == NULL)
        return -1;
    ix->mask = cap - 1;
    ix->count = 0;
    return 0;
}

static void
index_free(id_index_t *ix)
{
    free(ix->slots);
    ix->slots = NULL;
    ix->mask = 0;
    ix->count = 0;
}

static size_t
index_bytes(const id_index_t *ix)
{
    return ix->slots ? (ix->mask + 1) * sizeof(uint64_t) : 0;
}

/* The next id in ix stored under hash, probing on from slot *j (start at hash & ix->mask);
   UINT32_MAX at the first empty slot, where the probe for hash ends. Ids are below
   MAX_FRAME_RECORDS and MAX_STACKS, so UINT32_MAX is never one. */
static inline uint32_t
index_next(const id_index_t *ix, uint32_t hash, size_t *j)
{
    for (;; *j = (*j + 1) & ix->mask) {
        uint64_t v = ix->slots[*j];
        if (v == 0)
            return UINT32_MAX;
        if ((uint32_t)(v >> 32) == hash) {
            *j = (*j + 1) & ix->mask;
            return (uint32_t)v - 1;
        }
    }
}

/* Keeps the load at most 1/2; -1 when memory is short (the index stays usable). */
static int
index_insert(id_index_t *ix, uint32_t hash, uint32_t id)
{
    if ((ix->count + 1) * 2 > ix->mask + 1) {
        size_t cap = (ix->mask + 1) * 2;
        uint64_t *slots = calloc(cap, sizeof(uint64_t));
        if (slots == NULL)
            return -1;
        for (size_t i = 0; i <= ix->mask; i++) {
            uint64_t v = ix->slots[i];
            if (v == 0)
                continue;
            size_t j = (size_t)(v >> 32) & (cap - 1);
            while (slots[j] != 0)
                j = (j + 1) & (cap - 1);
            slots[j] = v;
        }
        free(ix->slots);
        ix->slots = slots;
        ix->mask = cap - 1;
    }
    size_t j = hash & ix->mask;
    while (ix->slots[j] != 0)
        j = (j + 1) & ix->mask;
    ix->slots[j] = ((uint64_t)hash << 32) | ((uint64_t)id + 1);
    ix->count++;
    return 0;
}

static inline uint64_t
mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDULL;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ULL;
    return x ^ (x >> 33);
}

/* ---------------------------------------------------------------- frames and stacks */

/* The id of (code object, instruction offset), interned with a strong reference to the
   code (so its address is never reused while the record is keyed by it); UINT32_MAX
   when full. The line is worked out only when a stack is read (resolve_frame). */
static uint32_t
intern_frame(PyObject *code, int addr)
{
    uint32_t hash = (uint32_t)mix64((uintptr_t)code ^ ((uint64_t)(uint32_t)addr << 40));
    size_t j = hash & g_frame_index.mask;
    for (uint32_t id; (id = index_next(&g_frame_index, hash, &j)) != UINT32_MAX;) {
        const frame_rec_t *f = &g_frames[id];
        if (f->code == code && f->addr == addr)
            return id;
    }
    if (g_nframes >= MAX_FRAME_RECORDS)
        return UINT32_MAX;
    if (g_nframes == g_frames_cap) {
        uint32_t cap = g_frames_cap * 2;
        frame_rec_t *frames = realloc(g_frames, cap * sizeof(frame_rec_t));
        if (frames == NULL)
            return UINT32_MAX;
        g_frames = frames;
        g_frames_cap = cap;
    }
    if (index_insert(&g_frame_index, hash, g_nframes) < 0)
        return UINT32_MAX;
    frame_rec_t *f = &g_frames[g_nframes];
    Py_INCREF(code);
    f->code = code;
    f->filename = NULL;
    f->name = NULL;
    f->addr = addr;
    f->lineno = 0;
    f->hash = hash;
    g_pinned_codes++;
    return g_nframes++;
}

/* Fill in a record's file, function and line from its code object (once). Allocates
   nothing and runs no Python code: PyCode_Addr2Line only reads the line table. */
static void
resolve_frame(frame_rec_t *f)
{
    if (f->filename != NULL)
        return;
    PyCodeObject *code = (PyCodeObject *)f->code;
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *name = code->co_qualname;
#else
    PyObject *name = code->co_name;
#endif
    int lineno = PyCode_Addr2Line(code, f->addr); /* addr < 0: the first line */
    f->filename = Py_NewRef(code->co_filename);
    f->name = Py_NewRef(name);
    f->lineno = lineno < 0 ? 0 : lineno;
}

/* The id of a sequence of frame ids, innermost first; OVERFLOW_STACK when the table is full. */
static uint32_t
intern_stack(const uint32_t *ids, uint32_t n)
{
    uint64_t h = 0x243F6A8885A308D3ULL ^ n;
    for (uint32_t i = 0; i < n; i++)
        h = mix64(h ^ ids[i]);
    uint32_t hash = (uint32_t)h;
    size_t j = hash & g_stack_index.mask;
    for (uint32_t id; (id = index_next(&g_stack_index, hash, &j)) != UINT32_MAX;) {
        const stack_rec_t *s = g_stacks[id];
        if (s->nframes == n && memcmp(s->frame_ids, ids, n * sizeof(uint32_t)) == 0)
            return id;
    }
    if (g_nstacks >= MAX_STACKS)
        goto dropped;
    if (g_nstacks == g_stacks_cap) {
        uint32_t cap = g_stacks_cap * 2;
        stack_rec_t **stacks = realloc(g_stacks, cap * sizeof(stack_rec_t *));
        if (stacks == NULL)
            goto dropped;
        g_stacks = stacks;
        g_stacks_cap = cap;
    }
    size_t size = sizeof(stack_rec_t) + n * sizeof(uint32_t);
    stack_rec_t *s = malloc(size);
    if (s == NULL)
        goto dropped;
    if (index_insert(&g_stack_index, hash, g_nstacks) < 0) {
        free(s);
        goto dropped;
    }
    s->hash = hash;
    s->nframes = n;
    memcpy(s->frame_ids, ids, n * sizeof(uint32_t));
    g_stacks[g_nstacks] = s;
    g_stack_bytes += size;
    return g_nstacks++;
dropped:
    g_stacks_dropped++;
    return OVERFLOW_STACK;
}

/* How a sample finds its frames. Frame objects cost ~1k instructions each to make on
   3.11+ (PyEval_GetFrame / PyFrame_GetBack materialize them), so where the interpreter's
   own frame chain can be read we read it, exactly as CPython's tracemalloc does: no
   allocation, no reference taken except the interned code's.
   - 3.10: every Python frame is a PyFrameObject; tstate->frame and f_back link them.
   - 3.11-3.13, built with the interpreter's internal headers: the _PyInterpreterFrame
     chain (tstate->cframe->current_frame, tstate->current_frame on 3.13), skipping
     frames that have not started (_PyFrame_IsIncomplete) and the C-stack shims (3.12+).
   - otherwise the public API (frame objects), as before; -DLEAKYSPANNER_PUBLIC_FRAME_API
     forces it, to test it. */
#if PY_VERSION_HEX < 0x030B0000
#define WALK_DIRECT 1
#define WALK_NAME "frame objects (f_back)"
#elif defined(__has_include) && !defined(LEAKYSPANNER_PUBLIC_FRAME_API)
#if __has_include("internal/pycore_frame.h")
#define Py_BUILD_CORE 1
#include "internal/pycore_frame.h"
#undef Py_BUILD_CORE
#define WALK_DIRECT 1
#define WALK_NAME "interpreter frames"
#endif
#endif
#ifndef WALK_DIRECT
#define WALK_DIRECT 0
#define WALK_NAME "public frame API"
#endif

/* Interns one frame into ids[*n]; -1 when the frame table is full. */
static inline int
add_frame(uint32_t *ids, uint32_t *n, PyObject *code, int addr)
{
    uint32_t id = intern_frame(code, addr < 0 ? -1 : addr);
    if (id == UINT32_MAX)
        return -1;
    ids[(*n)++] = id;
    return 0;
}

/* The current thread's Python stack, innermost first, as an interned stack id. Runs
   with t_reentrant set: the public-API walk allocates frame objects. */
static uint32_t
capture_stack(PyThreadState *tstate)
{
    uint32_t ids[MAX_FRAMES_LIMIT];
    uint32_t n = 0, max = (uint32_t)g_max_frames;
#if PY_VERSION_HEX < 0x030B0000
    for (PyFrameObject *f = tstate->frame; f != NULL && n < max; f = f->f_back) {
        if (add_frame(ids, &n, (PyObject *)f->f_code, f->f_lasti * (int)sizeof(_Py_CODEUNIT)) < 0)
            goto full;
    }
#elif WALK_DIRECT
#if PY_VERSION_HEX >= 0x030D0000
    _PyInterpreterFrame *f = tstate->current_frame;
#else
    _PyInterpreterFrame *f = tstate->cframe->current_frame;
#endif
    for (; f != NULL && n < max; f = f->previous) {
#if PY_VERSION_HEX >= 0x030C0000
        if (f->owner == FRAME_OWNED_BY_CSTACK)
            continue;
#endif
#if PY_VERSION_HEX >= 0x030D0000
        PyObject *code = f->f_executable;
        if (code == NULL || !PyCode_Check(code))
            continue;
#else
        PyObject *code = (PyObject *)f->f_code;
#endif
        if (_PyFrame_IsIncomplete(f))
            continue;
        if (add_frame(ids, &n, code, _PyInterpreterFrame_LASTI(f) * (int)sizeof(_Py_CODEUNIT)) < 0)
            goto full;
    }
#else
    PyFrameObject *frame = PyThreadState_GetFrame(tstate);
    while (frame != NULL && n < max) {
        PyCodeObject *code = PyFrame_GetCode(frame);
        int rc = add_frame(ids, &n, (PyObject *)code, PyFrame_GetLasti(frame));
        Py_DECREF(code); /* the record holds its own reference */
        PyFrameObject *back = rc < 0 || n == max ? NULL : PyFrame_GetBack(frame);
        Py_DECREF(frame);
        if (rc < 0)
            goto full;
        frame = back;
    }
    Py_XDECREF(frame);
#endif
    return intern_stack(ids, n);
full:
    g_stacks_dropped++;
    return OVERFLOW_STACK;
}

/* Let go of code objects nobody else holds (code made by exec() per request would
   otherwise stay alive until stop()): their records keep the resolved file, function
   and line, and leave the index, so a new code object at the same address gets its own
   record. Each record holds one reference, so a code object is ours alone when its
   reference count equals the number of records holding it. Runs on the sampler's tick;
   the decrefs come last, after the tables are consistent, because freeing a code
   object can run a weakref callback that samples. */
static void
release_orphan_codes(void)
{
    if (g_pinned_codes == 0)
        return;
    /* records per code object, in an open-addressing table at most half full */
    size_t cap = 16;
    while (cap < (size_t)g_pinned_codes * 2)
        cap *= 2;
    struct code_count { PyObject *code; Py_ssize_t n; } *counts = calloc(cap, sizeof(*counts));
    PyObject **dead = malloc(g_pinned_codes * sizeof(PyObject *));
    if (counts == NULL || dead == NULL)
        goto done;
    for (uint32_t i = 0; i < g_nframes; i++) {
        PyObject *code = g_frames[i].code;
        if (code == NULL)
            continue;
        size_t j = (size_t)mix64((uintptr_t)code) & (cap - 1);
        while (counts[j].code != NULL && counts[j].code != code)
            j = (j + 1) & (cap - 1);
        counts[j].code = code;
        counts[j].n++;
    }
    uint32_t ndead = 0;
    for (uint32_t i = 0; i < g_nframes; i++) {
        frame_rec_t *f = &g_frames[i];
        if (f->code == NULL)
            continue;
        size_t j = (size_t)mix64((uintptr_t)f->code) & (cap - 1);
        while (counts[j].code != f->code)
            j = (j + 1) & (cap - 1);
        if (Py_REFCNT(f->code) != counts[j].n)
            continue;
        resolve_frame(f);
        dead[ndead++] = f->code; /* one reference per record */
        f->code = NULL;
    }
    if (ndead == 0)
        goto done;
    g_pinned_codes -= ndead;
    /* rebuild the index from the records still keyed by their code */
    memset(g_frame_index.slots, 0, (g_frame_index.mask + 1) * sizeof(uint64_t));
    g_frame_index.count = 0;
    for (uint32_t i = 0; i < g_nframes; i++) {
        if (g_frames[i].code != NULL)
            (void)index_insert(&g_frame_index, g_frames[i].hash, i); /* never grows: fewer than before */
    }
    free(counts);
    counts = NULL;
    for (uint32_t i = 0; i < ndead; i++)
        Py_DECREF(dead[i]);
done:
    free(counts);
    free(dead);
}

static int
stacks_init(void)
{
    g_frames_cap = 256;
    g_frames = malloc(g_frames_cap * sizeof(frame_rec_t));
    g_stacks_cap = 256;
    g_stacks = malloc(g_stacks_cap * sizeof(stack_rec_t *));
    if (g_frames == NULL || g_stacks == NULL || index_init(&g_frame_index, 512) < 0 ||
        index_init(&g_stack_index, 512) < 0)
        return -1;
    g_nframes = 0;
    g_nstacks = 0;
    g_stack_bytes = 0;
    g_stacks_dropped = 0;
    g_pinned_codes = 0;
    /* id 0: where samples go once the stack table is full; a record with no code,
       never in the index */
    PyObject *file = PyUnicode_InternFromString("<too many stacks>");
    PyObject *empty = PyUnicode_InternFromString("");
    if (file == NULL || empty == NULL) {
        Py_XDECREF(file);
        Py_XDECREF(empty);
        return -1;
    }
    frame_rec_t *f = &g_frames[0];
    f->code = NULL;
    f->filename = file;
    f->name = empty;
    f->addr = -1;
    f->lineno = 0;
    f->hash = 0;
    g_nframes = 1;
    uint32_t id = 0;
    if (intern_stack(&id, 1) != OVERFLOW_STACK)
        return -1;
    return 0;
}

static void
stacks_free(void)
{
    for (uint32_t i = 0; i < g_nstacks; i++)
        free(g_stacks[i]);
    free(g_stacks);
    g_stacks = NULL;
    g_nstacks = g_stacks_cap = 0;
    g_stack_bytes = 0;
    index_free(&g_stack_index);
    index_free(&g_frame_index);
    frame_rec_t *frames = g_frames;
    uint32_t nframes = g_nframes;
    g_frames = NULL;
    g_nframes = g_frames_cap = 0;
    g_pinned_codes = 0;
    /* last: a decref may free an object, which goes through our (now idle) free hook */
    for (uint32_t i = 0; i < nframes; i++) {
        Py_XDECREF(frames[i].code);
        Py_XDECREF(frames[i].filename);
        Py_XDECREF(frames[i].name);
    }
    free(frames);
}

/* ---------------------------------------------------------------- sample table */

static inline size_t
ptr_slot(const void *p)
{
    return (size_t)(((uint64_t)(uintptr_t)p * FIB) >> g_shift);
}

static int
samples_alloc(size_t cap)
{
    void **keys = calloc(cap, sizeof(void *));
    sample_t *vals = malloc(cap * sizeof(sample_t));
    if (keys == NULL || vals == NULL) {
        free(keys);
        free(vals);
        return -1;
    }
    void **old_keys = g_keys;
    sample_t *old_vals = g_vals;
    size_t old_cap = g_keys ? g_mask + 1 : 0;
    unsigned bits = 0;
    while (((size_t)1 << bits) < cap)
        bits++;
    g_keys = keys;
    g_vals = vals;
    g_mask = cap - 1;
    g_shift = 64 - bits;
    for (size_t i = 0; i < old_cap; i++) {
        if (old_keys[i] == NULL)
            continue;
        size_t j = ptr_slot(old_keys[i]);
        while (keys[j] != NULL)
            j = (j + 1) & g_mask;
        keys[j] = old_keys[i];
        vals[j] = old_vals[i];
    }
    free(old_keys);
    free(old_vals);
    return 0;
}

static void
samples_free(void)
{
    g_live = 0; /* first: the free hook probes only while g_live != 0 */
    g_live_est_bytes = 0.0;
    free(g_keys);
    free(g_vals);
    g_keys = NULL;
    g_vals = NULL;
    g_mask = 0;
}

/* Backward-shift deletion: no tombstones, so a miss ends at the first empty slot. */
static void
remove_at(size_t i)
{
    g_live--;
    g_live_est_bytes = g_live ? g_live_est_bytes - (double)g_vals[i].size * g_vals[i].inv_p : 0.0;
    for (size_t j = (i + 1) & g_mask; g_keys[j] != NULL; j = (j + 1) & g_mask) {
        size_t home = ptr_slot(g_keys[j]);
        if (((j - home) & g_mask) >= ((j - i) & g_mask)) {
            g_keys[i] = g_keys[j];
            g_vals[i] = g_vals[j];
            i = j;
        }
    }
    g_keys[i] = NULL;
}

static inline void
untrack(const void *p)
{
    for (size_t i = ptr_slot(p);; i = (i + 1) & g_mask) {
        const void *k = g_keys[i];
        if (k == p) {
            remove_at(i);
            return;
        }
        if (k == NULL)
            return;
    }
}

/* What an allocation of `size` bytes occupies, which is what RSS grows by: pymalloc
   rounds requests of up to 512 bytes up to 16; glibc adds an 8-byte header and rounds
   to 16 (32 at least); a request it maps on its own (128 KiB and up by default) takes
   whole pages. Requested bytes undercount a leak of small objects by 10-30%. */
static inline size_t
footprint(size_t size)
{
    if (size <= 512)
        return size == 0 ? 16 : (size + 15) & ~(size_t)15;
    if (size >= 128 * 1024)
        return (size + 16 + 4095) & ~(size_t)4095;
    size_t chunk = (size + 8 + 15) & ~(size_t)15;
    return chunk < 32 ? 32 : chunk;
}

static void
track(void *p, size_t size, uintptr_t route_id, uint32_t method, uint32_t stack_id)
{
    size_t i = ptr_slot(p);
    while (g_keys[i] != NULL && g_keys[i] != p)
        i = (i + 1) & g_mask;
    if (g_keys[i] == p) {
        /* a free we never saw (a block handed between allocators): replace it */
        remove_at(i);
    }
    if (g_live >= g_max_samples) {
        g_samples_dropped++;
        return;
    }
    if ((g_live + 1) * 2 > g_mask + 1) {
        if (samples_alloc((g_mask + 1) * 2) < 0) {
            g_samples_dropped++;
            return;
        }
    }
    for (i = ptr_slot(p); g_keys[i] != NULL; i = (i + 1) & g_mask)
        ;
    double inv_p = 1.0 / -expm1(-(double)size / g_mean);  /* odds by requested size */
    size = footprint(size);                                  /* estimates by footprint */
    g_keys[i] = p;
    g_vals[i].route_id = route_id;
    g_vals[i].size = size;
    g_vals[i].inv_p = inv_p;
    g_vals[i].stack_id = stack_id;
    g_vals[i].method = method;
    g_live++;
    g_live_est_bytes += (double)size * inv_p;
}

/* ---------------------------------------------------------------- request tags */

typedef struct {
    PyObject_HEAD
    PyObject *scope; /* NULL once closed */
    uintptr_t route_id;
    int method_code;
} RequestTagObject;

/* id() of scope["route"], else of scope["endpoint"], else 0; allocates nothing, raises nothing. */
static uintptr_t
scope_route_id(PyObject *scope)
{
    PyObject *keys[2] = {g_key_route, g_key_endpoint};
    for (int i = 0; i < 2; i++) {
        PyObject *v = PyDict_GetItemWithError(scope, keys[i]);
        if (v != NULL && v != Py_None)
            return (uintptr_t)v;
        if (v == NULL && PyErr_Occurred())
            PyErr_Clear();
    }
    return 0;
}

static void
resolve_tag(uintptr_t *route_id, uint32_t *method)
{
    PyObject *v = NULL;
    *route_id = 0;
    *method = 0;
    if (PyContextVar_Get(g_tag_var, NULL, &v) < 0) {
        PyErr_Clear();
        return;
    }
    if (v == NULL)
        return;
    if (Py_IS_TYPE(v, &RequestTag_Type)) {
        RequestTagObject *tag = (RequestTagObject *)v;
        *route_id = tag->scope ? scope_route_id(tag->scope) : tag->route_id;
        *method = (uint32_t)tag->method_code;
    }
    Py_DECREF(v); /* the context still holds it */
}

static PyObject *
tag_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"scope", "method_code", NULL};
    PyObject *scope;
    int method_code;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oi:RequestTag", kwlist, &scope, &method_code))
        return NULL;
    if (!PyDict_Check(scope)) {
        PyErr_Format(PyExc_TypeError, "RequestTag scope must be the ASGI scope dict, got %.100s",
                     Py_TYPE(scope)->tp_name);
        return NULL;
    }
    if (method_code < 0 || method_code > 255) {
        PyErr_Format(PyExc_ValueError, "RequestTag method_code must be in 0..255, got %d", method_code);
        return NULL;
    }
    RequestTagObject *self = (RequestTagObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_INCREF(scope);
    self->scope = scope;
    self->route_id = 0;
    self->method_code = method_code;
    return (PyObject *)self;
}

/* RequestTag(scope, method_code) once per request: called positionally, skip the
   argument tuple and the keyword parser (about 1k instructions of a tiny request). */
static PyObject *
tag_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL && nargs == 2 && PyDict_Check(args[0]) && PyLong_CheckExact(args[1]) &&
        type == (PyObject *)&RequestTag_Type) {
        long method_code = PyLong_AsLong(args[1]);
        if (method_code >= 0 && method_code <= 255) {
            RequestTagObject *self = PyObject_GC_New(RequestTagObject, &RequestTag_Type);
            if (self == NULL)
                return NULL;
            self->scope = Py_NewRef(args[0]);
            self->route_id = 0;
            self->method_code = (int)method_code;
            PyObject_GC_Track(self);
            return (PyObject *)self;
        }
        PyErr_Clear(); /* out of range or too big: tag_new says so */
    }
    /* anything else: the general path, which checks and names what is wrong */
    PyObject *tuple = PyTuple_New(nargs);
    PyObject *kwargs = kwnames != NULL ? PyDict_New() : NULL;
    PyObject *result = NULL;
    if (tuple == NULL || (kwnames != NULL && kwargs == NULL))
        goto done;
    for (Py_ssize_t i = 0; i < nargs; i++)
        PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    for (Py_ssize_t i = 0; kwnames != NULL && i < PyTuple_GET_SIZE(kwnames); i++) {
        if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0)
            goto done;
    }
    result = ((PyTypeObject *)type)->tp_new((PyTypeObject *)type, tuple, kwargs);
done:
    Py_XDECREF(tuple);
    Py_XDECREF(kwargs);
    return result;
}

static int
tag_traverse(RequestTagObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->scope);
    return 0;
}

static int
tag_clear(RequestTagObject *self)
{
    Py_CLEAR(self->scope);
    return 0;
}

static void
tag_dealloc(RequestTagObject *self)
{
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->scope);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
tag_close(RequestTagObject *self, PyObject *arg)
{
    unsigned long long route_id = PyLong_AsUnsignedLongLong(arg);
    if (route_id == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_TypeError))
            return NULL;
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "RequestTag.close route_id must be an int in 0..2**%d-1 (an id()), got %R",
                     (int)(8 * sizeof(uintptr_t)), arg);
        return NULL;
    }
    self->route_id = (uintptr_t)route_id;
    Py_CLEAR(self->scope);
    Py_RETURN_NONE;
}

static PyObject *
tag_get_route_id(RequestTagObject *self, void *closure)
{
    return PyLong_FromSize_t(self->scope ? scope_route_id(self->scope) : self->route_id);
}

static PyObject *
tag_get_method_code(RequestTagObject *self, void *closure)
{
    return PyLong_FromLong(self->method_code);
}

static PyObject *
tag_get_closed(RequestTagObject *self, void *closure)
{
    return PyBool_FromLong(self->scope == NULL);
}

static PyObject *
tag_repr(RequestTagObject *self)
{
    return PyUnicode_FromFormat("<RequestTag method_code=%d route_id=%zu closed=%s>", self->method_code,
                                (size_t)(self->scope ? scope_route_id(self->scope) : self->route_id),
                                self->scope ? "False" : "True");
}

static PyMethodDef tag_methods[] = {
    {"close", (PyCFunction)tag_close, METH_O,
     "close(route_id)\n--\n\nSet the route id for the request's remaining allocations and drop the scope."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tag_getset[] = {
    {"route_id", (getter)tag_get_route_id, NULL, "id() of the route (from the scope until closed), 0 if none", NULL},
    {"method_code", (getter)tag_get_method_code, NULL, "the request's method code", NULL},
    {"closed", (getter)tag_get_closed, NULL, "whether close() dropped the scope", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RequestTag_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "leakyspanner.capture._heap.RequestTag",
    .tp_basicsize = sizeof(RequestTagObject),
    .tp_dealloc = (destructor)tag_dealloc,
    .tp_repr = (reprfunc)tag_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "RequestTag(scope, method_code)\n--\n\n"
              "The tag of one HTTP request, set in the engine's ContextVar: the route comes from\n"
              "scope['route'] or scope['endpoint'] until close(route_id) drops the scope.",
    .tp_traverse = (traverseproc)tag_traverse,
    .tp_clear = (inquiry)tag_clear,
    .tp_methods = tag_methods,
    .tp_getset = tag_getset,
    .tp_new = tag_new,
    .tp_vectorcall = tag_vectorcall,
};

/* ---------------------------------------------------------------- the hooks */

static int
can_sample(PyThreadState **tstate)
{
    if (!PyGILState_Check())
        return 0;
    PyThreadState *ts = CURRENT_TSTATE();
    if (ts == NULL || IS_FINALIZING())
        return 0;
    /* our ContextVar and tables belong to the main interpreter */
    if (PyThreadState_GetInterpreter(ts) != PyInterpreterState_Main())
        return 0;
    *tstate = ts;
    return 1;
}

static void
take_sample(PyThreadState *tstate, void *p, size_t size)
{
    uintptr_t route_id;
    uint32_t method, stack_id;
    t_reentrant = 1;
    /* On 3.10/3.11 making a GC object (a frame) can run a collection inline, and
       so finalizers, in the middle of whatever allocation we are sampling. */
    int gc_was_enabled = PyGC_Disable();
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
#else
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
#endif
    resolve_tag(&route_id, &method);
    stack_id = capture_stack(tstate);
    PyErr_Clear();
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(exc_type, exc_value, exc_tb);
#endif
    if (gc_was_enabled)
        PyGC_Enable();
    t_reentrant = 0;
    g_samples_total++;
    track(p, size, route_id, method, stack_id);
}

/* The countdown crossed zero: a sample point. Nested and ineligible allocations
   draw a fresh gap too; by memorylessness the others' inclusion odds are unchanged. */
static void
sample_point(void *p, size_t size)
{
    PyThreadState *tstate;
    if (UNLIKELY(g_probing)) {
        g_probe_seen = 1;
        return;
    }
    if (!g_running) {
        g_countdown = INT64_MAX; /* installed, pass-through */
        return;
    }
    g_countdown = next_gap();
    if (p == NULL || t_reentrant || !can_sample(&tstate))
        return;
    take_sample(tstate, p, size);
}

/* The hot paths below are a countdown subtraction (allocations) or a load of
   g_live (frees), a branch, and a tail call to the previous allocator; all else
   is out of line. Counting before forwarding is equivalent: a failed allocation
   just moves the next sample point a little closer. */

static NOINLINE void *
malloc_slow(hook_ctx_t *h, size_t size)
{
    void *p = h->prev.malloc(h->prev.ctx, size);
    sample_point(p, size);
    return p;
}

static void *
hook_malloc(void *ctx, size_t size)
{
    hook_ctx_t *h = ctx;
    if (UNLIKELY((g_countdown -= (int64_t)size) <= 0))
        return malloc_slow(h, size);
    return h->prev.malloc(h->prev.ctx, size);
}

static NOINLINE void *
calloc_slow(hook_ctx_t *h, size_t nelem, size_t elsize, size_t size)
{
    void *p = h->prev.calloc(h->prev.ctx, nelem, elsize);
    sample_point(p, size);
    return p;
}

static void *
hook_calloc(void *ctx, size_t nelem, size_t elsize)
{
    hook_ctx_t *h = ctx;
    size_t size;
    if (__builtin_mul_overflow(nelem, elsize, &size))
        size = 0; /* the allocator below refuses it */
    if (UNLIKELY((g_countdown -= (int64_t)size) <= 0))
        return calloc_slow(h, nelem, elsize, size);
    return h->prev.calloc(h->prev.ctx, nelem, elsize);
}

/* realloc: untrack the old block if tracked, then count the result as a new allocation */
static NOINLINE void *
realloc_slow(hook_ctx_t *h, void *ptr, size_t size)
{
    void *p = h->prev.realloc(h->prev.ctx, ptr, size);
    if (p == NULL)
        return NULL; /* the old block is still alive (and still tracked) */
    if (ptr != NULL && g_live != 0)
        untrack(ptr);
    if (g_countdown <= 0)
        sample_point(p, size);
    return p;
}

static void *
hook_realloc(void *ctx, void *ptr, size_t size)
{
    hook_ctx_t *h = ctx;
    if (UNLIKELY(((g_countdown -= (int64_t)size) <= 0) | ((g_live != 0) & (ptr != NULL))))
        return realloc_slow(h, ptr, size);
    return h->prev.realloc(h->prev.ctx, ptr, size);
}

static NOINLINE void
free_tracked(hook_ctx_t *h, void *ptr, size_t slot)
{
    remove_at(slot);
    h->prev.free(h->prev.ctx, ptr);
}

static void
hook_free(void *ctx, void *ptr)
{
    hook_ctx_t *h = ctx;
    if (UNLIKELY(g_live != 0)) {
        /* the probe of untrack(), inline: a miss usually ends at the first slot */
        for (size_t i = ptr_slot(ptr);; i = (i + 1) & g_mask) {
            const void *k = g_keys[i];
            if (k == NULL)
                break;
            if (k == ptr)
                return free_tracked(h, ptr, i);
        }
    }
    h->prev.free(h->prev.ctx, ptr);
}

static int
is_current(int d)
{
    PyMemAllocatorEx cur;
    PyMem_GetAllocator(g_domains[d], &cur);
    return g_ctx[d] != NULL && cur.malloc == hook_malloc && cur.ctx == g_ctx[d];
}

/* Whether an allocation in domain d still passes through our hook (it may be
   wrapped by another tool, or cut out by one that restored an older allocator). */
static int
reaches_us(int d)
{
    if (g_ctx[d] == NULL)
        return 0;
    int64_t countdown = g_countdown;
    g_probing = 1;
    g_probe_seen = 0;
    g_countdown = 0;
    void *p = d == 0 ? PyMem_Malloc(16) : PyObject_Malloc(16);
    g_probing = 0;
    g_countdown = countdown;
    if (d == 0)
        PyMem_Free(p);
    else
        PyObject_Free(p);
    return g_probe_seen;
}

static int
install(int d)
{
    /* Contexts are never freed: a tool that saved our allocator may restore it later. */
    hook_ctx_t *h = calloc(1, sizeof(hook_ctx_t));
    if (h == NULL)
        return -1;
    PyMem_GetAllocator(g_domains[d], &h->prev);
    h->next = g_all_ctx;
    g_all_ctx = h;
    PyMemAllocatorEx ours = {h, hook_malloc, hook_calloc, hook_realloc, hook_free};
    PyMem_SetAllocator(g_domains[d], &ours);
    g_ctx[d] = h;
    return 0;
}

/* Restore the previous allocator where ours is still the current one; elsewhere stay installed. */
static void
uninstall_where_current(void)
{
    for (int d = 0; d < 2; d++) {
        if (is_current(d)) {
            PyMem_SetAllocator(g_domains[d], &g_ctx[d]->prev);
            g_ctx[d] = NULL;
        }
    }
}

/* ---------------------------------------------------------------- module functions */

static void
release_tables(void)
{
    samples_free();
    stacks_free();
}

static int
parse_ll(PyObject *obj, const char *name, long long lo, long long hi, long long *out)
{
    int overflow = 0;
    long long v = PyLong_Check(obj) ? PyLong_AsLongLongAndOverflow(obj, &overflow) : 0;
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %.100s", name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "%s must be in %lld..%lld, got %R", name, lo, hi, obj);
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *
heap_start(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"sample_bytes", "max_frames", "tag_var", "max_samples", NULL};
    PyObject *o_sample, *o_frames, *tag_var, *o_max = NULL;
    long long sample_bytes, max_frames, max_samples = 1 << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|O:start", kwlist, &o_sample, &o_frames, &tag_var, &o_max))
        return NULL;
    if (g_running) {
        PyErr_SetString(PyExc_RuntimeError, "the heap engine is already running; call stop() first");
        return NULL;
    }
    if (parse_ll(o_sample, "sample_bytes", 1, (long long)1 << 50, &sample_bytes) < 0 ||
        parse_ll(o_frames, "max_frames", 1, MAX_FRAMES_LIMIT, &max_frames) < 0 ||
        (o_max != NULL && parse_ll(o_max, "max_samples", 1, (long long)1 << 30, &max_samples) < 0))
        return NULL;
    if (!PyContextVar_CheckExact(tag_var)) {
        PyErr_Format(PyExc_ValueError, "tag_var must be a contextvars.ContextVar, got %.100s",
                     Py_TYPE(tag_var)->tp_name);
        return NULL;
    }
    if (samples_alloc(MIN_TABLE_SLOTS) < 0 || stacks_init() < 0) {
        release_tables();
        return PyErr_NoMemory();
    }
    for (int d = 0; d < 2; d++) {
        /* a previous stop() left us installed under another tool: reuse that install if still reached */
        if (g_ctx[d] != NULL && !reaches_us(d))
            g_ctx[d] = NULL;
        if (g_ctx[d] == NULL && install(d) < 0) {
            uninstall_where_current();
            release_tables();
            return PyErr_NoMemory();
        }
    }
    g_sample_bytes = sample_bytes;
    g_mean = (double)sample_bytes;
    g_max_frames = (int)max_frames;
    g_max_samples = (size_t)max_samples;
    g_samples_total = g_samples_dropped = 0;
    Py_INCREF(tag_var);
    g_tag_var = tag_var;
    g_countdown = next_gap();
    g_running = 1;
    Py_RETURN_NONE;
}

static PyObject *
heap_stop(PyObject *module, PyObject *unused)
{
    int was_running = g_running;
    g_running = 0;
    g_countdown = INT64_MAX;
    uninstall_where_current();
    if (was_running) {
        release_tables();
        Py_CLEAR(g_tag_var);
    }
    Py_RETURN_NONE;
}

/* A new mean gap from the next sample on. Each live sample keeps the weight (1/p)
   it was taken with, so estimates stay unbiased across the change. */
static PyObject *
heap_set_sample_bytes(PyObject *module, PyObject *arg)
{
    long long sample_bytes;
    if (parse_ll(arg, "sample_bytes", 1, (long long)1 << 50, &sample_bytes) < 0)
        return NULL;
    g_sample_bytes = sample_bytes;
    g_mean = (double)sample_bytes;
    if (g_running)
        g_countdown = next_gap();
    Py_RETURN_NONE;
}

static PyObject *
heap_running(PyObject *module, PyObject *unused)
{
    return PyBool_FromLong(g_running);
}

typedef struct {
    uintptr_t route_id;
    uint32_t stack_id;
    uint32_t method;
    uint64_t samples;
    double count;
    double bytes;
    int used;
} group_t;

static inline size_t
group_slot(uintptr_t route_id, uint32_t stack_id, uint32_t method, size_t mask)
{
    return (size_t)mix64(route_id ^ ((uint64_t)stack_id << 32) ^ ((uint64_t)method << 24)) & mask;
}

/* Double the aggregation table; 0 on success. */
static int
groups_grow(group_t **groups, size_t *cap)
{
    size_t ncap = *cap * 2;
    group_t *ng = calloc(ncap, sizeof(group_t));
    if (ng == NULL)
        return -1;
    for (size_t i = 0; i < *cap; i++) {
        const group_t *g = &(*groups)[i];
        if (!g->used)
            continue;
        size_t j = group_slot(g->route_id, g->stack_id, g->method, ncap - 1);
        while (ng[j].used)
            j = (j + 1) & (ncap - 1);
        ng[j] = *g;
    }
    free(*groups);
    *groups = ng;
    *cap = ncap;
    return 0;
}

static PyObject *
heap_snapshot(PyObject *module, PyObject *unused)
{
    if (g_running)
        release_orphan_codes();
    if (!g_running || g_live == 0)
        return PyList_New(0);
    size_t cap = 256, ngroups = 0;
    group_t *groups = calloc(cap, sizeof(group_t));
    if (groups == NULL)
        return PyErr_NoMemory();
    /* nothing here allocates through Python, so the sample table cannot change under us */
    for (size_t i = 0; i <= g_mask; i++) {
        if (g_keys[i] == NULL)
            continue;
        const sample_t *s = &g_vals[i];
        size_t j;
        for (;;) {
            j = group_slot(s->route_id, s->stack_id, s->method, cap - 1);
            while (groups[j].used && (groups[j].route_id != s->route_id || groups[j].stack_id != s->stack_id ||
                                      groups[j].method != s->method))
                j = (j + 1) & (cap - 1);
            if (groups[j].used || (ngroups + 1) * 2 <= cap)
                break;
            if (groups_grow(&groups, &cap) < 0) { /* then probe again in the bigger table */
                free(groups);
                return PyErr_NoMemory();
            }
        }
        if (!groups[j].used) {
            groups[j].used = 1;
            groups[j].route_id = s->route_id;
            groups[j].stack_id = s->stack_id;
            groups[j].method = s->method;
            ngroups++;
        }
        group_t *g = &groups[j];
        g->samples++;
        g->count += s->inv_p;
        g->bytes += (double)s->size * s->inv_p;
    }
    /* the engine's own output is not the app's heap: build it unsampled */
    t_reentrant = 1;
    PyObject *result = PyList_New((Py_ssize_t)ngroups);
    Py_ssize_t k = 0;
    for (size_t j = 0; j < cap && result != NULL; j++) {
        const group_t *g = &groups[j];
        if (!g->used)
            continue;
        PyObject *row = Py_BuildValue("(KIIKLL)", (unsigned long long)g->route_id, (unsigned int)g->method,
                                      (unsigned int)g->stack_id, (unsigned long long)g->samples,
                                      (long long)llround(g->count), (long long)llround(g->bytes));
        if (row == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, k++, row);
    }
    t_reentrant = 0;
    free(groups);
    return result;
}

static PyObject *
heap_stack(PyObject *module, PyObject *arg)
{
    unsigned long id = PyLong_Check(arg) ? PyLong_AsUnsignedLong(arg) : 0;
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "stack_id must be an int, got %.100s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    if (id == (unsigned long)-1 && PyErr_Occurred())
        PyErr_Clear();
    else if (g_running && id < g_nstacks)
        goto found;
    PyErr_Format(PyExc_ValueError, "stack_id %R is not a stack of the running engine (%u stacks; ids are valid until stop())",
                 arg, (unsigned)g_nstacks);
    return NULL;
found:;
    /* Copy (with references) first: building tuples allocates, and a finalizer run by
       that could sample (moving g_frames) or even stop the engine (freeing the tables). */
    PyObject *files[MAX_FRAMES_LIMIT], *names[MAX_FRAMES_LIMIT];
    int linenos[MAX_FRAMES_LIMIT];
    const stack_rec_t *s = g_stacks[id];
    uint32_t n = s->nframes;
    for (uint32_t i = 0; i < n; i++) {
        frame_rec_t *f = &g_frames[s->frame_ids[i]];
        resolve_frame(f);
        files[i] = Py_NewRef(f->filename);
        names[i] = Py_NewRef(f->name);
        linenos[i] = f->lineno;
    }
    t_reentrant = 1; /* the engine's own output is not the app's heap */
    PyObject *result = PyTuple_New(n);
    for (uint32_t i = 0; i < n && result != NULL; i++) {
        PyObject *t = Py_BuildValue("(OiO)", files[i], linenos[i], names[i]);
        if (t == NULL)
            Py_CLEAR(result);
        else
            PyTuple_SET_ITEM(result, i, t);
    }
    t_reentrant = 0;
    for (uint32_t i = 0; i < n; i++) {
        Py_DECREF(files[i]);
        Py_DECREF(names[i]);
    }
    return result;
}

static size_t
engine_bytes(void)
{
    size_t n = 0;
    if (g_keys != NULL)
        n += (g_mask + 1) * (sizeof(void *) + sizeof(sample_t));
    n += g_frames_cap * sizeof(frame_rec_t) + index_bytes(&g_frame_index);
    n += g_stacks_cap * sizeof(stack_rec_t *) + g_stack_bytes + index_bytes(&g_stack_index);
    return n;
}

static PyObject *
heap_stats(PyObject *module, PyObject *unused)
{
    int hooked = is_current(0) && is_current(1);
    int reached = reaches_us(0) && reaches_us(1);
    t_reentrant = 1; /* the engine's own output is not the app's heap */
    PyObject *result = Py_BuildValue(
        "{sL sI sO sO sO sn sL sK sK sI sK sn sn sI ss}",
        "sample_bytes", g_sample_bytes, "max_frames", (unsigned int)g_max_frames,
        "running", g_running ? Py_True : Py_False, "hooked", hooked ? Py_True : Py_False,
        "reached", reached ? Py_True : Py_False, "live_samples", (Py_ssize_t)g_live,
        "live_est_bytes", (long long)llround(g_live_est_bytes), "samples_total", (unsigned long long)g_samples_total,
        "samples_dropped", (unsigned long long)g_samples_dropped,
        "stacks", (unsigned int)(g_nstacks ? g_nstacks - 1 : 0), "stacks_dropped", (unsigned long long)g_stacks_dropped,
        "engine_bytes", (Py_ssize_t)engine_bytes(), "max_samples", (Py_ssize_t)g_max_samples,
        "pinned_codes", (unsigned int)g_pinned_codes, "frame_walk", WALK_NAME);
    t_reentrant = 0;
    return result;
}

static PyMethodDef heap_methods[] = {
    {"start", (PyCFunction)(void (*)(void))heap_start, METH_VARARGS | METH_KEYWORDS,
     "start(sample_bytes, max_frames, tag_var, max_samples=1 << 20)\n--\n\n"
     "Hook the MEM and OBJ allocators and sample allocations every sample_bytes on average."},
    {"stop", heap_stop, METH_NOARGS,
     "stop()\n--\n\nStop sampling and free the tables; idempotent. Stays installed as a pass-through\n"
     "where another allocator hook has wrapped ours since start()."},
    {"running", heap_running, METH_NOARGS, "running()\n--\n\nWhether the engine is sampling."},
    {"set_sample_bytes", heap_set_sample_bytes, METH_O,
     "set_sample_bytes(sample_bytes)\n--\n\nA new mean gap between samples from now on; live samples keep their weights."},
    {"snapshot", heap_snapshot, METH_NOARGS,
     "snapshot()\n--\n\nLive samples grouped as (route_id, method_code, stack_id, samples, est_count, est_bytes)."},
    {"stack", heap_stack, METH_O,
     "stack(stack_id)\n--\n\nThe frames of an interned stack, innermost first: ((filename, lineno, qualname), ...)."},
    {"stats", heap_stats, METH_NOARGS, "stats()\n--\n\nThe engine's counters and settings as a dict."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef heap_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "leakyspanner.capture._heap",
    .m_doc = "A sampled heap profiler: live sampled allocations by request tag and Python stack.",
    .m_size = -1,
    .m_methods = heap_methods,
};
#endif /* SUPPORTED */

PyMODINIT_FUNC
PyInit__heap(void)
{
#if !SUPPORTED
    PyErr_Format(PyExc_ImportError,
                 "leakyspanner's heap engine supports CPython 3.10-3.13 with the GIL; this is %s%s",
                 PY_VERSION,
#ifdef Py_GIL_DISABLED
                 " (free-threaded)"
#else
                 ""
#endif
    );
    return NULL;
#else
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    /* 3.11.0 crashes when a frame object is made for a frame being torn down (gh-99729),
       which a sample taken in a finalizer run by that teardown does. */
    if (Py_Version < 0x030B0100) {
        PyErr_Format(PyExc_ImportError, "leakyspanner's heap engine needs CPython 3.11.1 or newer on 3.11, this is 3.11.%d",
                     (int)((Py_Version >> 8) & 0xFF));
        return NULL;
    }
#endif
    static int atfork_registered;
    if (!atfork_registered) {
        if (pthread_atfork(NULL, NULL, atfork_child) != 0) {
            PyErr_SetString(PyExc_ImportError, "leakyspanner's heap engine could not register its fork handler");
            return NULL;
        }
        atfork_registered = 1;
        seed_rng();
    }
    if (g_key_route == NULL) {
        g_key_route = PyUnicode_InternFromString("route");
        g_key_endpoint = PyUnicode_InternFromString("endpoint");
        if (g_key_route == NULL || g_key_endpoint == NULL)
            return NULL;
    }
    if (PyType_Ready(&RequestTag_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&heap_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RequestTag_Type);
    if (PyModule_AddObject(m, "RequestTag", (PyObject *)&RequestTag_Type) < 0) {
        Py_DECREF(&RequestTag_Type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
#endif
}
