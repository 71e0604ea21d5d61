/* collector._fastup: a `/up` batch's CBOR bytes straight to line-protocol bytes, in one C pass.
 *
 * Built by scripts/setup (`python collector/build_fastup.py`, the machine's C compiler) and optional:
 * without it the collector runs the pure path (collector/decode.py + Validator.batch_lines), which is
 * the oracle this module is tested against byte for byte (tests/unit/test_collector_fastup.py).
 *
 * The module only ever says "yes, and here are the bytes" or "not mine": anything unusual goes to
 * the pure path, so every verdict and reason stays the pure path's own.
 *
 * scan(payload) -> (boot, seq, t0, readings_offset) | None
 *     Walks the whole payload once: exactly one definite-length item, no trailing bytes, no tags,
 *     only false/true/null/undefined and floats among the simple values, text strictly UTF-8, every
 *     map keyed by ints (at most MAX_MAP entries) with no key twice, nesting at most MAX_DEPTH; the
 *     top map holds exactly keys 0..4 with version 1, boot/seq/t0 uints and readings an array. None
 *     for anything else (the pure path then decodes it and refuses or accepts it as it always did).
 *
 * lines(payload, offset, t0, lo, hi, gw_key, cache, cap, head, slow) -> (body, n)
 *     For a payload `scan` accepted: each reading `[sensor, kind, dt, {index: value}]` of the usual
 *     shape (what collector/hotpath.py's `readings_lines` takes: a known series, dt within lo..hi,
 *     field indexes ascending, each value of its field's type and range) becomes a line; any other
 *     goes to `slow(index, start, end)` (its CBOR is payload[start:end]), which returns its line or
 *     None (refused). `cache` maps gw_key + the reading's raw sensor and kind bytes to
 *     (series head bytes, spec capsule); on a miss `head(kind, sensor)` makes the entry or returns
 *     None (the reading is then slow), exactly where `readings_lines` calls `series_head`.
 *
 * make_spec(fast_specs) -> capsule: a kind's FastSpec tuple (collector/hotpath.py) in C.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 16
#define MAX_MAP 64
#define SPEC_NAME "collector._fastup.spec"

enum { T_NONE = 0, T_BOOL, T_INT, T_FLOAT };

typedef struct {
    char *key; /* escaped "name=" in UTF-8 */
    Py_ssize_t keylen;
    int type;
    int64_t ilo, ihi;
    double flo, fhi;
} FieldC;

typedef struct {
    Py_ssize_t n;
    FieldC f[];
} SpecC;

/* ---- the CBOR head: major type, argument ---------------------------------------------------- */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
} Cur;

/* Reads one item's head. Returns 0 on success, -1 on a malformed or unsupported head
 * (indefinite lengths, reserved additional info). `ai` is the raw additional info.
 * Inlined, the argument loaded whole: it runs for every item twice (scan, then lines), ~40 items a
 * reading, and as a call with a byte loop it was ~10 % of the step's instructions (callgrind). */
static inline __attribute__((always_inline)) int head(Cur *c, int *major, int *ai, uint64_t *arg) {
    if (c->p >= c->end) return -1;
    unsigned char b = *c->p++;
    *major = b >> 5;
    *ai = b & 31;
    int a = *ai;
    if (a < 24) {
        *arg = (uint64_t)a;
        return 0;
    }
    Py_ssize_t left = c->end - c->p;
    const unsigned char *p = c->p;
    switch (a) {
    case 24:
        if (left < 1) return -1;
        *arg = p[0];
        c->p += 1;
        return 0;
    case 25:
        if (left < 2) return -1;
        *arg = ((uint64_t)p[0] << 8) | p[1];
        c->p += 2;
        return 0;
    case 26:
        if (left < 4) return -1;
        *arg = ((uint64_t)p[0] << 24) | ((uint64_t)p[1] << 16) | ((uint64_t)p[2] << 8) | p[3];
        c->p += 4;
        return 0;
    case 27:
        if (left < 8) return -1;
        *arg = ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) | ((uint64_t)p[3] << 32) |
               ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) | ((uint64_t)p[6] << 8) | p[7];
        c->p += 8;
        return 0;
    default:
        return -1; /* 28-30 reserved, 31 indefinite: the pure path judges */
    }
}

static int utf8_ok(const unsigned char *s, uint64_t n) {
    for (uint64_t i = 0; i < n; i++) {
        if (s[i] & 0x80) {
            PyObject *u = PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)n, "strict");
            if (u == NULL) {
                PyErr_Clear();
                return 0;
            }
            Py_DECREF(u);
            return 1;
        }
    }
    return 1;
}

/* Skips one well-formed item of the accepted subset; -1 if it is not one. */
static int skip(Cur *c, int depth) {
    int major, ai;
    uint64_t arg;
    if (depth > MAX_DEPTH) return -1;
    if (head(c, &major, &ai, &arg) < 0) return -1;
    switch (major) {
    case 0:
    case 1:
        return 0;
    case 2:
    case 3:
        if ((uint64_t)(c->end - c->p) < arg) return -1;
        if (major == 3 && !utf8_ok(c->p, arg)) return -1;
        c->p += arg;
        return 0;
    case 4:
        if ((uint64_t)(c->end - c->p) < arg) return -1; /* each item is at least one byte */
        for (uint64_t i = 0; i < arg; i++)
            if (skip(c, depth + 1) < 0) return -1;
        return 0;
    case 5: {
        if (arg > MAX_MAP) return -1;
        /* A duplicate key: the keys 0..63 every map of the protocol uses in a bit set, any other
         * against the others seen (pairwise over every key was ~5 % of the step's instructions) */
        uint64_t small = 0;
        int kmaj[MAX_MAP];
        uint64_t kval[MAX_MAP];
        int others = 0;
        for (uint64_t i = 0; i < arg; i++) {
            int km, kai;
            uint64_t kv;
            if (head(c, &km, &kai, &kv) < 0 || km > 1) return -1; /* int keys only */
            if (km == 0 && kv < 64) {
                if (small & (1ULL << kv)) return -1;
                small |= 1ULL << kv;
            } else {
                for (int j = 0; j < others; j++)
                    if (kmaj[j] == km && kval[j] == kv) return -1;
                kmaj[others] = km;
                kval[others] = kv;
                others++;
            }
            if (skip(c, depth + 1) < 0) return -1;
        }
        return 0;
    }
    case 6:
        return -1; /* tags: the pure path */
    default: /* 7 */
        if (ai >= 20 && ai <= 23) return 0; /* false true null undefined */
        if (ai >= 25 && ai <= 27) return 0; /* floats (their bytes were read by head) */
        return -1;
    }
}

static PyObject *scan(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *base = view.buf;
    Cur c = {base, base + view.len};
    Cur whole = c;
    int major, ai;
    uint64_t n, k, v;
    uint64_t got[5];
    Py_ssize_t readings_at = -1;
    int seen = 0;
    if (skip(&whole, 0) < 0 || whole.p != whole.end) goto no; /* malformed, unusual or trailing */
    if (head(&c, &major, &ai, &n) < 0 || major != 5 || n != 5) goto no;
    for (uint64_t i = 0; i < n; i++) {
        if (head(&c, &major, &ai, &k) < 0 || major != 0 || k > 4) goto no; /* other keys: pure */
        seen |= 1 << k;
        if (k == 4) {
            readings_at = c.p - base;
            Cur r = c;
            if (head(&r, &major, &ai, &v) < 0 || major != 4) goto no;
            if (skip(&c, 1) < 0) goto no;
        } else {
            if (head(&c, &major, &ai, &v) < 0 || major != 0) goto no;
            got[k] = v;
        }
    }
    if (seen != 31 || got[0] != 1) goto no;
    PyBuffer_Release(&view);
    return Py_BuildValue("(KKKn)", (unsigned long long)got[1], (unsigned long long)got[2],
                         (unsigned long long)got[3], readings_at);
no:
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* ---- output buffer ------------------------------------------------------------------------- */

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} Out;

static int out_grow(Out *o, Py_ssize_t more) {
    Py_ssize_t cap = o->cap ? o->cap : 4096;
    while (cap < o->len + more) cap *= 2;
    char *b = PyMem_Realloc(o->buf, cap);
    if (b == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = b;
    o->cap = cap;
    return 0;
}

/* Inlined: a few calls per field (separator, key, value), most of a few bytes. */
static inline __attribute__((always_inline)) int out_reserve(Out *o, Py_ssize_t more) {
    return o->len + more <= o->cap ? 0 : out_grow(o, more);
}

static inline __attribute__((always_inline)) int out_put(Out *o, const char *s, Py_ssize_t n) {
    if (out_reserve(o, n) < 0) return -1;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return 0;
}

static int out_int(Out *o, int64_t v) {
    char tmp[24];
    int i = 24;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) tmp[--i] = '-';
    return out_put(o, tmp + i, 24 - i);
}

/* ---- specs --------------------------------------------------------------------------------- */

static void spec_free(PyObject *capsule) {
    SpecC *s = PyCapsule_GetPointer(capsule, SPEC_NAME);
    if (s == NULL) return;
    for (Py_ssize_t i = 0; i < s->n; i++) PyMem_Free(s->f[i].key);
    PyMem_Free(s);
}

/* An exact int64 bound, or 0 with *ok = 0 (the field then never takes the fast path). */
static int64_t int_bound(PyObject *b, int *ok) {
    if (!PyLong_CheckExact(b)) {
        *ok = 0;
        return 0;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(b, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        *ok = 0;
        return 0;
    }
    return v;
}

/* A float bound held exactly as a double, or *ok = 0. */
static double float_bound(PyObject *b, int *ok) {
    double d;
    if (PyFloat_CheckExact(b)) return PyFloat_AS_DOUBLE(b);
    if (!PyLong_CheckExact(b)) {
        *ok = 0;
        return 0.0;
    }
    d = PyLong_AsDouble(b);
    if (d == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        *ok = 0;
        return 0.0;
    }
    PyObject *back = PyFloat_FromDouble(d);
    if (back == NULL) {
        PyErr_Clear();
        *ok = 0;
        return 0.0;
    }
    int same = PyObject_RichCompareBool(back, b, Py_EQ);
    Py_DECREF(back);
    if (same != 1) {
        PyErr_Clear();
        *ok = 0;
    }
    return d;
}

static PyObject *make_spec(PyObject *self, PyObject *specs) {
    if (!PyTuple_Check(specs)) {
        PyErr_SetString(PyExc_TypeError, "make_spec: a tuple of FastSpec");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(specs);
    SpecC *s = PyMem_Calloc(1, sizeof(SpecC) + n * sizeof(FieldC));
    if (s == NULL) return PyErr_NoMemory();
    s->n = n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyTuple_GET_ITEM(specs, i);
        FieldC *f = &s->f[i];
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 4 || !PyUnicode_Check(PyTuple_GET_ITEM(t, 0))) {
            PyErr_SetString(PyExc_TypeError, "make_spec: FastSpec is (key, type, lo, hi)");
            goto fail;
        }
        Py_ssize_t klen;
        const char *k = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(t, 0), &klen);
        if (k == NULL) goto fail;
        f->key = PyMem_Malloc(klen ? klen : 1);
        if (f->key == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(f->key, k, klen);
        f->keylen = klen;
        PyObject *want = PyTuple_GET_ITEM(t, 1), *lo = PyTuple_GET_ITEM(t, 2), *hi = PyTuple_GET_ITEM(t, 3);
        int ok = 1;
        if (want == (PyObject *)&PyBool_Type) {
            f->type = T_BOOL;
        } else if (want == (PyObject *)&PyLong_Type) {
            f->ilo = int_bound(lo, &ok);
            f->ihi = int_bound(hi, &ok);
            f->type = ok ? T_INT : T_NONE;
        } else if (want == (PyObject *)&PyFloat_Type) {
            f->flo = float_bound(lo, &ok);
            f->fhi = float_bound(hi, &ok);
            f->type = ok ? T_FLOAT : T_NONE;
        } else {
            f->type = T_NONE;
        }
    }
    PyObject *cap = PyCapsule_New(s, SPEC_NAME, spec_free);
    if (cap == NULL) goto fail;
    return cap;
fail:
    for (Py_ssize_t i = 0; i < n; i++) PyMem_Free(s->f[i].key);
    PyMem_Free(s);
    return NULL;
}

/* ---- floats: repr's digits, cheaper ------------------------------------------------------------
 *
 * repr(d) is the shortest decimal that reads back as d (of those, the nearest to d), which CPython
 * finds with dtoa's bignum arithmetic: 0.3-1.1 us per value measured here, most of the collector's
 * formatting. For 1e-3 <= |d| < 2^53 (repr then writes no exponent and at most 17 digits) the same
 * string comes from exact 128-bit integer arithmetic: with |d| = M * 2^-s (M the 53-bit
 * significand), x_k = M * 10^k / 2^s is |d| * 10^k exactly and r_k its nearest integer. A k-digit
 * fraction reads back as d iff r_k does (any other integer is farther from x_k), and r_k does iff
 * |r_k - x_k| is within half the gap to d's neighbours (ties to the even significand; the gap below
 * a power of two is half as wide): checked exactly. The smallest such k is found by bisection (a k
 * that works keeps working for every larger k); r_k is then repr's digits (the nearest of the
 * shortest). An exact tie (x_k ending in .5: both neighbours equally near) takes the even one, as
 * dtoa rounds its last digit; both read back or neither (their distance, 2^-s/2 in units of 10^-k,
 * is within half the gap iff 10^k > 2^s; a power of two, whose gap below is narrower, never ties
 * where it could read back). Ties are common: a float32 reading widened to a double has a short
 * exact expansion ending in 5 (10.9434661865234375), and sending them to dtoa cost ~0.3 us per
 * reading. Anything outside the range is left to CPython's own repr.
 * tests/unit/test_collector_fastup.py compares it with repr. */

typedef unsigned __int128 u128;

static const double P10D[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
/* 10^k for the k used: |d| >= 1e-3 and |d| * 10^k < 1e17 keep k <= 19, and 10^19 < 2^64, so
 * M * 10^k is one 64 x 64 -> 128-bit multiply */
static uint64_t P10[20]; /* filled at import */
#define TWO53 9007199254740992.0
#define MAX_DIGITS_VALUE 100000000000000000ULL /* 10^17: repr never needs more than 17 digits */
#define TOO_MANY 2                             /* digits_at: r_k has more digits than repr writes */

/* r_k (in *r; the even neighbour on an exact tie x_k = n + 1/2) and whether r_k / 10^k reads back
 * as M * 2^-s (1 or 0), or TOO_MANY. */
static inline int digits_at(uint64_t M, int s, int k, uint64_t *r) {
    u128 T = (u128)M * P10[k]; /* < 2^53 * 10^19 < 2^117 */
    u128 q, rem, half;
    if (s == 0) {
        q = T;
        rem = 0;
        half = 1; /* never equal: no tie */
    } else {
        q = T >> s;
        rem = T - (q << s);
        half = (u128)1 << (s - 1);
    }
    if (rem > half || (rem == half && (q & 1))) q += 1;
    if (q >= MAX_DIGITS_VALUE) return TOO_MANY;
    *r = (uint64_t)q;
    /* |q - x_k| * 2^(s+1) = |2 (q << s) - 2 T| against 10^k (the gap 2^-s scaled by 10^k 2^(s+1)/2) */
    u128 C2 = (q << s) << 1, T2 = T << 1;
    int below = C2 < T2;
    u128 diff = below ? T2 - C2 : C2 - T2;
    u128 limit = P10[k];
    if (diff > limit) return 0;
    if (below && M == (1ULL << 52)) /* a power of two: the neighbour below is half as far */
        return (diff << 1) < limit || ((diff << 1) == limit);
    if (diff < limit) return 1;
    return (M & 1) == 0; /* exactly half way: reads back as the even significand */
}

/* The text the pure path writes for a finite float (repr without a trailing ".0") into out
 * (>= 32 bytes); its length, or -1 where repr must decide. */
static int short_float(double d, char *out) {
    if (d == 0.0) {
        if (signbit(d)) {
            memcpy(out, "-0", 2);
            return 2;
        }
        out[0] = '0';
        return 1;
    }
    int neg = d < 0;
    double a = neg ? -d : d;
    if (!(a >= 1e-3 && a < TWO53)) return -1;
    uint64_t bits;
    memcpy(&bits, &a, 8); /* normal in this range: a = M * 2^-s, M with its implicit bit */
    uint64_t M = (bits & ((1ULL << 52) - 1)) | (1ULL << 52);
    int s = 1075 - (int)(bits >> 52); /* 0 <= s <= 62 in this range */
    /* kmax: the largest k with a * 10^k < 1e17, from the binary exponent's estimate of log10(a)
     * (within one of it), then settled by the comparison itself */
    int kmax = 16 - (int)floor((52 - s) * 0.30102999566398120);
    if (kmax < 0) kmax = 0;
    if (kmax > 19) kmax = 19;
    while (kmax > 0 && !(a * P10D[kmax] < 1e17)) kmax--;
    while (kmax < 19 && a * P10D[kmax + 1] < 1e17) kmax++;
    uint64_t r;
    int ok;
    while ((ok = digits_at(M, s, kmax, &r)) == TOO_MANY && kmax > 0) kmax--;
    if (ok != 1) return -1;
    int lo = 0, hi = kmax; /* r: r_hi, which reads back */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        uint64_t rm;
        if (digits_at(M, s, mid, &rm) == 1) {
            hi = mid;
            r = rm;
        } else {
            lo = mid + 1;
        }
    }
    int k = lo;
    char digits[24];
    int nd = 0;
    uint64_t u = r;
    do {
        digits[nd++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (nd <= k) digits[nd++] = '0'; /* at least one digit before the point */
    int n = 0;
    if (neg) out[n++] = '-';
    for (int i = nd - 1; i >= 0; i--) {
        out[n++] = digits[i];
        if (i == k && k > 0) out[n++] = '.';
    }
    return n;
}

static int out_float(Out *o, double d) {
    char buf[32];
    int n = short_float(d, buf);
    if (n >= 0) return out_put(o, buf, n);
    /* repr(d) (Py_DTSF_ADD_DOT_0 left out: the ".0" the pure path strips is never added) */
    char *text = PyOS_double_to_string(d, 'r', 0, 0, NULL);
    if (text == NULL) return -1;
    int bad = out_put(o, text, (Py_ssize_t)strlen(text));
    PyMem_Free(text);
    return bad;
}

static PyObject *float_text(PyObject *self, PyObject *arg) {
    double d = PyFloat_AsDouble(arg);
    if (d == -1.0 && PyErr_Occurred()) return NULL;
    if (!isfinite(d)) {
        PyErr_SetString(PyExc_ValueError, "float_text: not finite");
        return NULL;
    }
    Out o = {NULL, 0, 0};
    if (out_float(&o, d) < 0) {
        PyMem_Free(o.buf);
        return NULL;
    }
    PyObject *text = PyUnicode_FromStringAndSize(o.buf, o.len);
    PyMem_Free(o.buf);
    return text;
}

/* ---- lines --------------------------------------------------------------------------------- */

/* An int item's value as int64, or 0 if it is not an int in int64. */
static int as_int64(int major, uint64_t arg, int64_t *v) {
    if (arg > (uint64_t)INT64_MAX) return 0;
    *v = major == 0 ? (int64_t)arg : -1 - (int64_t)arg;
    return 1;
}

/* Appends `k=v,...` for a fields map at c (its head already read: `n` entries); 1 if every field
 * took the fast path (c then past the map), 0 if not (the caller rolls back and goes slow). */
static int fields_text(Cur *c, uint64_t n, const SpecC *spec, Out *o, int *err) {
    int64_t last = -1;
    if (n == 0) return 0;
    for (uint64_t j = 0; j < n; j++) {
        int major, ai;
        uint64_t idx, arg;
        if (head(c, &major, &ai, &idx) < 0 || major != 0) return 0;
        if (!((int64_t)idx > last && idx < (uint64_t)spec->n)) return 0;
        last = (int64_t)idx;
        const FieldC *f = &spec->f[idx];
        const unsigned char *at = c->p;
        if (head(c, &major, &ai, &arg) < 0) return 0;
        if (j && out_put(o, ",", 1) < 0) goto fail;
        if (major == 7 && ai >= 25 && ai <= 27) {
            if (f->type != T_FLOAT) return 0;
            double d;
            if (ai == 25) d = PyFloat_Unpack2((const char *)at + 1, 0);
            else if (ai == 26) d = PyFloat_Unpack4((const char *)at + 1, 0);
            else d = PyFloat_Unpack8((const char *)at + 1, 0);
            if (d == -1.0 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
            if (!(f->flo <= d && d <= f->fhi)) return 0; /* NaN fails too */
            if (out_put(o, f->key, f->keylen) < 0 || out_float(o, d) < 0) goto fail;
        } else if (major <= 1) {
            int64_t v;
            if (f->type != T_INT || !as_int64(major, arg, &v) || v < f->ilo || v > f->ihi) return 0;
            if (out_put(o, f->key, f->keylen) < 0 || out_int(o, v) < 0 || out_put(o, "i", 1) < 0) goto fail;
        } else if (major == 7 && (ai == 20 || ai == 21)) {
            if (f->type != T_BOOL) return 0;
            if (out_put(o, f->key, f->keylen) < 0) goto fail;
            if (ai == 21 ? out_put(o, "true", 4) < 0 : out_put(o, "false", 5) < 0) goto fail;
        } else {
            return 0;
        }
    }
    return 1;
fail:
    *err = 1;
    return 0;
}

static PyObject *lines(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t offset, cap;
    unsigned long long t0;
    long long lo, hi;
    PyObject *gw_key, *cache, *head_fn, *slow_fn;
    if (!PyArg_ParseTuple(args, "y*nKLLSO!nOO", &view, &offset, &t0, &lo, &hi, &gw_key, &PyDict_Type,
                          &cache, &cap, &head_fn, &slow_fn))
        return NULL;
    const unsigned char *base = view.buf;
    Cur c = {base + offset, base + view.len};
    Out o = {NULL, 0, 0};
    Py_ssize_t n_lines = 0;
    Py_ssize_t gwlen = PyBytes_GET_SIZE(gw_key);
    int major, ai;
    uint64_t count;
    PyObject *result = NULL;
    if (offset < 0 || offset > view.len || head(&c, &major, &ai, &count) < 0 || major != 4) {
        PyErr_SetString(PyExc_ValueError, "lines: no readings array at offset (not a payload scan took)");
        goto done;
    }
    for (uint64_t i = 0; i < count; i++) {
        const unsigned char *start = c.p;
        Py_ssize_t mark = o.len; /* rollback point */
        int err = 0;
        Cur r = c;
        uint64_t n4, slen, code, dtarg, nf;
        int smaj, cmaj, dmaj, fmaj;
        if (head(&r, &major, &ai, &n4) < 0 || major != 4 || n4 != 4) goto slow;
        const unsigned char *kstart = r.p;
        if (head(&r, &smaj, &ai, &slen) < 0 || smaj != 3) goto slow;
        const unsigned char *sensor = r.p;
        if ((uint64_t)(r.end - r.p) < slen) goto slow;
        r.p += slen;
        if (head(&r, &cmaj, &ai, &code) < 0 || cmaj > 1) goto slow;
        /* the series: gw_key + the raw sensor and kind bytes */
        Py_ssize_t klen = gwlen + (r.p - kstart);
        PyObject *key = PyBytes_FromStringAndSize(NULL, klen);
        if (key == NULL) goto done;
        memcpy(PyBytes_AS_STRING(key), PyBytes_AS_STRING(gw_key), gwlen);
        memcpy(PyBytes_AS_STRING(key) + gwlen, kstart, r.p - kstart);
        PyObject *entry = PyDict_GetItemWithError(cache, key);
        if (entry == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(key);
                goto done;
            }
            PyObject *pycode = PyLong_FromUnsignedLongLong(code);
            if (cmaj == 1 && pycode != NULL) { /* -1 - n is ~n */
                PyObject *m = PyNumber_Invert(pycode);
                Py_DECREF(pycode);
                pycode = m;
            }
            PyObject *pysensor = PyUnicode_DecodeUTF8((const char *)sensor, (Py_ssize_t)slen, "strict");
            if (pycode == NULL || pysensor == NULL) {
                Py_XDECREF(pycode);
                Py_XDECREF(pysensor);
                Py_DECREF(key);
                goto done;
            }
            PyObject *made = PyObject_CallFunctionObjArgs(head_fn, pycode, pysensor, NULL);
            Py_DECREF(pycode);
            Py_DECREF(pysensor);
            if (made == NULL) {
                Py_DECREF(key);
                goto done;
            }
            if (made == Py_None) {
                Py_DECREF(made);
                Py_DECREF(key);
                goto slow;
            }
            if (!PyTuple_Check(made) || PyTuple_GET_SIZE(made) != 2 ||
                !PyBytes_Check(PyTuple_GET_ITEM(made, 0)) ||
                !PyCapsule_IsValid(PyTuple_GET_ITEM(made, 1), SPEC_NAME)) {
                Py_DECREF(made);
                Py_DECREF(key);
                PyErr_SetString(PyExc_TypeError, "lines: head() returns (bytes, make_spec capsule) or None");
                goto done;
            }
            if (PyDict_GET_SIZE(cache) >= cap) PyDict_Clear(cache);
            if (PyDict_SetItem(cache, key, made) < 0) {
                Py_DECREF(made);
                Py_DECREF(key);
                goto done;
            }
            Py_DECREF(made); /* the cache holds it for the rest of this reading */
            entry = made;
        }
        Py_DECREF(key);
        PyObject *hbytes = PyTuple_GET_ITEM(entry, 0);
        const SpecC *spec = PyCapsule_GetPointer(PyTuple_GET_ITEM(entry, 1), SPEC_NAME);
        int64_t dt;
        if (head(&r, &dmaj, &ai, &dtarg) < 0 || dmaj > 1 || !as_int64(dmaj, dtarg, &dt) || dt < lo || dt > hi)
            goto slow;
        if (head(&r, &fmaj, &ai, &nf) < 0 || fmaj != 5) goto slow;
        if (n_lines && out_put(&o, "\n", 1) < 0) goto done;
        if (out_put(&o, PyBytes_AS_STRING(hbytes), PyBytes_GET_SIZE(hbytes)) < 0) goto done;
        if (!fields_text(&r, nf, spec, &o, &err)) {
            if (err) goto done;
            o.len = mark;
            goto slow;
        }
        if (out_put(&o, " ", 1) < 0) goto done;
        /* t0 + dt is within min_time..now + max_future (lo/hi say so): int64, exact mod 2^64 */
        if (out_int(&o, (int64_t)((uint64_t)t0 + (uint64_t)dt)) < 0) goto done;
        n_lines++;
        c = r;
        continue;
    slow: {
        Cur s = c;
        if (skip(&s, 1) < 0) {
            PyErr_SetString(PyExc_ValueError, "lines: a reading scan accepted does not parse");
            goto done;
        }
        c = s;
        PyObject *line = PyObject_CallFunction(slow_fn, "nnn", (Py_ssize_t)i, (Py_ssize_t)(start - base),
                                               (Py_ssize_t)(s.p - base));
        if (line == NULL) goto done;
        if (line != Py_None) {
            Py_ssize_t ll;
            const char *lt = PyUnicode_Check(line) ? PyUnicode_AsUTF8AndSize(line, &ll) : NULL;
            if (lt == NULL) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "lines: slow() returns str or None");
                Py_DECREF(line);
                goto done;
            }
            if ((n_lines && out_put(&o, "\n", 1) < 0) || out_put(&o, lt, ll) < 0) {
                Py_DECREF(line);
                goto done;
            }
            n_lines++;
        }
        Py_DECREF(line);
    }
    }
    {
        PyObject *body = PyBytes_FromStringAndSize(o.buf ? o.buf : "", o.len);
        if (body != NULL) result = Py_BuildValue("(Nn)", body, n_lines);
    }
done:
    PyMem_Free(o.buf);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_O, "scan(payload) -> (boot, seq, t0, readings_offset) | None"},
    {"lines", lines, METH_VARARGS,
     "lines(payload, offset, t0, lo, hi, gw_key, cache, cap, head, slow) -> (body, n)"},
    {"float_text", float_text, METH_O, "float_text(x) -> repr(x) without a trailing '.0' (finite x)"},
    {"make_spec", make_spec, METH_O, "make_spec(fast_specs) -> capsule"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "collector._fastup",
    .m_doc = "A /up batch's CBOR straight to line protocol (see _fastup.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastup(void) {
    P10[0] = 1;
    for (int i = 1; i < 20; i++) P10[i] = P10[i - 1] * 10;
    return PyModule_Create(&module);
}
