/* leakyspanner.capture._reqpath owns each request's state while it runs (Exchange), on the event loop's thread.
 *
 * The middleware's per-request bookkeeping in C.
 *
 * The same work as middleware.py's pure-Python _Exchange, without its bytecode:
 * RequestPath.enter(scope, send) opens a request (in-flight count, clock, the
 * RSS sample decision, the heap engine's tag) and returns an Exchange, which the
 * app gets as its ``send``; close() (or fail() when the app raised) counts the
 * request on its endpoint's counter and, for a measured request, appends the
 * record tuple to the writer's buffer.
 *
 * State the profiler owns stays the profiler's: every request reads and writes
 * it through the profiler's instance dict (one hash lookup per attribute, the
 * keys interned here), so the sampler, the writer, stats() and tests see exactly
 * what the Python path would show them. Only the RSS-sampling window lives here;
 * a new session (a new ``_counts`` dict) resets it.
 *
 * Nothing here raises into the app: an error of ours is handed to
 * profiler._internal_error and the request goes on. Exceptions that are not
 * Exception subclasses (KeyboardInterrupt) pass, as in the Python path. Every
 * call runs on the event loop's thread with the GIL held; Python code we call
 * (the RSS reader, a missed counter's naming) may run other threads, which
 * only read the counters, so each counter cell is replaced in one store.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#if defined(Py_GIL_DISABLED) || PY_VERSION_HEX < 0x030A0000
#define SUPPORTED 0
#else
#define SUPPORTED 1
#endif

#if SUPPORTED

#if defined(__GNUC__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#endif

/* Requests are counted per window of at least this long (see middleware.py). */
#define WINDOW_S 0.1
/* ...or closed after this many requests (middleware.py's _WINDOW_MAX_REQUESTS) */
#define WINDOW_MAX_REQUESTS 64
#define MAX_COUNTDOWN ((int64_t)1 << 62)
/* Counters found in the profiler's ``_counts``, by (route object, method): saves building the
 * id() int and two dict lookups per request. Entries hold their route, so its address is never
 * reused while cached; a new ``_counts`` (a new session) empties it. */
#define CACHE_SIZE 32

/* Interned keys: attribute names of the profiler, ASGI keys and message types. */
static PyObject *s_active, *s_loop, *s_heap_tags, *s_inflight, *s_counts, *s_rss_per_s, *s_read_rss,
    *s_tracing, *s_buffer, *s_buffer_cap, *s_requests_dropped, *s_first_request, *s_internal_error,
    *s_counter, *s_append, *s_close, *s_type, *s_method, *s_root_path, *s_route, *s_endpoint,
    *s_status, *s_code, *s_more_body, *s_get, *s_empty, *s_GET, *s_WS;
static PyObject *int_0, *int_1, *int_500, *int_1000;

/* The clock of time.perf_counter(), so t0 and the writer's perf_to_wall agree. */
static double
now_s(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    if (PyTime_PerfCounterRaw(&t) < 0) {
        return 0.0;
    }
    return PyTime_AsSecondsDouble(t);
#else
    return _PyTime_AsSecondsDouble(_PyTime_GetPerfCounter());
#endif
}

/* ---- RequestPath: one per middleware, holding the profiler ------------- */

typedef struct {
    PyObject_HEAD
    PyObject *profiler;
    PyObject *pdict;         /* profiler.__dict__ */
    PyObject *running_loop;  /* middleware._running_loop */
    PyObject *tag_var;       /* heapsites.TAG_VAR */
    PyObject *request_tag;   /* heap.RequestTag, or None */
    PyObject *method_codes;  /* heap.METHOD_CODES */
    PyObject *other_code;    /* METHOD_CODES["OTHER"] */
    PyObject *get_traced;    /* tracemalloc.get_traced_memory */
    PyObject *is_tracing;    /* tracemalloc.is_tracing */
    PyObject *request_kind;  /* writer.REQUEST */
    PyObject *counts_seen;   /* the session's _counts dict: the window and the cache belong to it */
    struct {
        PyObject *route, *method, *counter;
    } cache[CACHE_SIZE];
    double window_start, window_end, rss_p;
    int64_t window_n, countdown;
    uint64_t rng;
    int64_t measured;        /* requests measured so far (tests) */
} RequestPath;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    RequestPath *rp;
    PyObject *send, *scope, *method, *root_before, *status, *rss0, *tr0, *in0, *tag, *prev_tag;
    double t0;
    int done;
    int is_ws;
} Exchange;

static PyTypeObject RequestPathType;
static PyTypeObject ExchangeType;
static PyObject *ex_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

/* Hand the raised Exception to profiler._internal_error(where, exc); anything else stays raised.
 * Returns 0 when nothing is left raised. */
static int
internal_error(RequestPath *rp, const char *where)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    PyObject *w = PyUnicode_FromString(where);
    PyObject *r = NULL;
    if (w != NULL && value != NULL) {
        r = PyObject_CallMethodObjArgs(rp->profiler, s_internal_error, w, value, NULL);
    }
    Py_XDECREF(r);
    Py_XDECREF(w);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return -1;
        }
        PyErr_Clear();
    }
    return 0;
}

/* xorshift64*: a uniform double in (0, 1]. */
static double
uniform(RequestPath *rp)
{
    uint64_t x = rp->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rp->rng = x;
    return ((double)((x * 0x2545F4914F6CDD1DULL) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

/* Requests until the next measured one, for measuring each with probability p:
 * the gaps of independent trials are geometric, so one draw per measured request
 * replaces a random number per request. */
static int64_t
draw_countdown(RequestPath *rp)
{
    double p = rp->rss_p;
    if (!(p < 1.0)) {
        return 1;
    }
    if (!(p > 0.0)) {
        return MAX_COUNTDOWN;
    }
    double gap = floor(log(uniform(rp)) / log1p(-p));
    if (!(gap < (double)(MAX_COUNTDOWN - 1))) {
        return MAX_COUNTDOWN;
    }
    return (int64_t)gap + 1;
}

/* A borrowed item of a mapping (a dict in every server we know): NULL without error when absent. */
static PyObject *
borrow_key(PyObject *mapping, PyObject *key, PyObject **owned)
{
    *owned = NULL;
    if (LIKELY(PyDict_CheckExact(mapping))) {
        return PyDict_GetItemWithError(mapping, key);
    }
    PyObject *v = PyObject_GetItem(mapping, key);
    if (v == NULL && PyErr_ExceptionMatches(PyExc_KeyError)) {
        PyErr_Clear();
    }
    *owned = v;
    return v;
}

/* ``mapping.get(key, default)`` as a new reference. */
static PyObject *
get_or(PyObject *mapping, PyObject *key, PyObject *dflt)
{
    if (LIKELY(PyDict_CheckExact(mapping))) {
        PyObject *v = PyDict_GetItemWithError(mapping, key);
        if (v == NULL) {
            return PyErr_Occurred() ? NULL : Py_NewRef(dflt);
        }
        return Py_NewRef(v);
    }
    return PyObject_CallMethodObjArgs(mapping, s_get, key, dflt, NULL);
}

/* A profiler attribute: NULL with AttributeError when it is missing. */
static PyObject *
pget(RequestPath *rp, PyObject *name)
{
    PyObject *v = PyDict_GetItemWithError(rp->pdict, name);
    if (v == NULL && !PyErr_Occurred()) {
        PyErr_SetObject(PyExc_AttributeError, name);
    }
    return v;
}

static int
is_ascii(PyObject *s, const char *lit, Py_ssize_t n)
{
    return PyUnicode_CheckExact(s) && PyUnicode_IS_COMPACT_ASCII(s) && PyUnicode_GET_LENGTH(s) == n
           && memcmp(PyUnicode_DATA(s), lit, (size_t)n) == 0;
}
#define IS(s, lit) is_ascii((s), lit, (Py_ssize_t)(sizeof(lit) - 1))

/* ``value + delta`` for an int, without PyNumber_Add's dispatch when it is an exact int. */
static PyObject *
add_int(PyObject *value, long delta)
{
    if (LIKELY(PyLong_CheckExact(value))) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(value, &overflow);
        if (!overflow && v > LONG_MIN + 1 && v < LONG_MAX - 1) {
            return PyLong_FromLong(v + delta);
        }
        PyErr_Clear();
    }
    PyObject *d = PyLong_FromLong(delta);
    if (d == NULL) {
        return NULL;
    }
    PyObject *sum = PyNumber_Add(value, d);
    Py_DECREF(d);
    return sum;
}

/* ``list[i] += delta`` (an int or a float delta); exact ints and floats on their fast paths. */
static int
add_into(PyObject *list, Py_ssize_t i, PyObject *delta)
{
    PyObject *old = PyList_GET_ITEM(list, i);
    PyObject *sum;
    if (delta == int_1) {
        sum = add_int(old, 1);
    }
    else if (PyFloat_CheckExact(old) && PyFloat_CheckExact(delta)) {
        sum = PyFloat_FromDouble(PyFloat_AS_DOUBLE(old) + PyFloat_AS_DOUBLE(delta));
    }
    else {
        sum = PyNumber_Add(old, delta);
    }
    if (sum == NULL) {
        return -1;
    }
    PyList_SET_ITEM(list, i, sum);
    Py_DECREF(old);
    return 0;
}

static int
status_is_error(PyObject *status)
{
    if (LIKELY(PyLong_CheckExact(status))) {
        int overflow;
        long v = PyLong_AsLongAndOverflow(status, &overflow);
        return overflow > 0 || (overflow == 0 && v >= 500);
    }
    return PyObject_RichCompareBool(status, int_500, Py_GE);
}

static Py_ssize_t
cache_slot(PyObject *obj, PyObject *method)
{
    uintptr_t h = (uintptr_t)obj >> 4;
    if (PyUnicode_CheckExact(method)) {
        h ^= (uintptr_t)PyUnicode_GET_LENGTH(method) * 7;
    }
    return (Py_ssize_t)((h ^ (h >> 5)) & (CACHE_SIZE - 1));
}

/* The same method string: the same object, or exact str objects with the same text. */
static int
same_str(PyObject *a, PyObject *b)
{
    if (a == b) {
        return 1;
    }
    if (a == NULL || !PyUnicode_CheckExact(a) || !PyUnicode_CheckExact(b)) {
        return 0;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(a);
    return n == PyUnicode_GET_LENGTH(b) && PyUnicode_KIND(a) == PyUnicode_KIND(b)
           && memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * PyUnicode_KIND(a)) == 0;
}

static void
cache_clear(RequestPath *rp)
{
    for (int i = 0; i < CACHE_SIZE; i++) {
        Py_CLEAR(rp->cache[i].route);
        Py_CLEAR(rp->cache[i].method);
        Py_CLEAR(rp->cache[i].counter);
    }
}

static PyObject *
new_exchange(RequestPath *rp)
{
    Exchange *x = PyObject_GC_New(Exchange, &ExchangeType);
    if (x == NULL) {
        return NULL;
    }
    x->vectorcall = ex_vectorcall;
    x->rp = (RequestPath *)Py_NewRef(rp);
    x->send = x->scope = x->method = x->root_before = x->rss0 = x->tr0 = x->in0 = x->tag = x->prev_tag = NULL;
    x->status = Py_NewRef(int_0);
    x->t0 = 0.0;
    x->done = 0;
    x->is_ws = 0;
    return (PyObject *)x;
}

/* The part of enter() that may fail: 0, or -1 with an exception raised. */
static int
open_request(RequestPath *rp, Exchange *x, PyObject *scope, PyObject *scope_type, PyObject *send)
{
    PyObject *p = rp->profiler, *owned = NULL;
    PyObject *v = pget(rp, s_loop);
    if (v == NULL) {
        return -1;
    }
    if (UNLIKELY(v == Py_None)) {  /* first request of the process: learn the loop, restart after a fork */
        PyObject *loop = PyObject_CallNoArgs(rp->running_loop);
        if (loop == NULL) {
            return -1;
        }
        PyObject *r = PyObject_CallMethodOneArg(p, s_first_request, loop);
        Py_DECREF(loop);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    x->send = Py_NewRef(send);
    x->scope = Py_NewRef(scope);
    x->root_before = get_or(scope, s_root_path, s_empty);
    if (x->root_before == NULL) {
        return -1;
    }
    x->is_ws = !IS(scope_type, "http");
    x->method = x->is_ws ? Py_NewRef(s_WS) : get_or(scope, s_method, s_GET);
    if (x->method == NULL) {
        return -1;
    }
    PyObject *in = pget(rp, s_inflight);
    if (in == NULL) {
        return -1;
    }
    x->in0 = add_int(in, 1);
    if (x->in0 == NULL || PyDict_SetItem(rp->pdict, s_inflight, x->in0) < 0) {
        return -1;
    }
    double t0 = x->t0 = now_s();
    if (UNLIKELY(t0 >= rp->window_end || rp->window_n >= WINDOW_MAX_REQUESTS)) {  /* a new window: this probability keeps reads near the target rate */
        int64_t n = rp->window_n;
        double p_new = 1.0;
        if (n) {
            PyObject *per_s = pget(rp, s_rss_per_s);
            if (per_s == NULL) {
                return -1;
            }
            double rate = PyFloat_AsDouble(per_s);
            if (rate == -1.0 && PyErr_Occurred()) {
                return -1;
            }
            p_new = (t0 - rp->window_start) * rate / (double)n;
            if (!(p_new < 1.0)) {
                p_new = 1.0;
            }
        }
        rp->rss_p = p_new;
        rp->window_n = 0;
        rp->window_start = t0;
        rp->window_end = t0 + WINDOW_S;
        rp->countdown = draw_countdown(rp);
    }
    rp->window_n++;
    if (--rp->countdown <= 0) {  /* measured: RSS (and traced memory) at both ends */
        rp->countdown = draw_countdown(rp);
        rp->measured++;
        PyObject *read = pget(rp, s_read_rss);
        if (read == NULL) {
            return -1;
        }
        x->rss0 = PyObject_CallNoArgs(read);
        if (x->rss0 == NULL) {
            return -1;
        }
        PyObject *tracing = pget(rp, s_tracing);
        if (tracing == NULL) {
            return -1;
        }
        int on = PyObject_IsTrue(tracing);
        if (on < 0) {
            return -1;
        }
        if (on) {
            PyObject *pair = PyObject_CallNoArgs(rp->get_traced);
            if (pair == NULL) {
                return -1;
            }
            x->tr0 = PySequence_GetItem(pair, 0);
            Py_DECREF(pair);
            if (x->tr0 == NULL) {
                return -1;
            }
        }
    }
    /* the heap engine's tag last: nothing after it can fail and leave it set. No RequestTag
     * type means no heap engine for this profiler, ever: no lookup */
    if (rp->request_tag == Py_None) {
        return 0;
    }
    v = pget(rp, s_heap_tags);
    if (v == NULL) {
        return -1;
    }
    if (v != Py_False) {
        int on = PyObject_IsTrue(v);
        if (on < 0) {
            return -1;
        }
        if (on) {
            PyObject *code = borrow_key(rp->method_codes, x->method, &owned);
            if (code == NULL && PyErr_Occurred()) {
                return -1;
            }
            PyObject *tag = PyObject_CallFunctionObjArgs(rp->request_tag, scope, code ? code : rp->other_code,
                                                         NULL);
            Py_XDECREF(owned);
            if (tag == NULL) {
                return -1;
            }
            /* the sampled heap engine reads the route from this tag when it samples an allocation.
             * The end of the request sets the previous value back rather than calling
             * PyContextVar_Reset: a reset to "unset" deletes the variable from the context,
             * and an allocation sampled inside that deletion re-caches the old tag in the
             * variable, a borrowed pointer nothing invalidates, so the next read after the tag
             * is freed would return freed memory. A set re-caches its own value last. */
            PyObject *prev = NULL;
            if (PyContextVar_Get(rp->tag_var, Py_None, &prev) < 0) {
                Py_DECREF(tag);
                return -1;
            }
            PyObject *token = PyContextVar_Set(rp->tag_var, tag);
            if (token == NULL) {
                Py_DECREF(prev);
                Py_DECREF(tag);
                return -1;
            }
            Py_DECREF(token);
            x->tag = tag;
            x->prev_tag = prev;
        }
    }
    return 0;
}

/* enter(scope, send): the request's Exchange, or None when it passes through unwatched. */
static PyObject *
rp_enter(RequestPath *rp, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "enter(scope, send)");
        return NULL;
    }
    PyObject *scope = args[0], *send = args[1], *owned = NULL;
    PyObject *scope_type = borrow_key(scope, s_type, &owned);
    if (scope_type == NULL) {
        if (PyErr_Occurred()) {  /* the Python path raises here too, before anything is counted */
            return NULL;
        }
        PyErr_SetObject(PyExc_KeyError, s_type);
        return NULL;
    }
    int watched = IS(scope_type, "http") || IS(scope_type, "websocket");
    if (watched) {
        PyObject *active = PyDict_GetItemWithError(rp->pdict, s_active);
        watched = active == Py_True || (active != NULL && active != Py_False && PyObject_IsTrue(active) == 1);
        if (PyErr_Occurred() && internal_error(rp, "request start") < 0) {
            Py_XDECREF(owned);
            return NULL;
        }
    }
    if (!watched) {
        Py_XDECREF(owned);
        Py_RETURN_NONE;
    }
    Exchange *x = (Exchange *)new_exchange(rp);
    if (x == NULL) {
        Py_XDECREF(owned);
        return internal_error(rp, "request start") < 0 ? NULL : Py_NewRef(Py_None);
    }
    int rc = open_request(rp, x, scope, scope_type, send);
    Py_XDECREF(owned);
    if (rc < 0) {
        /* undo the in-flight count if it was taken, then pass the request through unwatched */
        if (x->in0 != NULL) {
            PyObject *exc_type, *exc, *tb;
            PyErr_Fetch(&exc_type, &exc, &tb);
            if (PyDict_GetItemWithError(rp->pdict, s_inflight) == x->in0) {
                PyObject *back = PyNumber_Subtract(x->in0, int_1);
                if (back == NULL || PyDict_SetItem(rp->pdict, s_inflight, back) < 0) {
                    PyErr_Clear();
                }
                Py_XDECREF(back);
            }
            else {
                PyErr_Clear();
            }
            PyErr_Restore(exc_type, exc, tb);
        }
        x->done = 1;
        Py_DECREF(x);
        return internal_error(rp, "request start") < 0 ? NULL : Py_NewRef(Py_None);
    }
    return (PyObject *)x;
}

static PyObject *
rp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"profiler", "running_loop", "tag_var", "request_tag", "method_codes", "other_code",
                             "get_traced", "is_tracing", "request_kind", NULL};
    PyObject *profiler, *running_loop, *tag_var, *request_tag, *method_codes, *other_code, *get_traced,
        *is_tracing, *request_kind;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOOOO", kwlist, &profiler, &running_loop, &tag_var,
                                     &request_tag, &method_codes, &other_code, &get_traced, &is_tracing,
                                     &request_kind)) {
        return NULL;
    }
    if (!PyContextVar_CheckExact(tag_var)) {
        PyErr_Format(PyExc_TypeError, "tag_var must be a contextvars.ContextVar, got %.100s",
                     Py_TYPE(tag_var)->tp_name);
        return NULL;
    }
    PyObject *pdict = PyObject_GenericGetDict(profiler, NULL);
    if (pdict == NULL) {
        return NULL;
    }
    if (!PyDict_CheckExact(pdict)) {
        Py_DECREF(pdict);
        PyErr_SetString(PyExc_TypeError, "the profiler's __dict__ must be a dict");
        return NULL;
    }
    RequestPath *rp = PyObject_GC_New(RequestPath, type);
    if (rp == NULL) {
        Py_DECREF(pdict);
        return NULL;
    }
    rp->profiler = Py_NewRef(profiler);
    rp->pdict = pdict;
    rp->running_loop = Py_NewRef(running_loop);
    rp->tag_var = Py_NewRef(tag_var);
    rp->request_tag = Py_NewRef(request_tag);
    rp->method_codes = Py_NewRef(method_codes);
    rp->other_code = Py_NewRef(other_code);
    rp->get_traced = Py_NewRef(get_traced);
    rp->is_tracing = Py_NewRef(is_tracing);
    rp->request_kind = Py_NewRef(request_kind);
    rp->counts_seen = NULL;
    memset(rp->cache, 0, sizeof(rp->cache));
    rp->window_start = rp->window_end = 0.0;
    rp->window_n = 0;
    rp->rss_p = 1.0;
    rp->countdown = 1;
    rp->measured = 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    rp->rng = ((uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid()
              ^ (uint64_t)(uintptr_t)rp;
    if (rp->rng == 0) {
        rp->rng = 0x9E3779B97F4A7C15ULL;
    }
    PyObject_GC_Track(rp);
    return (PyObject *)rp;
}

static int
rp_traverse(RequestPath *rp, visitproc visit, void *arg)
{
    Py_VISIT(rp->profiler);
    Py_VISIT(rp->pdict);
    Py_VISIT(rp->running_loop);
    Py_VISIT(rp->tag_var);
    Py_VISIT(rp->request_tag);
    Py_VISIT(rp->method_codes);
    Py_VISIT(rp->other_code);
    Py_VISIT(rp->get_traced);
    Py_VISIT(rp->is_tracing);
    Py_VISIT(rp->request_kind);
    Py_VISIT(rp->counts_seen);
    for (int i = 0; i < CACHE_SIZE; i++) {
        Py_VISIT(rp->cache[i].route);
        Py_VISIT(rp->cache[i].method);
        Py_VISIT(rp->cache[i].counter);
    }
    return 0;
}

static int
rp_clear(RequestPath *rp)
{
    Py_CLEAR(rp->profiler);
    Py_CLEAR(rp->pdict);
    Py_CLEAR(rp->running_loop);
    Py_CLEAR(rp->tag_var);
    Py_CLEAR(rp->request_tag);
    Py_CLEAR(rp->method_codes);
    Py_CLEAR(rp->other_code);
    Py_CLEAR(rp->get_traced);
    Py_CLEAR(rp->is_tracing);
    Py_CLEAR(rp->request_kind);
    Py_CLEAR(rp->counts_seen);
    cache_clear(rp);
    return 0;
}

static void
rp_dealloc(RequestPath *rp)
{
    PyObject_GC_UnTrack(rp);
    rp_clear(rp);
    PyObject_GC_Del(rp);
}

static PyObject *
rp_get_window_end(RequestPath *rp, void *closure)
{
    return PyFloat_FromDouble(rp->window_end);
}

static int
rp_set_window_end(RequestPath *rp, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "window_end cannot be deleted");
        return -1;
    }
    double v = PyFloat_AsDouble(value);
    if (v == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    rp->window_end = v;
    return 0;
}

static PyObject *
rp_get_rss_p(RequestPath *rp, void *closure)
{
    return PyFloat_FromDouble(rp->rss_p);
}

static PyObject *
rp_get_measured(RequestPath *rp, void *closure)
{
    return PyLong_FromLongLong(rp->measured);
}

static PyGetSetDef rp_getset[] = {
    {"window_end", (getter)rp_get_window_end, (setter)rp_set_window_end,
     "perf_counter() time the current RSS-sampling window closes (benchmarks pin it open)", NULL},
    {"rss_p", (getter)rp_get_rss_p, NULL, "the current window's probability of measuring a request", NULL},
    {"measured", (getter)rp_get_measured, NULL, "requests chosen for an RSS reading so far", NULL},
    {NULL},
};

static PyMethodDef rp_methods[] = {
    {"enter", (PyCFunction)(void (*)(void))rp_enter, METH_FASTCALL,
     "enter(scope, send): the request's Exchange (the app's send), or None to pass it through unwatched"},
    {NULL},
};

static PyTypeObject RequestPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "leakyspanner.capture._reqpath.RequestPath",
    .tp_basicsize = sizeof(RequestPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "RequestPath(profiler, running_loop, tag_var, request_tag, method_codes, other_code, get_traced, "
              "is_tracing, request_kind): the request path of one middleware",
    .tp_new = rp_new,
    .tp_dealloc = (destructor)rp_dealloc,
    .tp_traverse = (traverseproc)rp_traverse,
    .tp_clear = (inquiry)rp_clear,
    .tp_methods = rp_methods,
    .tp_getset = rp_getset,
};

/* ---- Exchange: one request in flight, the app's send ------------------- */

/* Look at a message on its way to the server; -1 only for a non-Exception error. */
static int
watch(Exchange *x, PyObject *message);

static int finish(Exchange *x);

static PyObject *
ex_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Exchange *x = (Exchange *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (LIKELY(nargs == 1 && kwnames == NULL) && watch(x, args[0]) < 0) {
        return NULL;
    }
    /* hand back the server's own awaitable: a malformed message reaches the server untouched */
    return PyObject_Vectorcall(x->send, args, nargsf, kwnames);
}

static int
watch(Exchange *x, PyObject *message)
{
    PyObject *owned = NULL, *owned2 = NULL;
    PyObject *mtype = borrow_key(message, s_type, &owned);
    if (mtype == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetObject(PyExc_KeyError, s_type);
        }
        goto error;
    }
    if (IS(mtype, "http.response.body")) {
        /* a stream's chunks but the last say more_body: one lookup and they pass */
        if (!x->done) {
            PyObject *more = borrow_key(message, s_more_body, &owned2);
            int more_body = 0;
            if (more == NULL) {
                if (PyErr_Occurred()) {
                    goto error;
                }
            }
            else if ((more_body = PyObject_IsTrue(more)) < 0) {
                goto error;
            }
            Py_CLEAR(owned2);
            if (!more_body && finish(x) < 0) {
                goto error_done;
            }
        }
        else if (!PyDict_CheckExact(message)) {
            /* the Python path reads more_body before done: the same lookups on a foreign mapping */
            PyObject *more = PyObject_CallMethodObjArgs(message, s_get, s_more_body, Py_False, NULL);
            if (more == NULL) {
                goto error;
            }
            int truth = PyObject_IsTrue(more);
            Py_DECREF(more);
            if (truth < 0) {
                goto error;
            }
        }
    }
    else if (IS(mtype, "http.response.start") || IS(mtype, "websocket.http.response.start")) {
        PyObject *status = borrow_key(message, s_status, &owned2);
        if (status == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, s_status);
            }
            goto error;
        }
        Py_SETREF(x->status, Py_NewRef(status));
        Py_CLEAR(owned2);
    }
    else if (IS(mtype, "websocket.close")) {
        PyObject *code = get_or(message, s_code, int_1000);
        if (code == NULL) {
            goto error;
        }
        Py_SETREF(x->status, code);
    }
    Py_XDECREF(owned);
    return 0;
error:
    Py_XDECREF(owned2);
    Py_XDECREF(owned);
    return internal_error(x->rp, "send");
error_done:
    Py_XDECREF(owned);
    return -1;
}

/* Count the request on its endpoint's counter; a measured one also becomes a record.
 * -1 only when a non-Exception error is left raised. */
static int
finish(Exchange *x)
{
    RequestPath *rp = x->rp;
    PyObject *p = rp->profiler;
    PyObject *rss1 = NULL, *in1 = NULL, *route = NULL, *endpoint = NULL, *key = NULL, *counter = NULL,
             *dur = NULL, *tr1 = NULL, *record = NULL, *r = NULL;
    x->done = 1;
    double t1 = now_s();
    if (x->rss0 != NULL) {
        PyObject *read = pget(rp, s_read_rss);
        if (read == NULL || (rss1 = PyObject_CallNoArgs(read)) == NULL) {
            goto error;
        }
    }
    in1 = pget(rp, s_inflight);
    if (in1 == NULL) {
        goto error;
    }
    Py_INCREF(in1);
    {
        PyObject *less = add_int(in1, -1);
        if (less == NULL) {
            goto error;
        }
        int rc = PyDict_SetItem(rp->pdict, s_inflight, less);
        Py_DECREF(less);
        if (rc < 0) {
            goto error;
        }
    }
    PyObject *scope = x->scope;
    route = get_or(scope, s_route, Py_None);
    if (route == NULL) {
        goto error;
    }
    if (route == Py_None) {
        endpoint = get_or(scope, s_endpoint, Py_None);
        if (endpoint == NULL) {
            goto error;
        }
    }
    PyObject *obj = route != Py_None ? route : endpoint;  /* what id() keys the counter by */
    PyObject *counts = pget(rp, s_counts);
    if (counts == NULL) {
        goto error;
    }
    if (UNLIKELY(counts != rp->counts_seen)) {
        /* a new session (not the first one seen: its window is already open): the cache goes,
         * and the next request opens a window that measures every request */
        cache_clear(rp);
        if (rp->counts_seen != NULL) {
            rp->window_start = rp->window_end = 0.0;
            rp->window_n = 0;
            rp->rss_p = 1.0;
            rp->countdown = 1;
        }
        Py_XSETREF(rp->counts_seen, Py_NewRef(counts));
    }
    Py_ssize_t slot = cache_slot(obj, x->method);
    if (rp->cache[slot].route == obj && same_str(rp->cache[slot].method, x->method)) {
        counter = Py_NewRef(rp->cache[slot].counter);
    }
    else {
        key = PyLong_FromVoidPtr(obj);
        if (key == NULL) {
            goto error;
        }
        PyObject *by_method = PyDict_CheckExact(counts) ? PyDict_GetItemWithError(counts, key) : NULL;
        if (by_method != NULL && PyDict_CheckExact(by_method)) {
            counter = PyDict_GetItemWithError(by_method, x->method);
            if (counter != NULL && PyList_CheckExact(counter)) {
                Py_XSETREF(rp->cache[slot].route, Py_NewRef(obj));
                Py_XSETREF(rp->cache[slot].method, Py_NewRef(x->method));
                Py_XSETREF(rp->cache[slot].counter, Py_NewRef(counter));
            }
            Py_XINCREF(counter);
        }
        if (PyErr_Occurred()) {
            goto error;
        }
    }
    if (counter == NULL) {  /* not on the fast path yet (or never: a junk method, a dynamic route) */
        if (endpoint == NULL && (endpoint = get_or(scope, s_endpoint, Py_None)) == NULL) {
            goto error;
        }
        PyObject *root_after = get_or(scope, s_root_path, s_empty);
        if (root_after == NULL) {
            goto error;
        }
        PyObject *cargs[] = {p, key, route, endpoint, x->method, root_after, x->root_before};
        counter = PyObject_VectorcallMethod(s_counter, cargs, 7 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(root_after);
        if (counter == NULL) {
            goto error;
        }
    }
    if (!PyList_CheckExact(counter) || PyList_GET_SIZE(counter) < 5) {
        PyErr_SetString(PyExc_TypeError, "an endpoint counter must be a list of 5");
        goto error;
    }
    double duration = t1 - x->t0;
    dur = PyFloat_FromDouble(duration);
    if (dur == NULL || add_into(counter, 0, int_1) < 0) {
        goto error;
    }
    int err = status_is_error(x->status);
    if (err < 0 || (err && add_into(counter, 1, int_1) < 0) || add_into(counter, 2, dur) < 0) {
        goto error;
    }
    PyObject *dmax = PyList_GET_ITEM(counter, 3);
    if (LIKELY(PyFloat_CheckExact(dmax))) {
        if (duration > PyFloat_AS_DOUBLE(dmax)) {
            PyList_SET_ITEM(counter, 3, Py_NewRef(dur));
            Py_DECREF(dmax);
        }
    }
    else {
        int gt = PyObject_RichCompareBool(dur, dmax, Py_GT);
        if (gt < 0) {
            goto error;
        }
        if (gt && PyList_SetItem(counter, 3, Py_NewRef(dur)) < 0) {
            goto error;
        }
    }
    if (x->tag != NULL) {  /* allocations from now on (spawned tasks) keep the route */
        if (key == NULL && (key = PyLong_FromVoidPtr(obj)) == NULL) {
            goto error;
        }
        PyObject *tag_key = obj != Py_None ? key : int_0;
        r = PyObject_CallMethodOneArg(x->tag, s_close, tag_key);
        if (r == NULL) {
            goto error;
        }
        Py_CLEAR(r);
    }
    if (x->rss0 != NULL) {
        PyObject *tr0 = x->tr0 != NULL ? x->tr0 : Py_None;
        if (x->tr0 != NULL) {
            r = PyObject_CallNoArgs(rp->is_tracing);
            if (r == NULL) {
                goto error;
            }
            int on = PyObject_IsTrue(r);
            Py_CLEAR(r);
            if (on < 0) {
                goto error;
            }
            if (on) {
                PyObject *pair = PyObject_CallNoArgs(rp->get_traced);
                if (pair == NULL) {
                    goto error;
                }
                tr1 = PySequence_GetItem(pair, 0);
                Py_DECREF(pair);
                if (tr1 == NULL) {
                    goto error;
                }
            }
        }
        PyObject *buffer = pget(rp, s_buffer);
        PyObject *cap = buffer ? pget(rp, s_buffer_cap) : NULL;
        if (cap == NULL) {
            goto error;
        }
        Py_ssize_t size = PyObject_Size(buffer);
        Py_ssize_t limit = PyLong_AsSsize_t(cap);
        if (size < 0 || (limit == -1 && PyErr_Occurred())) {
            goto error;
        }
        if (size < limit) {
            /* plain values and the (method, route) tuple of strings: untracked by the first
             * young collection, so records waiting for the writer never reach the old generations */
            PyObject *t0 = PyFloat_FromDouble(x->t0);
            if (t0 == NULL || (record = PyTuple_New(11)) == NULL) {
                Py_XDECREF(t0);
                goto error;
            }
            PyObject *items[11] = {rp->request_kind, t0, dur, PyList_GET_ITEM(counter, 4), x->status, x->rss0,
                                   rss1, tr0, tr1 != NULL ? tr1 : Py_None, x->in0, in1};
            for (int i = 0; i < 11; i++) {
                PyTuple_SET_ITEM(record, i, i == 1 ? items[i] : Py_NewRef(items[i]));
            }
            r = PyObject_CallMethodOneArg(buffer, s_append, record);
            if (r == NULL) {
                goto error;
            }
            Py_CLEAR(r);
        }
        else {
            PyObject *dropped = pget(rp, s_requests_dropped);
            PyObject *more = dropped ? PyNumber_Add(dropped, int_1) : NULL;
            if (more == NULL) {
                goto error;
            }
            int rc = PyDict_SetItem(rp->pdict, s_requests_dropped, more);
            Py_DECREF(more);
            if (rc < 0) {
                goto error;
            }
        }
    }
    Py_DECREF(in1);
    Py_DECREF(route);
    Py_XDECREF(endpoint);
    Py_XDECREF(key);
    Py_DECREF(counter);
    Py_DECREF(dur);
    Py_XDECREF(rss1);
    Py_XDECREF(tr1);
    Py_XDECREF(record);
    return 0;
error:
    Py_XDECREF(r);
    Py_XDECREF(rss1);
    Py_XDECREF(in1);
    Py_XDECREF(route);
    Py_XDECREF(endpoint);
    Py_XDECREF(key);
    Py_XDECREF(counter);
    Py_XDECREF(dur);
    Py_XDECREF(tr1);
    Py_XDECREF(record);
    return internal_error(rp, "request end");
}

static int
status_is_zero(PyObject *status)
{
    if (status == int_0) {
        return 1;
    }
    return PyObject_RichCompareBool(status, int_0, Py_EQ);
}

/* Drop the heap engine's tag from the context; a context the app switched under us drops it anyway. */
static int
reset_tag(Exchange *x)
{
    PyObject *prev = x->prev_tag;
    if (prev == NULL) {
        return 0;
    }
    x->prev_tag = NULL;
    PyObject *token = PyContextVar_Set(x->rp->tag_var, prev);
    Py_DECREF(prev);
    Py_XDECREF(token);
    if (token == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return -1;
        }
        PyErr_Clear();
    }
    return 0;
}

/* close(): the app returned; count the request unless its last body message already did. */
static PyObject *
ex_close(Exchange *x, PyObject *Py_UNUSED(ignored))
{
    if (reset_tag(x) < 0) {
        return NULL;
    }
    if (!x->done) {
        if (x->is_ws) {
            int zero = status_is_zero(x->status);
            if (zero < 0 && internal_error(x->rp, "request end") < 0) {
                return NULL;
            }
            if (zero > 0) {
                Py_SETREF(x->status, Py_NewRef(int_1000));
            }
        }
        if (finish(x) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* fail(): the app raised (the caller re-raises it): a request with no status yet counts as a 500. */
static PyObject *
ex_fail(Exchange *x, PyObject *Py_UNUSED(ignored))
{
    int zero = status_is_zero(x->status);
    if (zero < 0 && internal_error(x->rp, "request end") < 0) {
        return NULL;
    }
    if (zero > 0) {
        Py_SETREF(x->status, Py_NewRef(int_500));
    }
    if (!x->done && finish(x) < 0) {
        return NULL;
    }
    if (reset_tag(x) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static int
ex_traverse(Exchange *x, visitproc visit, void *arg)
{
    Py_VISIT(x->rp);
    Py_VISIT(x->send);
    Py_VISIT(x->scope);
    Py_VISIT(x->method);
    Py_VISIT(x->root_before);
    Py_VISIT(x->status);
    Py_VISIT(x->rss0);
    Py_VISIT(x->tr0);
    Py_VISIT(x->in0);
    Py_VISIT(x->tag);
    Py_VISIT(x->prev_tag);
    return 0;
}

static int
ex_clear(Exchange *x)
{
    Py_CLEAR(x->rp);
    Py_CLEAR(x->send);
    Py_CLEAR(x->scope);
    Py_CLEAR(x->method);
    Py_CLEAR(x->root_before);
    Py_CLEAR(x->status);
    Py_CLEAR(x->rss0);
    Py_CLEAR(x->tr0);
    Py_CLEAR(x->in0);
    Py_CLEAR(x->tag);
    Py_CLEAR(x->prev_tag);
    return 0;
}

static void
ex_dealloc(Exchange *x)
{
    PyObject_GC_UnTrack(x);
    ex_clear(x);
    PyObject_GC_Del(x);
}

static PyObject *
ex_get_status(Exchange *x, void *closure)
{
    return Py_NewRef(x->status);
}

static PyObject *
ex_get_done(Exchange *x, void *closure)
{
    return PyBool_FromLong(x->done);
}

static PyObject *
ex_get_measured(Exchange *x, void *closure)
{
    return PyBool_FromLong(x->rss0 != NULL);
}

static PyGetSetDef ex_getset[] = {
    {"status", (getter)ex_get_status, NULL, "the response status (or websocket close code) seen so far", NULL},
    {"done", (getter)ex_get_done, NULL, "whether the request has been counted", NULL},
    {"measured", (getter)ex_get_measured, NULL, "whether RSS was read at the request's start", NULL},
    {NULL},
};

static PyMethodDef ex_methods[] = {
    {"close", (PyCFunction)ex_close, METH_NOARGS, "the app returned: count the request if not yet counted"},
    {"fail", (PyCFunction)ex_fail, METH_NOARGS, "the app raised: count the request (a 500 if no status was sent)"},
    {NULL},
};

static PyTypeObject ExchangeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "leakyspanner.capture._reqpath.Exchange",
    .tp_basicsize = sizeof(Exchange),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "One request in flight: the app's send, watching the messages go by",
    .tp_vectorcall_offset = offsetof(Exchange, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)ex_dealloc,
    .tp_traverse = (traverseproc)ex_traverse,
    .tp_clear = (inquiry)ex_clear,
    .tp_methods = ex_methods,
    .tp_getset = ex_getset,
};

static int
intern_all(void)
{
#define INTERN(var, text)                                      \
    if ((var = PyUnicode_InternFromString(text)) == NULL) {    \
        return -1;                                             \
    }
    INTERN(s_active, "_active");
    INTERN(s_loop, "_loop");
    INTERN(s_heap_tags, "_heap_tags");
    INTERN(s_inflight, "_inflight");
    INTERN(s_counts, "_counts");
    INTERN(s_rss_per_s, "_rss_per_s");
    INTERN(s_read_rss, "_read_rss");
    INTERN(s_tracing, "_tracing");
    INTERN(s_buffer, "_buffer");
    INTERN(s_buffer_cap, "_buffer_cap");
    INTERN(s_requests_dropped, "requests_dropped");
    INTERN(s_first_request, "_first_request");
    INTERN(s_internal_error, "_internal_error");
    INTERN(s_counter, "_counter");
    INTERN(s_append, "append");
    INTERN(s_close, "close");
    INTERN(s_type, "type");
    INTERN(s_method, "method");
    INTERN(s_root_path, "root_path");
    INTERN(s_route, "route");
    INTERN(s_endpoint, "endpoint");
    INTERN(s_status, "status");
    INTERN(s_code, "code");
    INTERN(s_more_body, "more_body");
    INTERN(s_get, "get");
    INTERN(s_empty, "");
    INTERN(s_GET, "GET");
    INTERN(s_WS, "WS");
#undef INTERN
    if ((int_0 = PyLong_FromLong(0)) == NULL || (int_1 = PyLong_FromLong(1)) == NULL
        || (int_500 = PyLong_FromLong(500)) == NULL || (int_1000 = PyLong_FromLong(1000)) == NULL) {
        return -1;
    }
    return 0;
}

#endif /* SUPPORTED */

static struct PyModuleDef reqpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "leakyspanner.capture._reqpath",
    .m_doc = "The middleware's per-request bookkeeping in C (the pure-Python path in middleware.py is the fallback).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__reqpath(void)
{
#if !SUPPORTED
    PyErr_SetString(PyExc_ImportError,
                    "leakyspanner.capture._reqpath supports CPython 3.10+ with the GIL; using the Python request path");
    return NULL;
#else
    if (intern_all() < 0 || PyType_Ready(&RequestPathType) < 0 || PyType_Ready(&ExchangeType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&reqpath_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "RequestPath", (PyObject *)&RequestPathType) < 0
        || PyModule_AddObjectRef(m, "Exchange", (PyObject *)&ExchangeType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
#endif
}
