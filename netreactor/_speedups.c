/* netreactor._speedups: C twins of the per-frame pure functions.
 *
 * Optional: netreactor runs without it (netreactor/speedups.py says which path
 * is active). Every function here has a pure-Python original that defines the
 * behaviour; differential tests (tests/test_speedups.py) feed both the same
 * streams, splits, parameters and corrupt input and require the same frames,
 * positions, errors and messages. Error messages are never built here: the
 * Python side passes the callables that build its exceptions, so there is one
 * text for both paths.
 *
 * Built against the stable ABI (Py_LIMITED_API 3.10): one abi3 build serves
 * every CPython from 3.10. The limited API has no buffer protocol before 3.11,
 * so input that is not bytes is copied to bytes first (as the Python code does).
 *
 * Memory rules: no pointer into a caller's object survives a call (the unfinished
 * tail of a stream is copied into the decoder's own buffer); a decoder's buffer is
 * freed when it empties, so an idle decoder holds nothing.
 */

#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Bump with any change of the interface that the Python modules rely on
 * (netreactor/speedups.py refuses a build whose number differs). */
#define API_VERSION 1

/* ------------------------------------------------------------------------ */
/* Shared helpers                                                           */
/* ------------------------------------------------------------------------ */

/* The bytes of `data`: a pointer into it when it is bytes, else into a bytes
 * copy returned in *keep (the caller releases it). */
static int
view_bytes(PyObject *data, const char **p, Py_ssize_t *n, PyObject **keep)
{
    char *s;
    *keep = NULL;
    if (!PyBytes_CheckExact(data)) {
        data = PyObject_Bytes(data);
        if (data == NULL)
            return -1;
        *keep = data;
    }
    if (PyBytes_AsStringAndSize(data, &s, n) < 0) {
        Py_CLEAR(*keep);
        return -1;
    }
    *p = s;
    return 0;
}

/* The unfinished tail of a stream, owned by a decoder. */
typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Tail;

static int
tail_append(Tail *t, const char *p, Py_ssize_t n)
{
    if (n <= 0)
        return 0;
    if (t->len + n > t->cap) {
        Py_ssize_t cap = t->cap ? t->cap : 64;
        char *grown;
        while (cap < t->len + n) {
            if (cap > PY_SSIZE_T_MAX / 2) {
                cap = t->len + n;
                break;
            }
            cap *= 2;
        }
        grown = (char *)PyMem_Realloc(t->data, (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        t->data = grown;
        t->cap = cap;
    }
    memcpy(t->data + t->len, p, (size_t)n);
    t->len += n;
    return 0;
}

static void
tail_free(Tail *t)
{
    PyMem_Free(t->data);
    t->data = NULL;
    t->len = t->cap = 0;
}

/* Raise `exc` (an exception instance). */
static void
raise_instance(PyObject *exc)
{
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
}

static int
as_ssize(PyObject *o, Py_ssize_t *out, const char *name)
{
    Py_ssize_t v = PyLong_AsSsize_t(o);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s out of range", name);
        return -1;
    }
    *out = v;
    return 0;
}

/* Allocating a frame can run the garbage collector, and so a finalizer, which
 * could feed the same decoder while its buffer is being read: refuse that. */
static int
feed_enter(int *busy)
{
    if (*busy) {
        PyErr_SetString(PyExc_RuntimeError, "decoder.feed() called again from inside feed()");
        return -1;
    }
    *busy = 1;
    return 0;
}

/* Generic dealloc/traverse plumbing for the heap types below. */
static void
free_instance(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    tp_free(self);
    Py_DECREF(tp);
}

/* ------------------------------------------------------------------------ */
/* LengthFieldDecoder: netreactor.codec._LengthFieldDecoder                 */
/* ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    Py_ssize_t off;       /* length_field_offset */
    int lfl;              /* length_field_length: 1, 2, 3, 4 or 8 */
    int big;              /* big-endian field */
    long long adj;        /* frame length = field value + adj */
    uint64_t lo, hi;      /* accepted field values: lo <= value <= hi */
    Py_ssize_t hend;      /* end of the length field */
    Py_ssize_t strip;     /* initial_bytes_to_strip */
    Py_ssize_t need;      /* bytes the tail must reach before a frame may complete */
    Tail tail;
    PyObject *error_for;  /* value, frames -> FrameError (the Python messages) */
    PyObject *failed;     /* error -> raises "decoder failed earlier" */
    PyObject *error;      /* the error that failed this decoder, or NULL */
    int busy;             /* inside feed (see feed_enter) */
} LFDecoder;

static inline uint64_t
read_field(const unsigned char *p, int lfl, int big)
{
    uint64_t v = 0;
    int i;
    if (big) {
        switch (lfl) {
        case 1: return p[0];
        case 2: return ((uint64_t)p[0] << 8) | p[1];
        case 4: return ((uint64_t)p[0] << 24) | ((uint64_t)p[1] << 16) | ((uint64_t)p[2] << 8) | p[3];
        default:
            for (i = 0; i < lfl; i++)
                v = (v << 8) | p[i];
            return v;
        }
    }
    for (i = lfl - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Fail the decoder with the Python error for field `value`; always returns -1. */
static int
lf_fail(LFDecoder *self, uint64_t value, PyObject *frames)
{
    PyObject *v = PyLong_FromUnsignedLongLong(value), *exc;
    if (v == NULL)
        return -1;
    exc = PyObject_CallFunctionObjArgs(self->error_for, v, frames, NULL);
    Py_DECREF(v);
    tail_free(&self->tail);
    if (exc == NULL)
        return -1;
    Py_XDECREF(self->error);
    self->error = exc; /* the decoder's reference */
    raise_instance(exc);
    return -1;
}

static PyObject *lf_feed_body(LFDecoder *self, PyObject *data);

static PyObject *
lf_feed(LFDecoder *self, PyObject *data)
{
    PyObject *r;
    if (feed_enter(&self->busy) < 0)
        return NULL;
    r = lf_feed_body(self, data);
    self->busy = 0;
    return r;
}

static PyObject *
lf_feed_body(LFDecoder *self, PyObject *data)
{
    const char *p;
    Py_ssize_t n, pos = 0, q, count = 0, k;
    PyObject *keep, *frames = NULL, *first = NULL, *frame;
    const Py_ssize_t off = self->off, hend = self->hend, strip = self->strip;
    const int lfl = self->lfl, big = self->big;
    const uint64_t lo = self->lo, hi = self->hi;
    const long long adj = self->adj;
    uint64_t value = 0;
    int bad = 0;

    if (self->error != NULL)
        return PyObject_CallFunctionObjArgs(self->failed, self->error, NULL);
    if (view_bytes(data, &p, &n, &keep) < 0)
        return NULL;

    /* Finish the frame held in the tail: take only the bytes it still needs,
     * then decode the rest straight from the caller's bytes. */
    while (self->tail.len) {
        Py_ssize_t take = self->need - self->tail.len;
        long long flen;
        if (take > n - pos)
            take = n - pos;
        if (tail_append(&self->tail, p + pos, take) < 0)
            goto error;
        pos += take;
        if (self->tail.len < self->need) {
            frames = PyList_New(0);
            goto done;
        }
        value = read_field((const unsigned char *)self->tail.data + off, lfl, big);
        if (value < lo || value > hi) {
            frames = PyList_New(0);
            if (frames != NULL)
                lf_fail(self, value, frames);
            goto error;
        }
        flen = (long long)value + adj;
        if (flen > self->tail.len) {
            self->need = (Py_ssize_t)flen;
            continue;
        }
        first = PyBytes_FromStringAndSize(self->tail.data + strip, (Py_ssize_t)flen - strip);
        if (first == NULL)
            goto error;
        tail_free(&self->tail);
    }

    /* The frames complete in the caller's bytes, counted first so that the
     * list is made at its size (no growing, no appends). */
    self->need = hend;
    for (q = pos; q + hend <= n; count++) {
        long long flen;
        value = read_field((const unsigned char *)p + q + off, lfl, big);
        if (value < lo || value > hi) {
            bad = 1;
            break;
        }
        flen = (long long)value + adj;
        if (flen > n - q) {
            self->need = (Py_ssize_t)flen;
            break;
        }
        q += (Py_ssize_t)flen;
    }
    frames = PyList_New((first != NULL) + count);
    if (frames == NULL)
        goto error;
    k = 0;
    if (first != NULL) {
        PyList_SetItem(frames, k++, first);
        first = NULL;
    }
    /* The hot loop: one field read and one copy per frame (checked above). */
    for (; pos < q; k++) {
        Py_ssize_t flen = (Py_ssize_t)((long long)read_field((const unsigned char *)p + pos + off, lfl, big) + adj);
        frame = PyBytes_FromStringAndSize(p + pos + strip, flen - strip);
        if (frame == NULL)
            goto error;
        PyList_SetItem(frames, k, frame);
        pos += flen;
    }
    if (bad) {
        lf_fail(self, value, frames);
        goto error;
    }
    if (pos < n && tail_append(&self->tail, p + pos, n - pos) < 0)
        goto error;
done:
    Py_XDECREF(keep);
    return frames;
error:
    Py_XDECREF(first);
    Py_XDECREF(frames);
    Py_XDECREF(keep);
    return NULL;
}

static PyObject *
lf_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* (offset, length, big, adj, lo, hi, strip, error_for, failed), checked
     * by netreactor.codec, which alone constructs these. */
    Py_ssize_t off, strip;
    int lfl, big;
    long long adj;
    unsigned long long lo, hi;
    PyObject *error_for, *failed;
    LFDecoder *self;
    allocfunc tp_alloc;

    if (kwds != NULL && PyDict_Size(kwds)) {
        PyErr_SetString(PyExc_TypeError, "LengthFieldDecoder takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "nipLKKnOO:LengthFieldDecoder", &off, &lfl, &big, &adj, &lo, &hi,
                          &strip, &error_for, &failed))
        return NULL;
    if (off < 0 || strip < 0 || (lfl != 1 && lfl != 2 && lfl != 3 && lfl != 4 && lfl != 8) ||
        off > ((Py_ssize_t)1 << 61) || strip > ((Py_ssize_t)1 << 61) || hi > ((uint64_t)1 << 62) ||
        adj > ((long long)1 << 61) || adj < -((long long)1 << 61)) {
        PyErr_SetString(PyExc_ValueError, "LengthFieldDecoder: parameters out of range");
        return NULL;
    }
    tp_alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    self = (LFDecoder *)tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->off = off;
    self->lfl = lfl;
    self->big = big;
    self->adj = adj;
    self->lo = lo;
    self->hi = hi;
    self->strip = strip;
    self->hend = off + lfl;
    self->need = self->hend;
    Py_INCREF(error_for);
    self->error_for = error_for;
    Py_INCREF(failed);
    self->failed = failed;
    return (PyObject *)self;
}

static int
lf_traverse(LFDecoder *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->error_for);
    Py_VISIT(self->failed);
    Py_VISIT(self->error);
    return 0;
}

static int
lf_clear(LFDecoder *self)
{
    Py_CLEAR(self->error_for);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->error);
    return 0;
}

static void
lf_dealloc(LFDecoder *self)
{
    PyObject_GC_UnTrack(self);
    lf_clear(self);
    tail_free(&self->tail);
    free_instance((PyObject *)self);
}

static PyObject *
lf_buffered(LFDecoder *self, void *closure)
{
    return PyLong_FromSsize_t(self->tail.len);
}

static PyMethodDef lf_methods[] = {
    {"feed", (PyCFunction)lf_feed, METH_O, "Add data to the stream; return the frames completed by it."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef lf_getset[] = {
    {"buffered", (getter)lf_buffered, NULL, "Bytes held for an incomplete frame.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot lf_slots[] = {
    {Py_tp_new, lf_new},
    {Py_tp_dealloc, lf_dealloc},
    {Py_tp_traverse, lf_traverse},
    {Py_tp_clear, lf_clear},
    {Py_tp_methods, lf_methods},
    {Py_tp_getset, lf_getset},
    {Py_tp_doc, "LengthFieldCodec's decoder (the C twin of codec._LengthFieldDecoder)."},
    {0, NULL},
};

static PyType_Spec lf_spec = {
    "netreactor._speedups.LengthFieldDecoder",
    sizeof(LFDecoder),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    lf_slots,
};

/* ------------------------------------------------------------------------ */
/* SplitDecoder: LineCodec's decoder, and DelimiterCodec's with one delimiter */
/* ------------------------------------------------------------------------ */

/* Two modes, each the twin of a Python decoder:
 *  - lines (codec._LineDecoder): frames end at b"\n"; a b"\r" just before it is
 *    part of the line ending (stripped, and not counted against the limit);
 *  - one delimiter (codec._DelimiterDecoder with a single delimiter, any length).
 * Python builds the errors: error_for(length, unterminated, frames). */
typedef struct {
    PyObject_HEAD
    int lines;            /* line mode */
    int strip;            /* strip_delimiter */
    Py_ssize_t max;       /* max_frame_length */
    char *delim;          /* the delimiter (line mode: "\n") */
    Py_ssize_t dlen;
    Py_ssize_t scan;      /* delimiter mode: tail offset before which none can start */
    Tail tail;
    PyObject *error_for;
    PyObject *failed;
    PyObject *error;
    int busy;
} SplitDecoder;

static const char *
find_delim(const char *p, Py_ssize_t n, const char *d, Py_ssize_t dlen)
{
    const char *end = p + n, *c;
    if (dlen == 1)
        return memchr(p, d[0], (size_t)n);
    while (end - p >= dlen) {
        c = memchr(p, d[0], (size_t)(end - p - dlen + 1));
        if (c == NULL)
            return NULL;
        if (memcmp(c, d, (size_t)dlen) == 0)
            return c;
        p = c + 1;
    }
    return NULL;
}

/* Fail with error_for(length, unterminated, frames); always -1. */
static int
split_fail(SplitDecoder *self, Py_ssize_t length, int unterminated, PyObject *frames)
{
    PyObject *exc = PyObject_CallFunction(self->error_for, "nOO", length, unterminated ? Py_True : Py_False,
                                          frames ? frames : Py_None);
    tail_free(&self->tail);
    self->scan = 0;
    if (exc == NULL)
        return -1;
    Py_XDECREF(self->error);
    self->error = exc;
    raise_instance(exc);
    return -1;
}

/* Delimiter mode: does a proper prefix of the delimiter, running to the end of
 * p[0:end], start at some q in [pos, lim]? (codec._DelimiterDecoder._pending) */
static int
split_pending(SplitDecoder *self, const char *p, Py_ssize_t pos, Py_ssize_t lim, Py_ssize_t end)
{
    Py_ssize_t q = end - self->dlen + 1, last = end - 1;
    if (end == 0)
        return 0;
    if (q < pos)
        q = pos;
    if (lim < last)
        last = lim;
    for (; q <= last; q++)
        if (memcmp(p + q, self->delim, (size_t)(end - q)) == 0)
            return 1;
    return 0;
}

/* Line mode, no b"\n" in the held bytes: too long already? (_check_unterminated) */
static int
line_unterminated_too_long(SplitDecoder *self, const char *p, Py_ssize_t rem)
{
    return rem > self->max && (rem > self->max + 1 || p[rem - 1] != '\r');
}

static int
append_frame(PyObject *frames, const char *p, Py_ssize_t n)
{
    PyObject *frame = PyBytes_FromStringAndSize(p, n);
    int r;
    if (frame == NULL)
        return -1;
    r = PyList_Append(frames, frame);
    Py_DECREF(frame);
    return r;
}

/* Split p[0:n] from `pos`; the rest becomes the tail. `from_tail`: p is the
 * tail's own buffer (delimiter mode), `scan` where the search starts. */
static int
split_run(SplitDecoder *self, const char *p, Py_ssize_t n, Py_ssize_t pos, Py_ssize_t scan, PyObject *frames)
{
    const char *hit;
    const Py_ssize_t max = self->max, dlen = self->dlen;
    if (self->lines) {
        while ((hit = memchr(p + pos, '\n', (size_t)(n - pos))) != NULL) {
            Py_ssize_t i = hit - p, j = (i > pos && p[i - 1] == '\r') ? i - 1 : i;
            if (j - pos > max)
                return split_fail(self, j - pos, 0, frames);
            if (append_frame(frames, p + pos, (self->strip ? j : i + 1) - pos) < 0)
                return -1;
            pos = i + 1;
        }
        if (pos < n) {
            if (line_unterminated_too_long(self, p + pos, n - pos))
                return split_fail(self, n - pos, 1, frames);
            return tail_append(&self->tail, p + pos, n - pos);
        }
        return 0;
    }
    if (scan < pos)
        scan = pos;
    while ((hit = find_delim(p + scan, n - scan, self->delim, dlen)) != NULL) {
        Py_ssize_t i = hit - p;
        if (i - pos > max)
            return split_fail(self, i - pos, 0, frames);
        if (append_frame(frames, p + pos, i + (self->strip ? 0 : dlen) - pos) < 0)
            return -1;
        pos = scan = i + dlen;
    }
    if (pos < n) {
        Py_ssize_t rem = n - pos;
        if (rem > max && !split_pending(self, p, pos, pos + max, n))
            return split_fail(self, rem, 1, frames);
        if (tail_append(&self->tail, p + pos, rem) < 0)
            return -1;
        self->scan = rem - dlen + 1 > 0 ? rem - dlen + 1 : 0;
    }
    return 0;
}

static PyObject *split_feed_body(SplitDecoder *self, PyObject *data);

static PyObject *
split_feed(SplitDecoder *self, PyObject *data)
{
    PyObject *r;
    if (feed_enter(&self->busy) < 0)
        return NULL;
    r = split_feed_body(self, data);
    self->busy = 0;
    return r;
}

static PyObject *
split_feed_body(SplitDecoder *self, PyObject *data)
{
    const char *p;
    Py_ssize_t n;
    PyObject *keep, *frames;

    if (self->error != NULL)
        return PyObject_CallFunctionObjArgs(self->failed, self->error, NULL);
    if (view_bytes(data, &p, &n, &keep) < 0)
        return NULL;
    frames = PyList_New(0);
    if (frames == NULL)
        goto error;
    if (self->tail.len && self->lines) {
        /* The pending line can only end in the new data. */
        const char *hit = memchr(p, '\n', (size_t)n);
        Py_ssize_t i, total, j;
        char *line;
        PyObject *frame;
        if (hit == NULL) {
            if (tail_append(&self->tail, p, n) < 0)
                goto error;
            if (line_unterminated_too_long(self, self->tail.data, self->tail.len)) {
                split_fail(self, self->tail.len, 1, NULL);
                goto error;
            }
            goto done;
        }
        i = hit - p;
        total = self->tail.len + i;
        j = (i > 0 ? p[i - 1] == '\r' : self->tail.data[self->tail.len - 1] == '\r') ? total - 1 : total;
        if (j > self->max) {
            split_fail(self, j, 0, frames);
            goto error;
        }
        frame = PyBytes_FromStringAndSize(NULL, self->strip ? j : total + 1);
        if (frame == NULL)
            goto error;
        line = PyBytes_AsString(frame);
        if (self->strip && j < self->tail.len) {
            memcpy(line, self->tail.data, (size_t)j);
        } else {
            memcpy(line, self->tail.data, (size_t)self->tail.len);
            memcpy(line + self->tail.len, p, (size_t)((self->strip ? j : total + 1) - self->tail.len));
        }
        if (PyList_Append(frames, frame) < 0) {
            Py_DECREF(frame);
            goto error;
        }
        Py_DECREF(frame);
        tail_free(&self->tail);
        if (split_run(self, p, n, i + 1, 0, frames) < 0)
            goto error;
        goto done;
    }
    if (self->tail.len) {
        /* Delimiter mode: append, then search only where a delimiter can still start. */
        Tail held;
        const char *hit;
        Py_ssize_t scan = self->scan;
        if (tail_append(&self->tail, p, n) < 0)
            goto error;
        hit = find_delim(self->tail.data + scan, self->tail.len - scan, self->delim, self->dlen);
        if (hit == NULL) {
            Py_ssize_t end = self->tail.len;
            if (end > self->max && !split_pending(self, self->tail.data, 0, self->max, end)) {
                split_fail(self, end, 1, NULL);
                goto error;
            }
            self->scan = end - self->dlen + 1 > 0 ? end - self->dlen + 1 : 0;
            goto done;
        }
        held = self->tail; /* take the buffer over: split_run refills the tail */
        self->tail.data = NULL;
        self->tail.len = self->tail.cap = 0;
        self->scan = 0;
        if (split_run(self, held.data, held.len, 0, scan, frames) < 0) {
            tail_free(&held);
            goto error;
        }
        tail_free(&held);
        goto done;
    }
    if (split_run(self, p, n, 0, 0, frames) < 0)
        goto error;
done:
    Py_XDECREF(keep);
    return frames;
error:
    Py_XDECREF(frames);
    Py_XDECREF(keep);
    return NULL;
}

static PyObject *
split_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* (delimiter, lines, strip, max_frame_length, error_for, failed) */
    const char *d;
    Py_ssize_t dlen, max;
    int lines, strip;
    PyObject *error_for, *failed;
    SplitDecoder *self;
    allocfunc tp_alloc;

    if (kwds != NULL && PyDict_Size(kwds)) {
        PyErr_SetString(PyExc_TypeError, "SplitDecoder takes positional arguments only");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y#ppnOO:SplitDecoder", &d, &dlen, &lines, &strip, &max, &error_for, &failed))
        return NULL;
    if (dlen < 1 || max < 1 || max > ((Py_ssize_t)1 << 60) || (lines && (dlen != 1 || d[0] != '\n'))) {
        PyErr_SetString(PyExc_ValueError, "SplitDecoder: parameters out of range");
        return NULL;
    }
    tp_alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    self = (SplitDecoder *)tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->delim = (char *)PyMem_Malloc((size_t)dlen);
    if (self->delim == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    memcpy(self->delim, d, (size_t)dlen);
    self->dlen = dlen;
    self->lines = lines;
    self->strip = strip;
    self->max = max;
    Py_INCREF(error_for);
    self->error_for = error_for;
    Py_INCREF(failed);
    self->failed = failed;
    return (PyObject *)self;
}

static int
split_traverse(SplitDecoder *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->error_for);
    Py_VISIT(self->failed);
    Py_VISIT(self->error);
    return 0;
}

static int
split_clear(SplitDecoder *self)
{
    Py_CLEAR(self->error_for);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->error);
    return 0;
}

static void
split_dealloc(SplitDecoder *self)
{
    PyObject_GC_UnTrack(self);
    split_clear(self);
    tail_free(&self->tail);
    PyMem_Free(self->delim);
    free_instance((PyObject *)self);
}

static PyObject *
split_buffered(SplitDecoder *self, void *closure)
{
    return PyLong_FromSsize_t(self->tail.len);
}

static PyMethodDef split_methods[] = {
    {"feed", (PyCFunction)split_feed, METH_O, "Add data to the stream; return the frames completed by it."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef split_getset[] = {
    {"buffered", (getter)split_buffered, NULL, "Bytes held for an incomplete frame.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot split_slots[] = {
    {Py_tp_new, split_new},
    {Py_tp_dealloc, split_dealloc},
    {Py_tp_traverse, split_traverse},
    {Py_tp_clear, split_clear},
    {Py_tp_methods, split_methods},
    {Py_tp_getset, split_getset},
    {Py_tp_doc, "LineCodec's decoder, or DelimiterCodec's with one delimiter (C twins)."},
    {0, NULL},
};

static PyType_Spec split_spec = {
    "netreactor._speedups.SplitDecoder",
    sizeof(SplitDecoder),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    split_slots,
};

/* ------------------------------------------------------------------------ */
/* lf_encode_many: LengthFieldCodec.encode_many without an offset           */
/* ------------------------------------------------------------------------ */

/* lf_encode_many(payloads, length, big, adj) -> bytes, or None when a payload
 * is not bytes/bytearray or its length does not fit the field (the Python
 * code then encodes, and raises its own error). */
#define ENCODE_STACK 64

/* The bytes of a payload (bytes or bytearray), or -1 for any other type. */
static Py_ssize_t
payload_bytes(PyObject *item, const char **src)
{
    if (PyBytes_CheckExact(item)) {
        char *s;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(item, &s, &len) < 0)
            return -1;
        *src = s;
        return len;
    }
    if (PyByteArray_CheckExact(item)) {
        *src = PyByteArray_AsString(item);
        return PyByteArray_Size(item);
    }
    return -1;
}

static PyObject *
lf_encode_many(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *payloads, *out = NULL;
    Py_ssize_t count, i, held = 0, total = 0;
    long lfl_l;
    int lfl, big;
    long long adj;
    uint64_t field_max;
    char *w;
    /* The items, held (a new reference each) between the two passes, with
     * their bytes and sizes. A bytes item cannot change; a bytearray's buffer
     * is taken again in the second pass and its size checked, in case Python
     * code ran in between (allocating the result does not run any today). */
    PyObject *stack_items[ENCODE_STACK], **items = stack_items;
    const char *stack_src[ENCODE_STACK], **src = stack_src;
    Py_ssize_t stack_len[ENCODE_STACK], *lens = stack_len;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "lf_encode_many(payloads, length, big, adj)");
        return NULL;
    }
    payloads = args[0];
    lfl_l = PyLong_AsLong(args[1]);
    big = PyObject_IsTrue(args[2]);
    adj = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (!PyList_CheckExact(payloads) || (lfl_l != 1 && lfl_l != 2 && lfl_l != 3 && lfl_l != 4 && lfl_l != 8))
        Py_RETURN_NONE;
    lfl = (int)lfl_l;
    field_max = lfl == 8 ? (uint64_t)INT64_MAX : (((uint64_t)1 << (8 * lfl)) - 1);
    count = PyList_Size(payloads);
    if (count > ENCODE_STACK) {
        items = PyMem_Malloc((size_t)count * sizeof(*items));
        src = PyMem_Malloc((size_t)count * sizeof(*src));
        lens = PyMem_Malloc((size_t)count * sizeof(*lens));
        if (items == NULL || src == NULL || lens == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (i = 0; i < count; i++) {
        PyObject *item = PyList_GetItem(payloads, i);
        Py_ssize_t len = payload_bytes(item, &src[i]);
        long long value = (long long)len - adj;
        if (len < 0 || value < 0 || (uint64_t)value > field_max || len > PY_SSIZE_T_MAX - total - lfl) {
            out = Py_None; /* not ours to encode: the Python code does it (or raises) */
            Py_INCREF(out);
            goto done;
        }
        Py_INCREF(item);
        items[held++] = item;
        lens[i] = len;
        total += lfl + len;
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        goto done;
    w = PyBytes_AsString(out);
    for (i = 0; i < count; i++) {
        Py_ssize_t len = lens[i];
        uint64_t value = (uint64_t)((long long)len - adj);
        int k;
        if (!PyBytes_CheckExact(items[i]) && payload_bytes(items[i], &src[i]) != len) {
            Py_CLEAR(out);
            PyErr_SetString(PyExc_RuntimeError, "a payload changed during encode_many()");
            goto done;
        }
        if (big && lfl == 4) {
            w[0] = (char)(value >> 24);
            w[1] = (char)(value >> 16);
            w[2] = (char)(value >> 8);
            w[3] = (char)value;
        } else if (big) {
            for (k = lfl - 1; k >= 0; k--) {
                w[k] = (char)(value & 0xff);
                value >>= 8;
            }
        } else {
            for (k = 0; k < lfl; k++) {
                w[k] = (char)(value & 0xff);
                value >>= 8;
            }
        }
        w += lfl;
        memcpy(w, src[i], (size_t)len);
        w += len;
    }
done:
    for (i = 0; i < held; i++)
        Py_DECREF(items[i]);
    if (items != stack_items)
        PyMem_Free(items);
    if (src != stack_src)
        PyMem_Free((void *)src);
    if (lens != stack_len)
        PyMem_Free(lens);
    return out;
}

/* ------------------------------------------------------------------------ */
/* RESP: the command parser's fast path and bulk replies                    */
/* ------------------------------------------------------------------------ */

/* Redis's string2ll (netreactor.protocols.resp.parse_int): no sign but a
 * leading '-', no spaces, no leading zeros, no "-0", within int64. */
static int
parse_ll(const char *s, Py_ssize_t n, long long *out)
{
    int neg = 0;
    uint64_t v = 0, limit;
    Py_ssize_t i = 0;
    if (n <= 0 || n > 20)
        return 0;
    if (s[0] == '-') {
        if (n == 1 || s[1] == '0')
            return 0;
        neg = 1;
        i = 1;
    } else if (s[0] == '0') {
        if (n > 1)
            return 0;
        *out = 0;
        return 1;
    }
    limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        unsigned d = (unsigned char)s[i] - '0';
        if (d > 9)
            return 0;
        if (v > (limit - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *out = neg ? (long long)(0 - v) : (long long)v;
    return 1;
}

/* Where the CRLF ending the line at p[0:] is, searched in the first
 * max_inline + 2 bytes (so the line is at most max_inline bytes), or -1. */
static Py_ssize_t
find_crlf(const char *p, Py_ssize_t avail, Py_ssize_t max_inline)
{
    Py_ssize_t lim = avail, i;
    if (max_inline <= PY_SSIZE_T_MAX - 2 && max_inline + 2 < lim)
        lim = max_inline + 2;
    for (i = 0; i + 1 < lim; i++) {
        const char *cr = memchr(p + i, '\r', (size_t)(lim - 1 - i));
        if (cr == NULL)
            return -1;
        i = cr - p;
        if (p[i + 1] == '\n')
            return i;
    }
    return -1;
}

/* resp_parse_commands(max_bulk, max_args, max_command, max_inline, buf, out) -> pos
 *
 * Appends to `out` the well-formed multibulk commands at the start of `buf`
 * (bytes), each a list of bytes, and returns where it stopped: at the end, or
 * at the first command it is not sure of (inline, unfinished, malformed, over a
 * limit, empty), which the careful Python parser then takes from there. It
 * accepts exactly what the careful parser would, with every limit. The limits
 * come first so that functools.partial can bind them once per parser. */
static PyObject *
resp_parse_commands(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *buf, *out;
    const char *p;
    Py_ssize_t n, pos = 0;
    Py_ssize_t max_bulk, max_args, max_command, max_inline;

    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "resp_parse_commands(max_bulk, max_args, max_command, max_inline, buf, out)");
        return NULL;
    }
    buf = args[4];
    out = args[5];
    if (!PyBytes_CheckExact(buf) || !PyList_CheckExact(out)) {
        PyErr_SetString(PyExc_TypeError, "resp_parse_commands: buf must be bytes, out a list");
        return NULL;
    }
    if (as_ssize(args[0], &max_bulk, "max_bulk") < 0 || as_ssize(args[1], &max_args, "max_args") < 0 ||
        as_ssize(args[2], &max_command, "max_command") < 0 || as_ssize(args[3], &max_inline, "max_inline") < 0)
        return NULL;
    p = PyBytes_AsString(buf);
    n = PyBytes_Size(buf);

    while (pos < n && p[pos] == '*') {
        Py_ssize_t nl, q, size = 0, k;
        long long count;
        PyObject *cmd;
        nl = find_crlf(p + pos, n - pos, max_inline);
        if (nl < 0 || !parse_ll(p + pos + 1, nl - 1, &count) || count <= 0 || count > max_args)
            break;
        q = pos + nl + 2;
        cmd = PyList_New(count <= 64 ? (Py_ssize_t)count : 0);
        if (cmd == NULL)
            return NULL;
        for (k = 0; k < count; k++) {
            long long length;
            Py_ssize_t stop;
            PyObject *arg;
            if (q >= n || p[q] != '$')
                break;
            nl = find_crlf(p + q, n - q, max_inline);
            if (nl < 0 || !parse_ll(p + q + 1, nl - 1, &length) || length < 0 || length > max_bulk)
                break;
            if (length > n - (q + nl + 4))
                break; /* unfinished (and no overflow below) */
            stop = q + nl + 2 + (Py_ssize_t)length;
            size += stop + 2 - q;
            if (size > max_command || stop + 2 > n || p[stop] != '\r' || p[stop + 1] != '\n')
                break;
            arg = PyBytes_FromStringAndSize(p + q + nl + 2, (Py_ssize_t)length);
            if (arg == NULL) {
                Py_DECREF(cmd);
                return NULL;
            }
            if (count <= 64)
                PyList_SetItem(cmd, k, arg);
            else if (PyList_Append(cmd, arg) < 0) {
                Py_DECREF(arg);
                Py_DECREF(cmd);
                return NULL;
            } else
                Py_DECREF(arg);
            q = stop + 2;
        }
        if (k < count) {
            Py_DECREF(cmd);
            break;
        }
        if (PyList_Append(out, cmd) < 0) {
            Py_DECREF(cmd);
            return NULL;
        }
        Py_DECREF(cmd);
        pos = q;
    }
    return PyLong_FromSsize_t(pos);
}

static PyObject *null_bulk; /* b"$-1\r\n" */
static PyObject *bulk_format; /* b"$%d\r\n%s\r\n" */

/* resp_bulk(value): netreactor.protocols.resp.encode_bulk, b"$<len>\r\n<value>\r\n"
 * (None: b"$-1\r\n"). bytes and bytearray are written here; anything else
 * takes the Python expression itself, so every type behaves alike. */
static PyObject *
resp_bulk(PyObject *module, PyObject *value)
{
    const char *p;
    Py_ssize_t n;
    PyObject *out, *args;
    char head[32], *w;
    int h;
    if (value == Py_None) {
        Py_INCREF(null_bulk);
        return null_bulk;
    }
    if (PyBytes_CheckExact(value)) {
        p = PyBytes_AsString(value);
        n = PyBytes_Size(value);
    } else if (PyByteArray_CheckExact(value)) {
        p = PyByteArray_AsString(value);
        n = PyByteArray_Size(value);
    } else {
        n = PyObject_Size(value);
        if (n < 0)
            return NULL;
        args = Py_BuildValue("(nO)", n, value);
        if (args == NULL)
            return NULL;
        out = PyNumber_Remainder(bulk_format, args);
        Py_DECREF(args);
        return out;
    }
    h = snprintf(head, sizeof head, "$%zd\r\n", n);
    out = PyBytes_FromStringAndSize(NULL, h + n + 2);
    if (out != NULL) {
        w = PyBytes_AsString(out);
        memcpy(w, head, (size_t)h);
        memcpy(w + h, p, (size_t)n);
        w[h + n] = '\r';
        w[h + n + 1] = '\n';
    }
    return out;
}

/* ------------------------------------------------------------------------ */
/* HTTP/1.1: the request-head splitter (protocols.http1 _REQUEST_LINE and   */
/* _HEADER_LINE)                                                            */
/* ------------------------------------------------------------------------ */

/* tchar (RFC 9110 5.6.2) */
static unsigned char is_tchar[256];
/* field-value characters: VCHAR and obs-text */
static unsigned char is_vchar[256];

static void
init_http_tables(void)
{
    const char *extra = "!#$%&'*+.^_`|~-";
    int c;
    for (c = '0'; c <= '9'; c++)
        is_tchar[c] = 1;
    for (c = 'a'; c <= 'z'; c++)
        is_tchar[c] = is_tchar[c - 32] = 1;
    for (; *extra; extra++)
        is_tchar[(unsigned char)*extra] = 1;
    for (c = 0x21; c <= 0x7e; c++)
        is_vchar[c] = 1;
    for (c = 0x80; c <= 0xff; c++)
        is_vchar[c] = 1;
}

/* http_split_head(buf, pos, end) -> (method, target, version, line_end, headers) or None
 *
 * The head is buf[pos:end+4] (end: where its CRLFCRLF starts). Returns what
 * _REQUEST_LINE.match and _HEADER_LINE.findall give when the request line is
 * "token SP target SP HTTP/1.0|1.1 CRLF" and every header line matches; the
 * names lowercased. Anything else is None: the Python code then parses the
 * head itself and raises the right error. */
static PyObject *
http_split_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *p;
    Py_ssize_t n, pos, end, i, m0, t0, t1, line_end, count = 0;
    PyObject *headers = NULL, *result = NULL, *method, *target, *version;

    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "http_split_head(buf: bytes, pos, end)");
        return NULL;
    }
    p = (const unsigned char *)PyBytes_AsString(args[0]);
    n = PyBytes_Size(args[0]);
    pos = PyLong_AsSsize_t(args[1]);
    end = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (pos < 0 || end < pos || end + 4 > n)
        Py_RETURN_NONE;
    /* Request line, within buf[pos:end+2]. */
    i = m0 = pos;
    while (i < end && is_tchar[p[i]])
        i++;
    if (i == m0 || p[i] != ' ')
        Py_RETURN_NONE;
    t0 = ++i;
    while (i < end && p[i] >= 0x21 && p[i] <= 0x7e)
        i++;
    if (i == t0 || p[i] != ' ')
        Py_RETURN_NONE;
    t1 = i++;
    if (end + 2 - i < 10 || memcmp(p + i, "HTTP/1.", 7) != 0 || (p[i + 7] != '0' && p[i + 7] != '1') ||
        p[i + 8] != '\r' || p[i + 9] != '\n')
        Py_RETURN_NONE;
    line_end = i + 10;
    /* Count the header lines, checking each. */
    for (i = line_end; i < end + 2;) {
        Py_ssize_t k = i;
        while (k < end + 2 && is_tchar[p[k]])
            k++;
        if (k == i || p[k] != ':')
            Py_RETURN_NONE;
        for (k++; k < end + 2 && (is_vchar[p[k]] || p[k] == ' ' || p[k] == '\t'); k++)
            ;
        if (k + 1 >= end + 2 + 1 || p[k] != '\r' || p[k + 1] != '\n')
            Py_RETURN_NONE;
        count++;
        i = k + 2;
    }
    headers = PyTuple_New(count);
    if (headers == NULL)
        return NULL;
    count = 0;
    for (i = line_end; i < end + 2; count++) {
        Py_ssize_t k = i, v0, v1;
        PyObject *name, *value, *pair;
        char *w;
        while (p[k] != ':')
            k++;
        name = PyBytes_FromStringAndSize(NULL, k - i);
        if (name == NULL)
            goto error;
        w = PyBytes_AsString(name);
        for (v0 = i; v0 < k; v0++)
            w[v0 - i] = (char)((p[v0] >= 'A' && p[v0] <= 'Z') ? p[v0] + 32 : p[v0]);
        v0 = k + 1;
        while (p[v0] == ' ' || p[v0] == '\t')
            v0++;
        v1 = v0;
        while (p[v1] != '\r')
            v1++;
        i = v1 + 2;
        while (v1 > v0 && (p[v1 - 1] == ' ' || p[v1 - 1] == '\t'))
            v1--;
        value = PyBytes_FromStringAndSize((const char *)p + v0, v1 - v0);
        if (value == NULL) {
            Py_DECREF(name);
            goto error;
        }
        pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name);
            Py_DECREF(value);
            goto error;
        }
        PyTuple_SetItem(pair, 0, name);
        PyTuple_SetItem(pair, 1, value);
        PyTuple_SetItem(headers, count, pair);
    }
    method = PyBytes_FromStringAndSize((const char *)p + m0, t0 - 1 - m0);
    target = PyBytes_FromStringAndSize((const char *)p + t0, t1 - t0);
    version = PyBytes_FromStringAndSize((const char *)p + t1 + 6, 3);
    if (method != NULL && target != NULL && version != NULL)
        result = Py_BuildValue("(NNNnN)", method, target, version, line_end, headers);
    else {
        Py_XDECREF(method);
        Py_XDECREF(target);
        Py_XDECREF(version);
        Py_DECREF(headers);
    }
    return result;
error:
    Py_DECREF(headers);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Module                                                                   */
/* ------------------------------------------------------------------------ */

static PyMethodDef module_methods[] = {
    {"lf_encode_many", (PyCFunction)(void (*)(void))lf_encode_many, METH_FASTCALL,
     "lf_encode_many(payloads, length, big, adj) -> bytes or None"},
    {"resp_parse_commands", (PyCFunction)(void (*)(void))resp_parse_commands, METH_FASTCALL,
     "resp_parse_commands(max_bulk, max_args, max_command, max_inline, buf, out) -> position"},
    {"resp_bulk", (PyCFunction)resp_bulk, METH_O, "resp_bulk(value) -> the bulk-string reply"},
    {"http_split_head", (PyCFunction)(void (*)(void))http_split_head, METH_FASTCALL,
     "http_split_head(buf, pos, end) -> (method, target, version, line_end, headers) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "netreactor._speedups",
    "C twins of netreactor's per-frame functions (optional; see netreactor.speedups).",
    -1,
    module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m = PyModule_Create(&speedups_module), *t;
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "API_VERSION", API_VERSION) < 0)
        goto error;
    init_http_tables();
    if (null_bulk == NULL) {
        null_bulk = PyBytes_FromString("$-1\r\n");
        bulk_format = PyBytes_FromString("$%d\r\n%s\r\n");
        if (null_bulk == NULL || bulk_format == NULL)
            goto error;
    }
    t = PyType_FromSpec(&lf_spec);
    if (t == NULL || PyModule_AddObject(m, "LengthFieldDecoder", t) < 0) {
        Py_XDECREF(t);
        goto error;
    }
    t = PyType_FromSpec(&split_spec);
    if (t == NULL || PyModule_AddObject(m, "SplitDecoder", t) < 0) {
        Py_XDECREF(t);
        goto error;
    }
    return m;
error:
    Py_DECREF(m);
    return NULL;
}
